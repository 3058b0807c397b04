/// How fast one large update crosses each transport, next to memcpy of the same bytes.
///
/// Usage: transport_bench [--bytes N] [--transport tcp|curve|ipc|inproc|all] [--repeat R]
///                       [--chunk-bytes N]
/// Prints one line per transport, e.g.
///   transport tcp bytes=1073741824 chunk=... first_s=.. first_GBps=.. best_s=0.61 GBps=1.76
/// and, with --transport all, the codec alone (encode + decode, no socket).
/// timed from send() until the receiver's handler holds the decoded message. Both the first
/// transfer (cold: every receive buffer freshly faulted in) and the best of R (steady state, as
/// for an aggregator receiving many updates) are printed; quote both.
/// --chunk-bytes N overrides WireLimits::chunk_bytes (to compare chunk sizes).
/// "curve" is tcp with CurveZMQ (security.mode = "curve"): what encryption costs (not in "all").
#include "runtime/net/transport.hpp"

#include <ATen/ATen.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <string>
#include <unistd.h>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Options {
  std::uint64_t bytes = 1ULL << 30;
  std::string transport = "all";
  int repeat = 3;
  std::uint64_t chunk_bytes = 0;  ///< 0: WireLimits' default
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "transport_bench: %s\nusage: transport_bench [--bytes N] "
               "[--transport tcp|curve|ipc|inproc|all] [--repeat R]\n",
               why);
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (i + 1 >= argc) usage(("missing value after " + arg).c_str());
    const std::string value = argv[++i];
    if (arg == "--bytes") {
      o.bytes = std::strtoull(value.c_str(), nullptr, 10);
      if (o.bytes < 4) usage("--bytes must be at least 4");
    } else if (arg == "--transport") {
      o.transport = value;
      if (value != "tcp" && value != "curve" && value != "ipc" && value != "inproc" && value != "all") {
        usage(("unknown transport " + value).c_str());
      }
    } else if (arg == "--chunk-bytes") {
      o.chunk_bytes = std::strtoull(value.c_str(), nullptr, 10);
    } else if (arg == "--repeat") {
      o.repeat = std::atoi(value.c_str());
      if (o.repeat < 1) usage("--repeat must be at least 1");
    } else {
      usage(("unknown option " + arg).c_str());
    }
  }
  return o;
}

/// What the receiving handler saw, guarded for the waiting main thread.
struct Arrivals {
  std::mutex mutex;
  std::condition_variable cv;
  int count = 0;
  Clock::time_point last;
  std::uint64_t last_tensor_bytes = 0;
  bool error = false;
  std::string error_text;
};

bool wait_for(Arrivals& a, int n) {
  std::unique_lock lock(a.mutex);
  return a.cv.wait_for(lock, std::chrono::seconds(120), [&] { return a.count >= n; });
}

struct Timing {
  double first = -1;  ///< the first transfer: nothing allocated for it yet (cold memory)
  double best = -1;   ///< best of all transfers (steady state: memory reused)
};

/// First and best seconds over `repeat` sends of `update`; negative values on failure.
Timing run_transport(const std::string& kind, const flotilla::Message& update,
                     std::uint64_t bytes, int repeat, flotilla::EndpointOptions options) {
  std::string address;
  std::string ipc_dir;
  if (kind == "curve") {
    // The client's key authorized as "bench-client" in a private directory.
    std::string tmpl = (std::filesystem::temp_directory_path() / "flotilla-bench-XXXXXX").string();
    ipc_dir = ::mkdtemp(tmpl.data());
    const auto client = flotilla::generate_curve_keypair().value();
    const auto server = flotilla::generate_curve_keypair().value();
    std::filesystem::create_directories(ipc_dir + "/authorized");
    if (!flotilla::write_curve_keypair(ipc_dir + "/authorized", "bench-client", client)) return {};
    options.curve_server = flotilla::CurveServer{
        server, flotilla::AuthorizedKeys::open(ipc_dir + "/authorized").value(), "bench"};
    options.curve_client = flotilla::CurveClient{client, server.public_key};
  }
  const auto bound_options = [&] {
    auto o = options;
    o.curve_client.reset();
    return o;
  }();
  const auto client_options = [&] {
    auto o = options;
    o.curve_server.reset();
    return o;
  }();
  if (kind == "tcp" || kind == "curve") {
    address = "tcp://127.0.0.1:*";
  } else if (kind == "ipc") {
    std::string tmpl = (std::filesystem::temp_directory_path() / "flotilla-bench-XXXXXX").string();
    ipc_dir = ::mkdtemp(tmpl.data());
    address = "ipc://" + ipc_dir + "/bench.sock";
  } else {
    address = "inproc://transport-bench";
  }

  Arrivals arrivals;
  auto server = flotilla::Endpoint::bind(address, [&](flotilla::Inbound in) {
    const auto now = Clock::now();
    std::uint64_t got = 0;
    std::string error;
    if (!in.message) {
      error = in.message.error().message;
    } else if (const auto* u = std::get_if<flotilla::Update>(&in.message->payload)) {
      got = flotilla::total_bytes(u->tensors);
    }
    std::lock_guard lock(arrivals.mutex);
    arrivals.last = now;
    arrivals.last_tensor_bytes = got;
    if (!error.empty()) {
      arrivals.error = true;
      arrivals.error_text = error;
    }
    ++arrivals.count;
    arrivals.cv.notify_all();
  }, bound_options);
  if (!server) {
    std::fprintf(stderr, "%s: %s\n", kind.c_str(), server.error().message.c_str());
    return {};
  }
  auto client = flotilla::Endpoint::connect((*server)->address(), "bench-client",
                                            [](flotilla::Inbound) {}, client_options);
  if (!client) {
    std::fprintf(stderr, "%s: %s\n", kind.c_str(), client.error().message.c_str());
    return {};
  }

  // Warm up the connection so the timing excludes the handshake.
  flotilla::Message ping;
  ping.payload = flotilla::Heartbeat{};
  (*client)->send("", ping);
  if (!wait_for(arrivals, 1)) return {};

  Timing t;
  for (int r = 0; r < repeat; ++r) {
    const auto start = Clock::now();
    (*client)->send("", update);
    if (!wait_for(arrivals, 2 + r)) {
      std::fprintf(stderr, "%s: timed out\n", kind.c_str());
      return {};
    }
    std::lock_guard lock(arrivals.mutex);
    if (arrivals.error || arrivals.last_tensor_bytes != bytes) {
      std::fprintf(stderr, "%s: received %llu bytes, %s\n", kind.c_str(),
                   static_cast<unsigned long long>(arrivals.last_tensor_bytes),
                   arrivals.error_text.c_str());
      return {};
    }
    const double s = std::chrono::duration<double>(arrivals.last - start).count();
    if (r == 0) t.first = s;
    if (t.best < 0 || s < t.best) t.best = s;
  }
  (*client)->close();
  (*server)->close();
  if (!ipc_dir.empty()) std::filesystem::remove_all(ipc_dir);
  return t;
}

