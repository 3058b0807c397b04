#include "runtime/protocol/wire.hpp"

#include "schemas/flotilla.capnp.h"

#include <ATen/ATen.h>
#include <capnp/message.h>
#include <capnp/orphan.h>
#include <capnp/serialize.h>
#include <kj/exception.h>

#include <sys/mman.h>

#include <array>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

namespace flotilla {
namespace {

namespace s = ::flotilla::schema;

constexpr std::array<char, 4> kMagic = {'F', 'L', 'T', 'L'};
constexpr std::uint16_t kFramingVersion = 1;
constexpr std::size_t kHeaderBytes = 8;
constexpr std::size_t kWordBytes = sizeof(capnp::word);

/// Tensors smaller than this are copied into the envelope's own segment: a frame (and a
/// segment) per bias vector costs more than copying a few KiB.
constexpr std::size_t kInlineTensorBytes = 4096;

/// Each referenced chunk is a Cap'n Proto segment and the framing counts segments in a u16;
/// past this budget chunks are copied into the builder's own segments instead.
constexpr std::size_t kMaxExternalSegments = 60000;

/// Cap'n Proto's Data limit (2^29 - 1 bytes), rounded down to a whole word so that every chunk
/// but the last starts word-aligned.
constexpr std::uint64_t kMaxChunkBytes = ((1ULL << 29) - 1) & ~std::uint64_t{kWordBytes - 1};

bool aligned(const void* p) noexcept {
  return reinterpret_cast<std::uintptr_t>(p) % kWordBytes == 0;
}

std::uint16_t load_u16(const std::byte* p) noexcept {
  return static_cast<std::uint16_t>(std::to_integer<unsigned>(p[0]) |
                                    (std::to_integer<unsigned>(p[1]) << 8U));
}

void store_u16(std::byte* p, std::uint16_t v) noexcept {
  p[0] = static_cast<std::byte>(v & 0xFFU);
  p[1] = static_cast<std::byte>(v >> 8U);
}

Error malformed(std::string what) { return Error{Errc::malformed, std::move(what)}; }

/// Thrown inside decoding to leave the nested readers at once; decode() turns it into an Error.
struct DecodeError {
  Error error;
};

[[noreturn]] void fail(std::string what) { throw DecodeError{malformed(std::move(what))}; }

// ---- dtypes ---------------------------------------------------------------------------------

struct DTypeInfo {
  s::DType wire;
  at::ScalarType scalar;
  std::size_t element_bytes;
};

constexpr std::array<DTypeInfo, 7> kDTypes = {{
    {s::DType::F32, at::kFloat, 4},
    {s::DType::F16, at::kHalf, 2},
    {s::DType::BF16, at::kBFloat16, 2},
    {s::DType::I64, at::kLong, 8},
    {s::DType::F64, at::kDouble, 8},
    {s::DType::I32, at::kInt, 4},
    {s::DType::U8, at::kByte, 1},
}};

const DTypeInfo* find_dtype(at::ScalarType scalar) noexcept {
  for (const auto& d : kDTypes) {
    if (d.scalar == scalar) return &d;
  }
  return nullptr;
}

const DTypeInfo* find_dtype(s::DType wire) noexcept {
  for (const auto& d : kDTypes) {
    if (d.wire == wire) return &d;
  }
  return nullptr;
}

// ---- encoding -------------------------------------------------------------------------------

/// Everything the frames point into: the header, the builder's segments and the tensors whose
/// bytes the builder references. Tensors are declared first so they outlive the builder.
struct EncodeOwner {
  std::array<std::byte, kHeaderBytes> header{};
  std::vector<at::Tensor> tensors;
  capnp::MallocMessageBuilder builder;

  explicit EncodeOwner(unsigned first_segment_words)
      : builder(first_segment_words, capnp::AllocationStrategy::GROW_HEURISTICALLY) {}
};

/// Makes `t` a contiguous CPU tensor of a wire dtype whose data is word-aligned, copying only
/// when it is not one already.
at::Tensor wire_ready(const NamedTensor& named) {
  if (!named.tensor.defined()) {
    throw Failure(Errc::invalid_argument,
                  "tensor '" + named.name + "' is undefined and cannot be sent");
  }
  at::Tensor t = named.tensor;
  if (!t.device().is_cpu()) t = t.to(at::kCPU);
  if (find_dtype(t.scalar_type()) == nullptr) {
    if (t.is_complex()) {
      throw Failure(Errc::invalid_argument,
                    "tensor '" + named.name + "' is complex, which the wire cannot carry");
    }
    // Other integer and bool tensors widen losslessly to i64; other floats go to f32.
    t = t.to(at::isFloatingType(t.scalar_type()) ? at::kFloat : at::kLong);
  }
  if (!t.is_contiguous()) t = t.contiguous();
  if (t.nbytes() > 0 && !aligned(t.data_ptr())) t = t.clone();  // fresh CPU storage is aligned
  return t;
}

struct Encoder {
  EncodeOwner& owner;
  std::uint64_t chunk_bytes;
  std::size_t external_segments = 0;

