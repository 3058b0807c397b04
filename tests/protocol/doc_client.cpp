// A Flotilla client written from docs/protocol.md and schemas/flotilla.capnp alone: it links
// Cap'n Proto, libzmq (through cppzmq) and the code generated from the schema, none of
// Flotilla's own code. It proves the document is enough to join a real federation.
//
//   doc_client --connect ENDPOINT --id N [--examples K] [--peer-timeout SECONDS]
//
// It speaks protocol 1.5. It registers as client N (routing id `client-N`), answers every Task
// by "training" what the task carries (a model without LoRA: every tensor, so keepLocal is
// always empty for it): each f32 element is multiplied by 0.999, other dtypes are left
// unchanged (with sendDelta, it sends trained minus received), reports loss 1.0 and accuracy 0.5 for K examples
// (default 500), heartbeats every 2 s once welcomed, and logs every Error to stderr.
// The aggregator (1.4 or later) answers each heartbeat: when heartbeats have gone unanswered for
// the peer timeout (default 30 s, the aggregator's default peer-timeout) it warns once on stderr
// ("no word from the aggregator"), keeps heartbeating, and says so when the aggregator answers
// again. On an Error of code notRegistered (the aggregator restarted, or a new run) it registers
// again: a Hello with an empty run id after a random delay, uniform in [0, backoff), the backoff
// doubling from the heartbeat interval up to 30 s while Hellos go unanswered; the Welcome gives
// the new run id. Messages carrying a run id other than the Welcome's are ignored, except an
// Error of code notRegistered.
// It stops on Shutdown (exit 0), on an Error of code protocolVersion (exit 1), or when nothing
// at all has come from the aggregator for 60 s before the first Welcome (exit 1); after a
// Welcome, silence is normal and it never gives up.
// At exit it prints to stdout
//   `doc-client: tasks N answered, errors M, notRegistered R, registrations K`
// where M counts the Errors other than notRegistered, R the notRegistered Errors and K the
// Welcomes received.

#include <capnp/message.h>
#include <kj/array.h>
#include <kj/exception.h>

#include <zmq.hpp>

#include <algorithm>
#include <bit>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "schemas/flotilla.capnp.h"

namespace fs = flotilla::schema;
using Clock = std::chrono::steady_clock;

namespace {

constexpr std::uint16_t kFramingVersion = 1;
constexpr auto kHeartbeatInterval = std::chrono::seconds(2);
constexpr auto kSilenceLimit = std::chrono::seconds(60);     // before the first Welcome only
constexpr auto kMaxBackoff = std::chrono::seconds(30);       // re-registration's jitter cap
constexpr std::size_t kMaxChunkBytes = (std::size_t{1} << 29) - 8;  // < 2^29 - 1, whole words
constexpr float kTrainFactor = 0.999f;

struct Options {
  std::string connect;
  std::uint32_t id = 0;
  std::uint64_t examples = 500;
  std::chrono::milliseconds peer_timeout{30000};
};

[[noreturn]] void usage(const char* why) {
  std::cerr << "doc_client: " << why << "\n"
            << "usage: doc_client --connect ENDPOINT --id N [--examples K]"
               " [--peer-timeout SECONDS]\n";
  std::exit(2);
}

Options parse_args(int argc, char** argv) {
  Options o;
  bool have_connect = false, have_id = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(("missing value after " + a).c_str());
      return argv[++i];
    };
    try {
      if (a == "--connect") {
        o.connect = value();
        have_connect = true;
      } else if (a == "--id") {
        unsigned long long v = std::stoull(value());
        if (v > std::numeric_limits<std::uint32_t>::max()) usage("--id out of range");
        o.id = static_cast<std::uint32_t>(v);
        have_id = true;
      } else if (a == "--examples") {
        o.examples = std::stoull(value());
      } else if (a == "--peer-timeout") {
        double secs = std::stod(value());
        if (!(secs > 0) || secs > 86400.0) usage("--peer-timeout must be in (0, 86400] seconds");
        o.peer_timeout = std::chrono::milliseconds(static_cast<std::int64_t>(secs * 1000.0 + 0.5));
        if (o.peer_timeout.count() == 0) o.peer_timeout = std::chrono::milliseconds(1);
      } else if (a == "-h" || a == "--help") {
        usage("help");
      } else {
        usage(("unknown argument " + a).c_str());
      }
    } catch (const std::logic_error&) {  // stoull/stod: not a number / out of range
      usage(("bad number for " + a).c_str());
    }
  }
  if (!have_connect) usage("--connect is required");
  if (!have_id) usage("--id is required");
  return o;
}