/// Seconds to encode and decode `update` with no socket in between: the codec's share. The
/// frames are copied (untimed) into separately allocated messages first, as a socket would
/// hand them over; decoding frames that still point into the sender's tensor would be free.
Timing codec_seconds(const flotilla::Message& update, int repeat,
                     const flotilla::WireLimits& limits) {
  Timing t;
  for (int r = 0; r < repeat; ++r) {
    auto start = Clock::now();
    auto encoded = flotilla::encode(update, limits);
    double s = std::chrono::duration<double>(Clock::now() - start).count();
    std::vector<zmq::message_t> frames;
    for (auto f : encoded.frames) frames.emplace_back(f.data(), f.size());
    start = Clock::now();
    auto decoded = flotilla::decode(std::move(frames), limits);
    s += std::chrono::duration<double>(Clock::now() - start).count();
    if (!decoded) return {};
    if (r == 0) t.first = s;
    if (t.best < 0 || s < t.best) t.best = s;
  }
  return t;
}

double memcpy_seconds(const at::Tensor& src, int repeat) {
  std::vector<char> dst(src.nbytes(), 1);  // touched, so page faults are not timed
  double best = -1;
  for (int r = 0; r < repeat; ++r) {
    const auto start = Clock::now();
    std::memcpy(dst.data(), src.data_ptr(), src.nbytes());
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (best < 0 || s < best) best = s;
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  const Options o = parse(argc, argv);
  const std::uint64_t bytes = o.bytes / 4 * 4;
  const at::Tensor tensor = at::ones({static_cast<std::int64_t>(bytes / 4)}, at::kFloat);

  flotilla::Update u;
  u.round = 1;
  u.num_examples = 1;
  u.tensors = {{"weights", tensor}};
  flotilla::Message update;
  update.sender = "bench-client";
  update.payload = std::move(u);

  std::vector<std::string> kinds = {"tcp", "ipc", "inproc"};
  if (o.transport != "all") kinds = {o.transport};
  flotilla::EndpointOptions options;
  if (o.chunk_bytes > 0) options.limits.chunk_bytes = o.chunk_bytes;
  const auto print = [&](const char* what, const std::string& kind, const Timing& t) {
    const double b = static_cast<double>(bytes);
    std::printf("%s%s bytes=%llu chunk=%llu first_s=%.3f first_GBps=%.2f best_s=%.3f GBps=%.2f\n",
                what, kind.c_str(), static_cast<unsigned long long>(bytes),
                static_cast<unsigned long long>(options.limits.chunk_bytes), t.first,
                b / t.first / 1e9, t.best, b / t.best / 1e9);
    std::fflush(stdout);
  };
  int failures = 0;
  for (const auto& kind : kinds) {
    const Timing t = run_transport(kind, update, bytes, o.repeat, options);
    if (t.best < 0) {
      ++failures;
      continue;
    }
    print("transport ", kind, t);
  }
  if (o.transport == "all") {
    const Timing c = codec_seconds(update, o.repeat, options.limits);
    if (c.best < 0) {
      ++failures;
    } else {
      print("codec", "", c);
    }
  }
  const double m = memcpy_seconds(tensor, o.repeat);
  std::printf("memcpy GBps=%.2f\n", static_cast<double>(bytes) / m / 1e9);
  return failures == 0 ? 0 : 1;
}