  void encode_tensors(capnp::List<s::Tensor>::Builder out, const TensorList& tensors) {
    for (unsigned i = 0; i < out.size(); ++i) encode_tensor(out[i], tensors[i]);
  }

  void encode_tensor(s::Tensor::Builder out, const NamedTensor& named) {
    at::Tensor t = wire_ready(named);
    out.setName(capnp::Text::Reader(named.name.c_str(), named.name.size()));
    out.setDtype(find_dtype(t.scalar_type())->wire);
    auto sizes = t.sizes();
    auto shape = out.initShape(static_cast<unsigned>(sizes.size()));
    for (unsigned d = 0; d < sizes.size(); ++d) shape.set(d, sizes[d]);

    const auto* data = static_cast<const capnp::byte*>(t.data_ptr());
    const std::uint64_t total = t.nbytes();
    if (total == 0) {
      out.initChunks(0);
      return;
    }
    if (total <= kInlineTensorBytes) {
      out.initChunks(1).set(0, capnp::Data::Reader(data, total));
      return;
    }

    // Referenced chunks must cover whole words (Cap'n Proto rounds an external segment up to
    // words and would read past the tensor), so an odd tail of < 8 bytes becomes its own
    // copied chunk.
    const std::uint64_t whole = total & ~std::uint64_t{kWordBytes - 1};
    const std::uint64_t tail = total - whole;
    const std::uint64_t n_whole = (whole + chunk_bytes - 1) / chunk_bytes;
    auto chunks = out.initChunks(static_cast<unsigned>(n_whole + (tail > 0 ? 1 : 0)));
    auto orphanage = owner.builder.getOrphanage();
    bool referenced = false;
    for (std::uint64_t c = 0; c < n_whole; ++c) {
      const std::uint64_t begin = c * chunk_bytes;
      const std::uint64_t len = std::min(chunk_bytes, whole - begin);
      capnp::Data::Reader bytes(data + begin, len);
      if (external_segments < kMaxExternalSegments) {
        chunks.adopt(static_cast<unsigned>(c), orphanage.referenceExternalData(bytes));
        ++external_segments;
        referenced = true;
      } else {
        chunks.set(static_cast<unsigned>(c), bytes);
      }
    }
    if (tail > 0) chunks.set(static_cast<unsigned>(n_whole), capnp::Data::Reader(data + whole, tail));
    if (referenced) owner.tensors.push_back(std::move(t));
  }
};

capnp::Text::Reader text(const std::string& s) { return {s.c_str(), s.size()}; }

void encode_metrics(capnp::List<s::Metric>::Builder out, const Metrics& metrics) {
  for (unsigned i = 0; i < out.size(); ++i) {
    out[i].setName(text(metrics[i].name));
    out[i].setValue(metrics[i].value);
  }
}

s::Role to_wire(Role r) {
  switch (r) {
    case Role::client: return s::Role::CLIENT;
    case Role::evaluator: return s::Role::EVALUATOR;
    case Role::aggregator: return s::Role::AGGREGATOR;
    case Role::admin: return s::Role::ADMIN;
  }
  return s::Role::CLIENT;
}

s::ErrorCode to_wire(WireErrc c) {
  switch (c) {
    case WireErrc::unknown: return s::ErrorCode::UNKNOWN;
    case WireErrc::protocol_version: return s::ErrorCode::PROTOCOL_VERSION;
    case WireErrc::malformed: return s::ErrorCode::MALFORMED;
    case WireErrc::rejected: return s::ErrorCode::REJECTED;
    case WireErrc::internal: return s::ErrorCode::INTERNAL;
    case WireErrc::not_registered: return s::ErrorCode::NOT_REGISTERED;
  }
  return s::ErrorCode::UNKNOWN;
}

unsigned list_size(std::size_t n, const char* what) {
  if (n > std::numeric_limits<std::uint32_t>::max() / 2) {
    throw Failure(Errc::invalid_argument, std::string("too many ") + what + " to encode");
  }
  return static_cast<unsigned>(n);
}

void encode_stats(s::ClientStats::Builder out, const ClientStats& stats) {
  out.setDeviceClass(text(stats.device_class));
  out.setTasksCompleted(stats.tasks_completed);
  out.setTasksFailed(stats.tasks_failed);
  out.setTrainingSeconds(stats.training_seconds);
  out.setExamples(stats.examples);
  out.setBytesSent(stats.bytes_sent);
  out.setBytesReceived(stats.bytes_received);
  out.setOptimizerStateBytes(stats.optimizer_state_bytes);
}

void encode_payload(s::Envelope::Payload::Builder out, const Payload& payload, Encoder& enc) {
  std::visit(
      [&](const auto& p) {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, Hello>) {
          auto h = out.initHello();
          h.setRole(to_wire(p.role));
          h.setClientId(p.client_id);
          auto prof = h.initProfile();
          prof.setKind(text(p.profile.kind));
          prof.setComputeSpeed(p.profile.compute_speed);
          prof.setMemoryBytes(p.profile.memory_bytes);
          h.setNumExamples(p.num_examples);
        } else if constexpr (std::is_same_v<T, Welcome>) {
          auto w = out.initWelcome();
          w.setRunId(text(p.run_id));
          w.setModelVersion(p.model_version);
        } else if constexpr (std::is_same_v<T, Task>) {
          auto t = out.initTask();
          t.setRound(p.round);
          t.setModelVersion(p.model_version);
          auto c = t.initConfig();
          c.setLocalSteps(p.config.local_steps);
          c.setLocalEpochs(p.config.local_epochs);
          c.setBatchSize(p.config.batch_size);
          c.setLearningRate(p.config.learning_rate);
          c.setMomentum(p.config.momentum);
          c.setWeightDecay(p.config.weight_decay);
          c.setSeed(p.config.seed);
          t.setSendDelta(p.send_delta);
          if (!p.keep_local.empty()) {
            auto keep = t.initKeepLocal(list_size(p.keep_local.size(), "keep-local names"));
            for (unsigned i = 0; i < p.keep_local.size(); ++i) keep.set(i, text(p.keep_local[i]));
          }
          enc.encode_tensors(t.initTensors(list_size(p.tensors.size(), "tensors")), p.tensors);
        } else if constexpr (std::is_same_v<T, Update>) {
          auto u = out.initUpdate();
          u.setRound(p.round);
          u.setBaseModelVersion(p.base_model_version);
          u.setNumExamples(p.num_examples);
          u.setIsDelta(p.is_delta);
          if (p.stats) encode_stats(u.initStats(), *p.stats);
          encode_metrics(u.initMetrics(list_size(p.metrics.size(), "metrics")), p.metrics);
          enc.encode_tensors(u.initTensors(list_size(p.tensors.size(), "tensors")), p.tensors);
        } else if constexpr (std::is_same_v<T, EvaluationRequest>) {
          auto r = out.initEvaluationRequest();
          r.setRound(p.round);
          r.setModelVersion(p.model_version);
          enc.encode_tensors(r.initTensors(list_size(p.tensors.size(), "tensors")), p.tensors);
        } else if constexpr (std::is_same_v<T, EvaluationResult>) {
          auto r = out.initEvaluationResult();
          r.setRound(p.round);
          r.setModelVersion(p.model_version);
          r.setNumExamples(p.num_examples);
          r.setLoss(p.loss);
          r.setAccuracy(p.accuracy);
          encode_metrics(r.initMetrics(list_size(p.metrics.size(), "metrics")), p.metrics);
        } else if constexpr (std::is_same_v<T, Heartbeat>) {
          auto h = out.initHeartbeat();
          h.setModelVersion(p.model_version);
          h.setBusy(p.busy);
          if (p.stats) encode_stats(h.initStats(), *p.stats);
        } else if constexpr (std::is_same_v<T, Shutdown>) {
          out.initShutdown().setReason(text(p.reason));
        } else if constexpr (std::is_same_v<T, ErrorReply>) {
          auto e = out.initError();
          e.setCode(to_wire(p.code));
          e.setMessage(text(p.message));
        } else if constexpr (std::is_same_v<T, AdminCommand>) {
          auto c = out.initAdminCommand();
          c.setCommand(text(p.command));
          auto args = c.initArgs(list_size(p.args.size(), "admin arguments"));
          for (unsigned i = 0; i < p.args.size(); ++i) args.set(i, text(p.args[i]));
        } else if constexpr (std::is_same_v<T, AdminReply>) {
          auto r = out.initAdminReply();
          r.setOk(p.ok);
          r.setMessage(text(p.message));
        }
      },
      payload);
}

/// Words for the first segment: enough for the envelope, names and inline tensors, so that a
/// typical message is one segment plus one per large tensor chunk.
unsigned first_segment_words(const Message& m) {
  std::size_t bytes = 1024 + m.run_id.size() + m.sender.size();
  const TensorList* tensors = std::visit(
      [](const auto& p) -> const TensorList* {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, Task> || std::is_same_v<T, Update> ||
                      std::is_same_v<T, EvaluationRequest>) {
          return &p.tensors;
        } else {
          return nullptr;
        }
      },
      m.payload);
  if (tensors != nullptr) {
    for (const auto& t : *tensors) {
      bytes += 128 + t.name.size() + 8 * (t.tensor.defined() ? t.tensor.dim() : 0);
      if (t.tensor.defined() && t.tensor.nbytes() <= kInlineTensorBytes) bytes += t.tensor.nbytes();
    }
  }
  const std::size_t words = bytes / kWordBytes + 1;
  return static_cast<unsigned>(std::min<std::size_t>(words, 1U << 26));
}