void put_u16le(unsigned char* p, std::uint16_t v) {
  p[0] = static_cast<unsigned char>(v & 0xff);
  p[1] = static_cast<unsigned char>(v >> 8);
}
std::uint16_t get_u16le(const unsigned char* p) {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}

std::size_t dtype_size(fs::DType d) {
  switch (d) {
    case fs::DType::F32: return 4;
    case fs::DType::F16: return 2;
    case fs::DType::BF16: return 2;
    case fs::DType::I64: return 8;
    case fs::DType::F64: return 8;
    case fs::DType::I32: return 4;
    case fs::DType::U8: return 1;
  }
  return 0;  // unknown enumerant (from a newer schema)
}

// f32 little-endian <-> host float.
float load_f32le(const unsigned char* p) {
  std::uint32_t u = std::uint32_t{p[0]} | (std::uint32_t{p[1]} << 8) |
                    (std::uint32_t{p[2]} << 16) | (std::uint32_t{p[3]} << 24);
  return std::bit_cast<float>(u);
}
void store_f32le(unsigned char* p, float f) {
  std::uint32_t u = std::bit_cast<std::uint32_t>(f);
  p[0] = static_cast<unsigned char>(u);
  p[1] = static_cast<unsigned char>(u >> 8);
  p[2] = static_cast<unsigned char>(u >> 16);
  p[3] = static_cast<unsigned char>(u >> 24);
}

// One received Flotilla message: the segments copied into word-aligned memory (ZeroMQ frames
// need not be 8-byte aligned) and a reader over them.
struct Incoming {
  std::vector<kj::Array<capnp::word>> storage;
  std::vector<kj::ArrayPtr<const capnp::word>> segments;
  std::optional<capnp::SegmentArrayMessageReader> reader;
};

class Client {
 public:
  explicit Client(Options o)
      : opt_(std::move(o)), routing_id_("client-" + std::to_string(opt_.id)),
        socket_(ctx_, zmq::socket_type::dealer) {
    socket_.set(zmq::sockopt::routing_id, routing_id_);
    socket_.set(zmq::sockopt::linger, 1000);  // never block the exit for long
    socket_.connect(opt_.connect);
  }

