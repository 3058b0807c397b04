@0xb8f3c2a1d4e5f607;
# Flotilla's wire protocol. Every ZeroMQ message is one Envelope: an 8-byte header frame
# ("FLTL", framing version, segment count), then one Cap'n Proto segment per frame. The rules
# the schema cannot say (sockets, framing, the conversation, heartbeats): docs/protocol.md.
#
# Evolution rules: fields and union members are only ever appended, never renumbered or
# removed. A peer whose protocolMajor differs is refused with an Error, not parsed further.

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("flotilla::schema");

const protocolMajor :UInt16 = 1;
const protocolMinor :UInt16 = 5;

enum DType {
  f32 @0;
  f16 @1;
  bf16 @2;
  i64 @3;
  f64 @4;
  i32 @5;
  u8 @6;
}

struct Tensor {
  name @0 :Text;
  dtype @1 :DType;
  shape @2 :List(Int64);
  # The tensor's bytes, little-endian, row-major. A Data blob holds at most 2^29-1 bytes, so
  # larger tensors are split into consecutive chunks; most tensors have exactly one.
  chunks @3 :List(Data);
}

struct Metric {
  name @0 :Text;
  value @1 :Float64;
}

enum Role {
  client @0;
  evaluator @1;
  aggregator @2;
  admin @3;
}

struct DeviceProfile {
  kind @0 :Text;            # "cpu", "cuda:0", ...
  computeSpeed @1 :Float32; # relative speed, 1.0 = reference device
  memoryBytes @2 :UInt64;
}

struct Hello {
  role @0 :Role;
  clientId @1 :UInt32;
  profile @2 :DeviceProfile;
  numExamples @3 :UInt64;   # training examples the client holds
}

struct Welcome {
  runId @0 :Text;
  modelVersion @1 :UInt64;  # the version the aggregator currently holds
}

struct TrainingConfig {
  localSteps @0 :UInt32;    # 0 = use localEpochs
  localEpochs @1 :UInt32;
  batchSize @2 :UInt32;
  learningRate @3 :Float32;
  momentum @4 :Float32;
  weightDecay @5 :Float32;
  seed @6 :UInt64;
}

struct Task {
  round @0 :UInt64;
  modelVersion @1 :UInt64;
  tensors @2 :List(Tensor);
  config @3 :TrainingConfig;
  sendDelta @4 :Bool;        # since 1.2: answer with trained - received (FedBuff), not weights
  keepLocal @5 :List(Text);  # since 1.5: names of tensors the client trains but keeps: never
                             # sent in its update, never carried by a task (e.g. FedSA-LoRA's B)
}

# What a client has done since it started, reported in its heartbeats and updates (since 1.3)
# so that one scrape of the aggregator shows the whole fleet, by device class (never by client).
# Every count is cumulative; a client that restarts starts again from zero.
struct ClientStats {
  deviceClass @0 :Text;          # e.g. the fleet profile's name, or client.device-class
  tasksCompleted @1 :UInt64;
  tasksFailed @2 :UInt64;
  trainingSeconds @3 :Float64;   # local training, wall time
  examples @4 :UInt64;           # examples trained on (steps x batch size)
  bytesSent @5 :UInt64;          # transport bytes
  bytesReceived @6 :UInt64;
  optimizerStateBytes @7 :UInt64;  # the optimizer's state in the last task
}

struct Update {
  round @0 :UInt64;
  baseModelVersion @1 :UInt64;
  numExamples @2 :UInt64;
  metrics @3 :List(Metric);  # train loss, accuracy, seconds, ...
  tensors @4 :List(Tensor);
  isDelta @5 :Bool;          # since 1.2: tensors are trained - received, not weights
  stats @6 :ClientStats;     # since 1.3: the client's counters (unset: none reported)
}

struct EvaluationRequest {
  round @0 :UInt64;
  modelVersion @1 :UInt64;
  tensors @2 :List(Tensor);
}

struct EvaluationResult {
  round @0 :UInt64;
  modelVersion @1 :UInt64;
  numExamples @2 :UInt64;
  loss @3 :Float64;
  accuracy @4 :Float64;
  metrics @5 :List(Metric);
}

# A peer's sign of life. Since 1.4 the aggregator answers each heartbeat of a peer that speaks
# 1.4 or later with one of its own (modelVersion: its current version), so an idle peer notices
# a dead aggregator.
struct Heartbeat {
  modelVersion @0 :UInt64;
  busy @1 :Bool;
  stats @2 :ClientStats;     # since 1.3: the client's counters (unset: none reported)
}

struct Shutdown {
  reason @0 :Text;
}

enum ErrorCode {
  unknown @0;
  protocolVersion @1;  # peer speaks another major version
  malformed @2;        # could not be decoded
  rejected @3;         # decoded, but refused (wrong shapes, late, unknown sender...)
  internal @4;
  notRegistered @5;    # since 1.4: the aggregator does not know this peer (it restarted): send a Hello
}

struct Error {
  code @0 :ErrorCode;
  message @1 :Text;
}

# An operator's command to the aggregator (`flotilla admin ...`), on the aggregator's endpoint.
struct AdminCommand {
  command @0 :Text;        # "reload", "status"
  args @1 :List(Text);
}

struct AdminReply {
  ok @0 :Bool;
  message @1 :Text;
}

struct Envelope {
  protocolMajor @0 :UInt16;
  protocolMinor @1 :UInt16;
  runId @2 :Text;
  sender @3 :Text;       # e.g. "client-3", "aggregator", "evaluator-0"
  messageId @4 :UInt64;
  replyTo @5 :UInt64;    # messageId this answers; 0 = none
  payload :union {
    hello @6 :Hello;
    welcome @7 :Welcome;
    task @8 :Task;
    update @9 :Update;
    evaluationRequest @10 :EvaluationRequest;
    evaluationResult @11 :EvaluationResult;
    heartbeat @12 :Heartbeat;
    shutdown @13 :Shutdown;
    error @14 :Error;
    adminCommand @15 :AdminCommand;  # since protocol 1.1
    adminReply @16 :AdminReply;      # since protocol 1.1
  }
}