// ---- decoding -------------------------------------------------------------------------------

/// Owns the received frames (and aligned copies of the unaligned ones); decoded tensors keep
/// it alive through their deleters.
struct DecodeOwner {
  std::vector<zmq::message_t> frames;
  std::vector<std::unique_ptr<capnp::word[]>> copies;
};

Role from_wire(s::Role r) {
  switch (r) {
    case s::Role::CLIENT: return Role::client;
    case s::Role::EVALUATOR: return Role::evaluator;
    case s::Role::AGGREGATOR: return Role::aggregator;
    case s::Role::ADMIN: return Role::admin;
  }
  fail("unknown role " + std::to_string(static_cast<unsigned>(r)));
}

WireErrc from_wire(s::ErrorCode c) {
  switch (c) {
    case s::ErrorCode::UNKNOWN: return WireErrc::unknown;
    case s::ErrorCode::PROTOCOL_VERSION: return WireErrc::protocol_version;
    case s::ErrorCode::MALFORMED: return WireErrc::malformed;
    case s::ErrorCode::REJECTED: return WireErrc::rejected;
    case s::ErrorCode::INTERNAL: return WireErrc::internal;
    case s::ErrorCode::NOT_REGISTERED: return WireErrc::not_registered;
  }
  return WireErrc::unknown;  // a code added by a newer minor version
}