  int run() {
    send_hello();
    last_heard_ = Clock::now();
    for (;;) {
      auto now = Clock::now();
      // Before the first Welcome, total silence means no aggregator (or a wrong address). After
      // it, silence is normal (section 5 rule 5): only the unanswered heartbeats are reported.
      if (!ever_welcomed_ && now - last_heard_ >= kSilenceLimit) {
        std::cerr << "doc_client: nothing from the aggregator at " << opt_.connect << " for "
                  << std::chrono::duration_cast<std::chrono::seconds>(kSilenceLimit).count()
                  << " s; giving up\n";
        return finish(1);
      }
      if (registered_ && now - last_sent_ >= kHeartbeatInterval) send_heartbeat();
      if (!registered_ && next_hello_at_ && now >= *next_hello_at_) register_again();
      check_silence(now);

      // Sleep until the next thing to do (at most 1 s), or until something arrives.
      auto deadline = now + std::chrono::seconds(1);
      if (!ever_welcomed_) deadline = std::min(deadline, last_heard_ + kSilenceLimit);
      if (registered_) deadline = std::min(deadline, last_sent_ + kHeartbeatInterval);
      if (!registered_ && next_hello_at_) deadline = std::min(deadline, *next_hello_at_);
      if (unanswered_since_ && !silence_warned_)
        deadline = std::min(deadline, *unanswered_since_ + opt_.peer_timeout);
      auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now);
      wait = std::clamp(wait, std::chrono::milliseconds(1), std::chrono::milliseconds(1000));

      zmq::pollitem_t item{socket_.handle(), 0, ZMQ_POLLIN, 0};
      zmq::poll(&item, 1, wait);
      if (!(item.revents & ZMQ_POLLIN)) continue;

      // Drain what is there.
      for (;;) {
        std::vector<zmq::message_t> frames;
        if (!recv_multipart(frames)) break;
        last_heard_ = Clock::now();
        std::optional<int> exit_code = handle(frames);
        if (exit_code) return finish(*exit_code);
      }
    }
  }

 private:
  int finish(int code) {
    // Nothing left to say: on Shutdown the run is over, otherwise the aggregator is gone or
    // refuses us, and a Hello still queued for an absent aggregator must not hold up the exit.
    socket_.set(zmq::sockopt::linger, 0);
    print_summary();
    return code;
  }

 public:
  void print_summary() const {
    std::cout << "doc-client: tasks " << tasks_answered_ << " answered, errors " << errors_
              << ", notRegistered " << not_registered_ << ", registrations " << registrations_
              << std::endl;
  }

 private:
  bool recv_multipart(std::vector<zmq::message_t>& frames) {
    zmq::message_t first;
    if (!socket_.recv(first, zmq::recv_flags::dontwait)) return false;
    bool more = first.more();
    frames.push_back(std::move(first));
    while (more) {
      zmq::message_t part;
      (void)socket_.recv(part, zmq::recv_flags::none);  // the rest of a multipart is there
      more = part.more();
      frames.push_back(std::move(part));
    }
    return true;
  }

  // Checks the framing and builds a reader; null (with a log line) if malformed.
  std::unique_ptr<Incoming> decode(std::vector<zmq::message_t>& frames) {
    auto bad = [&](const std::string& why) -> std::unique_ptr<Incoming> {
      std::cerr << "doc_client: dropping a malformed message from the aggregator: " << why
                << "\n";
      return nullptr;
    };
    if (frames.empty()) return bad("no frames");
    const auto& h = frames[0];
    if (h.size() != 8) return bad("header frame of " + std::to_string(h.size()) + " bytes");
    auto* hp = static_cast<const unsigned char*>(h.data());
    if (std::memcmp(hp, "FLTL", 4) != 0) return bad("wrong magic");
    if (get_u16le(hp + 4) != kFramingVersion)
      return bad("framing version " + std::to_string(get_u16le(hp + 4)));
    std::size_t n = get_u16le(hp + 6);
    if (n == 0 || n != frames.size() - 1)
      return bad("header says " + std::to_string(n) + " segments, " +
                 std::to_string(frames.size() - 1) + " frames follow");
    auto in = std::make_unique<Incoming>();
    std::size_t total_words = 0;
    for (std::size_t i = 1; i <= n; ++i) {
      std::size_t bytes = frames[i].size();
      if (bytes == 0 || bytes % sizeof(capnp::word) != 0)
        return bad("segment " + std::to_string(i) + " of " + std::to_string(bytes) + " bytes");
      auto words = kj::heapArray<capnp::word>(bytes / sizeof(capnp::word));
      std::memcpy(words.begin(), frames[i].data(), bytes);
      total_words += words.size();
      in->segments.push_back(words.asPtr());
      in->storage.push_back(std::move(words));
    }
    capnp::ReaderOptions ro;
    ro.traversalLimitInWords = std::max<std::uint64_t>(total_words * 8, 8 * 1024 * 1024);
    in->reader.emplace(kj::ArrayPtr<const kj::ArrayPtr<const capnp::word>>(
                           in->segments.data(), in->segments.size()),
                       ro);
    return in;
  }

  // Returns an exit code when the client must stop.
  std::optional<int> handle(std::vector<zmq::message_t>& frames) {
    auto in = decode(frames);
    if (!in) return std::nullopt;
    last_segments_ = in->segments.size();
    try {
      auto env = in->reader->getRoot<fs::Envelope>();
      if (env.getProtocolMajor() != fs::PROTOCOL_MAJOR) {
        std::cerr << "doc_client: the aggregator speaks protocol " << env.getProtocolMajor()
                  << "." << env.getProtocolMinor() << ", this client "
                  << fs::PROTOCOL_MAJOR << "." << fs::PROTOCOL_MINOR << "; ignoring it\n";
        return std::nullopt;
      }
      auto p = env.getPayload();
      const bool not_registered_error =
          p.which() == fs::Envelope::Payload::ERROR &&
          p.getError().getCode() == fs::ErrorCode::NOT_REGISTERED;
      // Rule 9: once welcomed, only the Welcome's run id is trusted, except a notRegistered
      // Error (a new run's aggregator says so with its own run id). While a Welcome is awaited
      // (a Hello is out) there is no run id to compare with yet.
      if (registered_ && env.getRunId() != run_id_ && !not_registered_error) {
        std::cerr << "doc_client: ignoring a message of run '" << env.getRunId().cStr()
                  << "' (this client is in run '" << run_id_ << "')\n";
        return std::nullopt;
      }
      heard_from_aggregator(env.getProtocolMinor());
      switch (p.which()) {
        case fs::Envelope::Payload::WELCOME: {
          auto w = p.getWelcome();
          const bool again = ever_welcomed_;
          run_id_ = w.getRunId();
          model_version_ = w.getModelVersion();
          registered_ = true;
          ever_welcomed_ = true;
          ++registrations_;
          next_hello_at_.reset();
          backoff_ = kHeartbeatInterval;
          last_sent_ = Clock::now();  // the first heartbeat is due one interval from now
          std::cerr << "doc_client: " << (again ? "registered again, " : "")
                    << "welcomed to run '" << run_id_ << "' at model version " << model_version_
                    << " (aggregator protocol 1." << aggregator_minor_ << ")\n";
          return std::nullopt;
        }
        case fs::Envelope::Payload::TASK:
          answer_task(env.getMessageId(), p.getTask());
          return std::nullopt;
        case fs::Envelope::Payload::HEARTBEAT:
          // The aggregator's answer to a heartbeat (1.4): it is alive. Nothing else to do.
          return std::nullopt;
        case fs::Envelope::Payload::ERROR: {
          auto e = p.getError();
          if (not_registered_error) {
            ++not_registered_;
            std::cerr << "doc_client: the aggregator does not know this client (run '"
                      << env.getRunId().cStr() << "'): " << e.getMessage().cStr() << "\n";
            schedule_registration();
            return std::nullopt;
          }
          ++errors_;
          std::cerr << "doc_client: error from the aggregator (code "
                    << code_name(e.getCode()) << "): " << e.getMessage().cStr() << "\n";
          if (e.getCode() == fs::ErrorCode::PROTOCOL_VERSION) return 1;
          return std::nullopt;
        }
        case fs::Envelope::Payload::SHUTDOWN:
          std::cerr << "doc_client: shutdown: " << p.getShutdown().getReason().cStr() << "\n";
          return 0;
        default:
          std::cerr << "doc_client: ignoring a payload of kind "
                    << static_cast<int>(p.which()) << "\n";
          return std::nullopt;
      }
    } catch (const kj::Exception& e) {
      std::cerr << "doc_client: could not read a message from the aggregator: "
                << e.getDescription().cStr() << "\n";
      return std::nullopt;
    }
  }

  // Any message the client accepts shows the aggregator is there: the heartbeats sent so far
  // count as answered.
  void heard_from_aggregator(std::uint16_t minor) {
    aggregator_minor_ = minor;
    unanswered_since_.reset();
    if (silence_warned_) {
      silence_warned_ = false;
      std::cerr << "doc_client: the aggregator at " << opt_.connect << " answers again\n";
    }
  }

  // Warns once when the heartbeats have gone unanswered for the peer timeout (an aggregator
  // before 1.4 does not answer them, so then there is nothing to measure).
  void check_silence(Clock::time_point now) {
    if (silence_warned_ || !unanswered_since_ || aggregator_minor_ < 4) return;
    if (now - *unanswered_since_ < opt_.peer_timeout) return;
    silence_warned_ = true;
    std::cerr << "doc_client: no word from the aggregator at " << opt_.connect << " for "
              << std::chrono::duration_cast<std::chrono::milliseconds>(now - *unanswered_since_)
                         .count() / 1000.0
              << " s (heartbeats unanswered); it is down or unreachable, still heartbeating\n";
  }

  // Section 5 rule 6: a notRegistered Error. Stop heartbeating (every message would be answered
  // with another notRegistered), forget the old run, and send a Hello after a random delay.
  // Further notRegistered Errors (answers to heartbeats queued during an outage) while a
  // registration is under way change nothing.
  void schedule_registration() {
    if (!registered_ && next_hello_at_) return;
    registered_ = false;
    run_id_.clear();
    unanswered_since_.reset();
    backoff_ = kHeartbeatInterval;
    next_hello_at_ = Clock::now() + jitter();
  }

  // Sends the Hello that was due; if no Welcome answers it within a heartbeat interval (the
  // aggregator answers at once when it is there), another follows after a random delay from a
  // doubled backoff.
  void register_again() {
    std::cerr << "doc_client: registering again with the aggregator at " << opt_.connect
              << "\n";
    send_hello();
    backoff_ = std::min<std::chrono::milliseconds>(backoff_ * 2, kMaxBackoff);
    next_hello_at_ = Clock::now() + kHeartbeatInterval + jitter();
  }

  // Uniform in [0, backoff).
  std::chrono::milliseconds jitter() {
    std::uniform_int_distribution<std::int64_t> d(0, backoff_.count() - 1);
    return std::chrono::milliseconds(d(rng_));
  }

  static const char* code_name(fs::ErrorCode c) {
    switch (c) {
      case fs::ErrorCode::UNKNOWN: return "unknown";
      case fs::ErrorCode::PROTOCOL_VERSION: return "protocolVersion";
      case fs::ErrorCode::MALFORMED: return "malformed";
      case fs::ErrorCode::REJECTED: return "rejected";
      case fs::ErrorCode::INTERNAL: return "internal";
      case fs::ErrorCode::NOT_REGISTERED: return "notRegistered";
    }
    return "unknown";  // a newer minor version's code reads as unknown (section 7)
  }

  fs::Envelope::Builder start(capnp::MessageBuilder& mb, std::uint64_t reply_to = 0) {
    auto env = mb.initRoot<fs::Envelope>();
    env.setProtocolMajor(fs::PROTOCOL_MAJOR);
    env.setProtocolMinor(fs::PROTOCOL_MINOR);
    env.setRunId(run_id_);
    env.setSender(routing_id_);
    env.setMessageId(next_message_id_++);
    env.setReplyTo(reply_to);
    return env;
  }

  void send(capnp::MessageBuilder& mb) {
    auto segs = mb.getSegmentsForOutput();
    if (segs.size() > 0xffff) throw std::runtime_error("message with more than 65535 segments");
    unsigned char header[8] = {'F', 'L', 'T', 'L', 0, 0, 0, 0};
    put_u16le(header + 4, kFramingVersion);
    put_u16le(header + 6, static_cast<std::uint16_t>(segs.size()));
    socket_.send(zmq::buffer(header, sizeof header), zmq::send_flags::sndmore);
    for (std::size_t i = 0; i < segs.size(); ++i) {
      auto bytes = segs[i].asBytes();
      socket_.send(zmq::const_buffer(bytes.begin(), bytes.size()),
                   i + 1 < segs.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
    last_sent_ = Clock::now();
  }

  void send_hello() {
    capnp::MallocMessageBuilder mb;
    auto hello = start(mb).getPayload().initHello();
    hello.setRole(fs::Role::CLIENT);
    hello.setClientId(opt_.id);
    auto prof = hello.initProfile();
    prof.setKind("cpu");
    prof.setComputeSpeed(1.0f);
    prof.setMemoryBytes(0);
    hello.setNumExamples(opt_.examples);
    send(mb);
  }

  void send_heartbeat() {
    capnp::MallocMessageBuilder mb;
    auto hb = start(mb).getPayload().initHeartbeat();
    hb.setModelVersion(model_version_);
    hb.setBusy(false);
    send(mb);
    if (!unanswered_since_) unanswered_since_ = last_sent_;
  }

  // Why the task's tensors cannot be used, or empty if they can.
  static std::string check_tensors(capnp::List<fs::Tensor>::Reader tensors) {
    for (auto t : tensors) {
      std::size_t esize = dtype_size(t.getDtype());
      if (esize == 0)
        return "tensor '" + std::string(t.getName().cStr()) + "' has an unknown dtype";
      std::uint64_t elements = 1;
      for (auto d : t.getShape()) {
        if (d < 0) return "tensor '" + std::string(t.getName().cStr()) + "' has a negative dimension";
        elements *= static_cast<std::uint64_t>(d);
      }
      std::uint64_t total = 0;
      for (auto c : t.getChunks()) total += c.size();
      if (total != elements * esize)
        return "tensor '" + std::string(t.getName().cStr()) + "' carries " +
               std::to_string(total) + " bytes, its shape and dtype need " +
               std::to_string(elements * esize);
    }
    return {};
  }

  void send_error(std::uint64_t reply_to, fs::ErrorCode code, const std::string& message) {
    capnp::MallocMessageBuilder mb;
    auto err = start(mb, reply_to).getPayload().initError();
    err.setCode(code);
    err.setMessage(message);
    send(mb);
  }

  void answer_task(std::uint64_t task_message_id, fs::Task::Reader task) {
    model_version_ = task.getModelVersion();
    const bool delta = task.getSendDelta();
    auto in_tensors = task.getTensors();
    if (std::string why = check_tensors(in_tensors); !why.empty()) {
      std::cerr << "doc_client: cannot train task round " << task.getRound() << ": " << why
                << "\n";
      send_error(task_message_id, fs::ErrorCode::REJECTED, why);
      return;
    }

    capnp::MallocMessageBuilder mb;
    auto env = start(mb, task_message_id);
    auto up = env.getPayload().initUpdate();
    up.setRound(task.getRound());
    up.setBaseModelVersion(task.getModelVersion());
    up.setNumExamples(opt_.examples);
    auto metrics = up.initMetrics(2);
    metrics[0].setName("loss");
    metrics[0].setValue(1.0);
    metrics[1].setName("accuracy");
    metrics[1].setValue(0.5);
    up.setIsDelta(delta);
    auto out_tensors = up.initTensors(in_tensors.size());

    for (unsigned t = 0; t < in_tensors.size(); ++t) {
      auto src = in_tensors[t];
      auto dst = out_tensors[t];
      dst.setName(src.getName());
      dst.setDtype(src.getDtype());
      dst.setShape(src.getShape());

      // The tensor's bytes are the concatenation of its chunks (a chunk boundary may fall
      // anywhere, even inside an element).
      std::vector<unsigned char> bytes;
      std::size_t total = 0;
      for (auto c : src.getChunks()) total += c.size();
      bytes.reserve(total);
      for (auto c : src.getChunks()) bytes.insert(bytes.end(), c.begin(), c.end());

      if (src.getDtype() == fs::DType::F32) {
        for (std::size_t i = 0; i + 4 <= bytes.size(); i += 4) {
          float x = load_f32le(&bytes[i]);
          float trained = x * kTrainFactor;
          store_f32le(&bytes[i], delta ? trained - x : trained);
        }
      } else if (delta) {
        // Unchanged by training: trained minus received is zero.
        std::fill(bytes.begin(), bytes.end(), 0);
      }

      std::size_t nchunks = bytes.empty() ? 1 : (bytes.size() + kMaxChunkBytes - 1) / kMaxChunkBytes;
      auto chunks = dst.initChunks(static_cast<unsigned>(nchunks));
      for (std::size_t c = 0; c < nchunks; ++c) {
        std::size_t off = c * kMaxChunkBytes;
        std::size_t len = std::min(kMaxChunkBytes, bytes.size() - off);
        auto d = chunks.init(static_cast<unsigned>(c), static_cast<unsigned>(len));
        if (len) std::memcpy(d.begin(), bytes.data() + off, len);
      }
    }
    send(mb);
    ++tasks_answered_;
    std::cerr << "doc_client: answered task round " << task.getRound() << " (model version "
              << task.getModelVersion() << ", " << in_tensors.size() << " tensors in "
              << last_segments_ << " segments" << (delta ? ", delta" : "") << ")\n";
  }

  Options opt_;
  std::string routing_id_;
  zmq::context_t ctx_;
  zmq::socket_t socket_;
  std::string run_id_;
  bool registered_ = false;     // holds a Welcome for the current run
  bool ever_welcomed_ = false;
  std::uint64_t model_version_ = 0;
  std::uint64_t next_message_id_ = 1;
  std::uint64_t tasks_answered_ = 0;
  std::uint64_t errors_ = 0;           // Errors other than notRegistered
  std::uint64_t not_registered_ = 0;   // notRegistered Errors
  std::uint64_t registrations_ = 0;    // Welcomes received
  std::size_t last_segments_ = 0;  // of the message being handled
  Clock::time_point last_heard_{};
  Clock::time_point last_sent_{};
  std::uint16_t aggregator_minor_ = 0;  // from its latest accepted envelope
  std::optional<Clock::time_point> unanswered_since_;  // first heartbeat not answered yet
  bool silence_warned_ = false;
  std::optional<Clock::time_point> next_hello_at_;  // re-registration: the next Hello
  std::chrono::milliseconds backoff_{kHeartbeatInterval};
  std::mt19937_64 rng_{std::random_device{}()};
};

}  // namespace

int main(int argc, char** argv) {
  Options opt = parse_args(argc, argv);
  std::optional<Client> client;
  try {
    client.emplace(std::move(opt));
    return client->run();
  } catch (const zmq::error_t& e) {
    std::cerr << "doc_client: zmq: " << e.what() << "\n";
  } catch (const kj::Exception& e) {
    std::cerr << "doc_client: " << e.getDescription().cStr() << "\n";
  } catch (const std::exception& e) {
    std::cerr << "doc_client: " << e.what() << "\n";
  }
  if (client) {
    client->print_summary();
  } else {
    std::cout << "doc-client: tasks 0 answered, errors 0, notRegistered 0, registrations 0"
              << std::endl;
  }
  return 1;
}