std::string str(capnp::Text::Reader t) { return {t.cStr(), t.size()}; }

ClientStats decode_stats(s::ClientStats::Reader in) {
  ClientStats out;
  out.device_class = str(in.getDeviceClass());
  out.tasks_completed = in.getTasksCompleted();
  out.tasks_failed = in.getTasksFailed();
  out.training_seconds = in.getTrainingSeconds();
  out.examples = in.getExamples();
  out.bytes_sent = in.getBytesSent();
  out.bytes_received = in.getBytesReceived();
  out.optimizer_state_bytes = in.getOptimizerStateBytes();
  return out;
}

/// `n`, the length a list declares, if the message can hold it: every element a peer can
/// legitimately send takes at least one word, so a longer list is forged (e.g. a list of
/// zero-sized structs) and is refused before anything is allocated for it.
std::size_t bounded(std::size_t n, std::size_t message_words, const char* what) {
  if (n > message_words) {
    fail(std::string(what) + ": a list of " + std::to_string(n) + " elements in a message of " +
         std::to_string(message_words) + " words");
  }
  return n;
}

Metrics decode_metrics(capnp::List<s::Metric>::Reader in, std::size_t message_words) {
  Metrics out;
  out.reserve(bounded(in.size(), message_words, "metrics"));
  for (auto m : in) out.push_back(Metric{str(m.getName()), m.getValue()});
  return out;
}

/// Tensors at least this large are assembled in transparent huge pages.
constexpr std::size_t kHugePageBytes = 2U << 20;

/// Released assembly buffers kept for the next multi-chunk tensor (an aggregator receives one
/// update per client per round, all of the same shapes): a reused buffer is already faulted in,
/// while a fresh one costs the kernel zeroing every page before the copy (about as long as the
/// copy itself). Bounded in count and bytes; cached buffers are MADV_FREE'd, so under memory
/// pressure the kernel may take their pages back (reuse then faults them in again).
constexpr std::size_t kAssemblyCacheBuffers = 4;
constexpr std::size_t kAssemblyCacheBytes = 4ULL << 30;

class AssemblyCache {
 public:
  /// A buffer of at least `size` bytes (a multiple of kHugePageBytes), reused when one of the
  /// same size was released, else fresh and advised for huge pages.
  void* acquire(std::size_t size) {
    {
      std::lock_guard lock(mutex_);
      for (auto it = free_.begin(); it != free_.end(); ++it) {
        if (it->second == size) {
          void* p = it->first;
          bytes_ -= size;
          free_.erase(it);
          return p;
        }
      }
    }
    void* p = std::aligned_alloc(kHugePageBytes, size);
    if (p == nullptr) throw std::bad_alloc();
    ::madvise(p, size, MADV_HUGEPAGE);  // advice only: without THP it is plain memory
    return p;
  }

  void release(void* p, std::size_t size) noexcept {
    {
      std::lock_guard lock(mutex_);
      if (free_.size() < kAssemblyCacheBuffers && bytes_ + size <= kAssemblyCacheBytes) {
        ::madvise(p, size, MADV_FREE);
        free_.emplace_back(p, size);
        bytes_ += size;
        return;
      }
    }
    std::free(p);
  }

 private:
  std::mutex mutex_;
  std::vector<std::pair<void*, std::size_t>> free_;
  std::size_t bytes_ = 0;
};

AssemblyCache& assembly_cache() {
  static auto* cache = new AssemblyCache();  // never destroyed: deleters may run at exit
  return *cache;
}

/// A tensor to copy a multi-chunk tensor into. Large ones come from the assembly cache, in
/// memory advised for transparent huge pages: faulting in 4 KiB pages, not the copy, is what
/// made assembling a 1 GiB tensor slow (about 1 s against about 0.2 s), and reusing a
/// released buffer saves the remaining huge-page zeroing.
at::Tensor assembly_tensor(const std::vector<std::int64_t>& shape, const at::TensorOptions& options,
                           std::uint64_t bytes) {
  if (bytes < 4 * kHugePageBytes) return at::empty(shape, options);
  const std::size_t size = (bytes + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  void* p = assembly_cache().acquire(size);
  return at::from_blob(p, shape, [size](void* q) { assembly_cache().release(q, size); }, options);
}

/// Whether each chunk starts where the previous one ends, so that all of them are one range
/// of memory (every byte of which belongs to some chunk, hence to a frame the owner holds).
bool adjacent(capnp::List<capnp::Data>::Reader chunks) {
  for (unsigned i = 0; i < chunks.size(); ++i) {
    if (chunks[i].size() == 0) return false;
    if (i > 0 && chunks[i].begin() != chunks[i - 1].end()) return false;
  }
  return true;
}

using Chunk = std::pair<const capnp::byte*, std::size_t>;

void copy_chunks(const Chunk* begin, const Chunk* end, capnp::byte* dst) noexcept {
  for (; begin != end; ++begin) {
    if (begin->second == 0) continue;
    std::memcpy(dst, begin->first, begin->second);
    dst += begin->second;
  }
}

/// Assemblies at least this large are split between this thread and one helper: the whole
/// message has arrived by now, so the socket is idle, and one core's memcpy does not use the
/// memory bandwidth up (tcp, 1 GiB in 16 MiB chunks: 2.0 GB/s with one thread, 2.4 with two).
constexpr std::uint64_t kParallelAssemblyBytes = 64ULL << 20;

/// Copies the chunks, in order, to `dst` (which has `total` bytes).
void assemble(capnp::List<capnp::Data>::Reader in, capnp::byte* dst, std::uint64_t total) {
  // Plain pointers first: Cap'n Proto readers count reads in an unsynchronised limiter, so the
  // helper thread must not touch them.
  std::vector<Chunk> chunks;
  chunks.reserve(in.size());
  for (auto c : in) chunks.emplace_back(c.begin(), c.size());
  const Chunk* first = chunks.data();
  const Chunk* last = first + chunks.size();
  if (total < kParallelAssemblyBytes || chunks.size() < 2) {
    copy_chunks(first, last, dst);
    return;
  }
  // The helper takes the chunks from the first one that starts at or past half the bytes.
  const Chunk* split = first;
  std::uint64_t offset = 0;
  while (split != last && offset < total / 2) offset += (split++)->second;
  std::thread helper;
  try {
    helper = std::thread(copy_chunks, split, last, dst + offset);
  } catch (const std::system_error&) {
    copy_chunks(split, last, dst + offset);  // no thread to be had: copy it here
  }
  copy_chunks(first, split, dst);
  if (helper.joinable()) helper.join();
}

struct Decoder {
  std::shared_ptr<DecodeOwner> owner;
  std::size_t message_words = 0;  ///< what was received: no list may declare more elements
  std::uint64_t max_tensors = 0;

  TensorList decode_tensors(capnp::List<s::Tensor>::Reader in) {
    if (in.size() > max_tensors) {
      fail("message carries " + std::to_string(in.size()) + " tensors, more than the limit of " +
           std::to_string(max_tensors) + " (aggregator.max-tensors)");
    }
    TensorList out;
    out.reserve(bounded(in.size(), message_words, "tensors"));
    for (auto t : in) out.push_back(decode_tensor(t));
    return out;
  }

  NamedTensor decode_tensor(s::Tensor::Reader in) {
    NamedTensor out;
    out.name = str(in.getName());
    const DTypeInfo* dtype = find_dtype(in.getDtype());
    if (dtype == nullptr) {
      fail("tensor '" + out.name + "' has unknown dtype " +
           std::to_string(static_cast<unsigned>(in.getDtype())));
    }
    std::vector<std::int64_t> shape;
    shape.reserve(bounded(in.getShape().size(), message_words, "tensor shape"));
    std::uint64_t numel = 1;
    for (std::int64_t d : in.getShape()) {
      if (d < 0) fail("tensor '" + out.name + "' has negative dimension " + std::to_string(d));
      if (__builtin_mul_overflow(numel, static_cast<std::uint64_t>(d), &numel)) {
        fail("tensor '" + out.name + "' has a shape whose size overflows");
      }
      shape.push_back(d);
    }
    std::uint64_t expected = 0;
    if (__builtin_mul_overflow(numel, dtype->element_bytes, &expected)) {
      fail("tensor '" + out.name + "' has a shape whose size overflows");
    }
    auto chunks = in.getChunks();
    std::uint64_t total = 0;
    for (auto c : chunks) total += c.size();
    if (total != expected) {
      fail("tensor '" + out.name + "' has " + std::to_string(total) + " bytes, its shape needs " +
           std::to_string(expected));
    }
    const auto options = at::TensorOptions().dtype(dtype->scalar);
    if (total > 0 && aligned(chunks[0].begin()) && adjacent(chunks)) {
      // Zero copy: the tensor views the received frame(s) and keeps all frames alive. Several
      // chunks are adjacent only when they are slices of one buffer (inproc, or frames that
      // point at the sender's tensor), never for separately received frames.
      auto keep = owner;
      void* data = const_cast<capnp::byte*>(chunks[0].begin());
      out.tensor = at::from_blob(data, shape, [keep](void*) {}, options);
    } else {
      out.tensor = assembly_tensor(shape, options, total);
      assemble(chunks, static_cast<capnp::byte*>(out.tensor.data_ptr()), total);
    }
    return out;
  }

  Payload decode_payload(s::Envelope::Payload::Reader in) {
    switch (in.which()) {
      case s::Envelope::Payload::HELLO: {
        auto h = in.getHello();
        Hello p;
        p.role = from_wire(h.getRole());
        p.client_id = h.getClientId();
        auto prof = h.getProfile();
        p.profile.kind = str(prof.getKind());
        p.profile.compute_speed = prof.getComputeSpeed();
        p.profile.memory_bytes = prof.getMemoryBytes();
        p.num_examples = h.getNumExamples();
        return p;
      }
      case s::Envelope::Payload::WELCOME: {
        auto w = in.getWelcome();
        return Welcome{str(w.getRunId()), w.getModelVersion()};
      }
      case s::Envelope::Payload::TASK: {
        auto t = in.getTask();
        Task p;
        p.round = t.getRound();
        p.model_version = t.getModelVersion();
        auto c = t.getConfig();
        p.config.local_steps = c.getLocalSteps();
        p.config.local_epochs = c.getLocalEpochs();
        p.config.batch_size = c.getBatchSize();
        p.config.learning_rate = c.getLearningRate();
        p.config.momentum = c.getMomentum();
        p.config.weight_decay = c.getWeightDecay();
        p.config.seed = c.getSeed();
        p.send_delta = t.getSendDelta();
        const auto keep = t.getKeepLocal();
        p.keep_local.reserve(bounded(keep.size(), message_words, "keep-local names"));
        for (auto name : keep) p.keep_local.push_back(str(name));
        p.tensors = decode_tensors(t.getTensors());
        return p;
      }
      case s::Envelope::Payload::UPDATE: {
        auto u = in.getUpdate();
        Update p;
        p.round = u.getRound();
        p.base_model_version = u.getBaseModelVersion();
        p.num_examples = u.getNumExamples();
        p.is_delta = u.getIsDelta();
        if (u.hasStats()) p.stats = decode_stats(u.getStats());
        p.metrics = decode_metrics(u.getMetrics(), message_words);
        p.tensors = decode_tensors(u.getTensors());
        return p;
      }
      case s::Envelope::Payload::EVALUATION_REQUEST: {
        auto r = in.getEvaluationRequest();
        EvaluationRequest p;
        p.round = r.getRound();
        p.model_version = r.getModelVersion();
        p.tensors = decode_tensors(r.getTensors());
        return p;
      }
      case s::Envelope::Payload::EVALUATION_RESULT: {
        auto r = in.getEvaluationResult();
        EvaluationResult p;
        p.round = r.getRound();
        p.model_version = r.getModelVersion();
        p.num_examples = r.getNumExamples();
        p.loss = r.getLoss();
        p.accuracy = r.getAccuracy();
        p.metrics = decode_metrics(r.getMetrics(), message_words);
        return p;
      }
      case s::Envelope::Payload::HEARTBEAT: {
        auto h = in.getHeartbeat();
        Heartbeat p{h.getModelVersion(), h.getBusy(), std::nullopt};
        if (h.hasStats()) p.stats = decode_stats(h.getStats());
        return p;
      }
      case s::Envelope::Payload::SHUTDOWN:
        return Shutdown{str(in.getShutdown().getReason())};
      case s::Envelope::Payload::ERROR: {
        auto e = in.getError();
        return ErrorReply{from_wire(e.getCode()), str(e.getMessage())};
      }
      case s::Envelope::Payload::ADMIN_COMMAND: {
        auto c = in.getAdminCommand();
        AdminCommand p{str(c.getCommand()), {}};
        const auto args = c.getArgs();
        (void)bounded(args.size(), message_words, "admin arguments");
        for (auto a : args) p.args.push_back(str(a));
        return p;
      }
      case s::Envelope::Payload::ADMIN_REPLY: {
        auto r = in.getAdminReply();
        return AdminReply{r.getOk(), str(r.getMessage())};
      }
    }
    fail("unknown payload kind " + std::to_string(static_cast<unsigned>(in.which())));
  }
};

Expected<Message> decode_frames(std::vector<zmq::message_t> frames, const WireLimits& limits) {
  if (frames.empty()) return malformed("empty message (no frames)");
  std::uint64_t total = 0;
  for (const auto& f : frames) total += f.size();
  if (total > limits.max_message_bytes) {
    return malformed("message of " + std::to_string(total) + " bytes exceeds the limit of " +
                     std::to_string(limits.max_message_bytes) + " bytes");
  }
  const auto& head = frames[0];
  if (head.size() != kHeaderBytes) {
    return malformed("header frame has " + std::to_string(head.size()) + " bytes, expected 8");
  }
  const auto* h = static_cast<const std::byte*>(head.data());
  if (std::memcmp(h, kMagic.data(), kMagic.size()) != 0) {
    return malformed("not a Flotilla message (bad magic)");
  }
  if (const auto version = load_u16(h + 4); version != kFramingVersion) {
    return malformed("unsupported framing version " + std::to_string(version));
  }
  const std::size_t segment_count = load_u16(h + 6);
  if (segment_count == 0 || segment_count != frames.size() - 1) {
    return malformed("header announces " + std::to_string(segment_count) + " segments but " +
                     std::to_string(frames.size() - 1) + " frames follow");
  }
  for (std::size_t i = 1; i < frames.size(); ++i) {
    const auto size = frames[i].size();
    if (size == 0 || size % kWordBytes != 0) {
      return malformed("segment " + std::to_string(i - 1) + " has " + std::to_string(size) +
                       " bytes, not a positive multiple of 8");
    }
  }

  auto owner = std::make_shared<DecodeOwner>();
  owner->frames = std::move(frames);  // moved before taking pointers: small frames live inline
  auto segments = kj::heapArray<kj::ArrayPtr<const capnp::word>>(segment_count);
  for (std::size_t i = 0; i < segment_count; ++i) {
    auto& f = owner->frames[i + 1];
    const std::size_t words = f.size() / kWordBytes;
    const void* data = f.data();
    if (!aligned(data)) {
      owner->copies.push_back(std::make_unique<capnp::word[]>(words));
      std::memcpy(owner->copies.back().get(), data, f.size());
      data = owner->copies.back().get();
    }
    segments[i] = kj::arrayPtr(static_cast<const capnp::word*>(data), words);
  }

  capnp::ReaderOptions options;
  // The work a message may cost follows the bytes it brought, not the configured maximum: a
  // tensor's chunks are read a few times while it is assembled, so 8 x its words, and a small
  // allowance for the envelope. (Lists of zero-sized structs are charged a word per element,
  // so a short message cannot declare a long list: `bounded` says so first where it can.)
  const std::size_t message_words = (total - kHeaderBytes) / kWordBytes;
  options.traversalLimitInWords = 8 * message_words + 1024;
  capnp::SegmentArrayMessageReader reader(segments.asPtr(), options);
  auto env = reader.getRoot<s::Envelope>();
  Message m;
  m.protocol_major = env.getProtocolMajor();
  m.protocol_minor = env.getProtocolMinor();
  if (m.protocol_major != kProtocolMajor) {
    return Error{Errc::protocol_version,
                 "peer speaks protocol " + std::to_string(m.protocol_major) +
                     ".x, this build speaks " + std::to_string(kProtocolMajor) + ".x"};
  }
  m.run_id = str(env.getRunId());
  m.sender = str(env.getSender());
  m.message_id = env.getMessageId();
  m.reply_to = env.getReplyTo();
  Decoder decoder{owner, message_words, limits.max_tensors};
  m.payload = decoder.decode_payload(env.getPayload());
  return m;
}

}  // namespace

std::size_t EncodedFrames::total_bytes() const noexcept {
  std::size_t n = 0;
  for (const auto& f : frames) n += f.size();
  return n;
}

EncodedFrames encode(const Message& message, const WireLimits& limits) {
  std::uint64_t chunk = std::min(limits.chunk_bytes, kMaxChunkBytes);
  chunk &= ~std::uint64_t{kWordBytes - 1};
  if (chunk == 0) chunk = kWordBytes;

  auto owner = std::make_shared<EncodeOwner>(first_segment_words(message));
  auto env = owner->builder.initRoot<s::Envelope>();
  env.setProtocolMajor(message.protocol_major);
  env.setProtocolMinor(message.protocol_minor);
  env.setRunId(text(message.run_id));
  env.setSender(text(message.sender));
  env.setMessageId(message.message_id);
  env.setReplyTo(message.reply_to);
  Encoder encoder{*owner, chunk};
  encode_payload(env.initPayload(), message.payload, encoder);

  auto segments = owner->builder.getSegmentsForOutput();
  if (segments.size() > std::numeric_limits<std::uint16_t>::max()) {
    throw Failure(Errc::invalid_argument, "message needs " + std::to_string(segments.size()) +
                                              " segments, more than the framing can count");
  }
  std::memcpy(owner->header.data(), kMagic.data(), kMagic.size());
  store_u16(owner->header.data() + 4, kFramingVersion);
  store_u16(owner->header.data() + 6, static_cast<std::uint16_t>(segments.size()));

  EncodedFrames out;
  out.frames.reserve(segments.size() + 1);
  out.frames.emplace_back(owner->header.data(), owner->header.size());
  for (auto seg : segments) {
    out.frames.emplace_back(reinterpret_cast<const std::byte*>(seg.begin()),
                            seg.size() * kWordBytes);
  }
  out.owner = std::move(owner);
  return out;
}

Expected<Message> decode(std::vector<zmq::message_t> frames, const WireLimits& limits) {
  try {
    return decode_frames(std::move(frames), limits);
  } catch (const DecodeError& e) {
    return e.error;
  } catch (const kj::Exception& e) {
    return malformed(std::string("invalid Cap'n Proto data: ") + e.getDescription().cStr());
  } catch (const std::bad_alloc&) {
    return malformed("message too large to allocate");
  } catch (const std::exception& e) {
    return malformed(e.what());
  }
}

}  // namespace flotilla
