/// How fast one large update crosses each transport, next to memcpy of the same bytes.
///
/// Usage: transport_bench [--bytes N] [--transport tcp|ipc|inproc|all] [--repeat R]
/// Prints one line per transport, e.g.
///   transport tcp bytes=1073741824 seconds=0.61 GBps=1.76
/// and, with --transport all, the codec alone (encode + decode, no socket).
/// timed from send() until the receiver's handler holds the decoded message (best of R).
#include "runtime/transport.hpp"

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
};

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "transport_bench: %s\nusage: transport_bench [--bytes N] "
               "[--transport tcp|ipc|inproc|all] [--repeat R]\n",
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
      if (value != "tcp" && value != "ipc" && value != "inproc" && value != "all") {
        usage(("unknown transport " + value).c_str());
      }
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

/// Best seconds over `repeat` sends of `update`, or a negative value on failure.
double run_transport(const std::string& kind, const flotilla::Message& update,
                     std::uint64_t bytes, int repeat) {
  std::string address;
  std::string ipc_dir;
  if (kind == "tcp") {
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
  });
  if (!server) {
    std::fprintf(stderr, "%s: %s\n", kind.c_str(), server.error().message.c_str());
    return -1;
  }
  auto client = flotilla::Endpoint::connect((*server)->address(), "bench-client",
                                            [](flotilla::Inbound) {});
  if (!client) {
    std::fprintf(stderr, "%s: %s\n", kind.c_str(), client.error().message.c_str());
    return -1;
  }

  // Warm up the connection so the timing excludes the handshake.
  flotilla::Message ping;
  ping.payload = flotilla::Heartbeat{};
  (*client)->send("", ping);
  if (!wait_for(arrivals, 1)) return -1;

  double best = -1;
  for (int r = 0; r < repeat; ++r) {
    const auto start = Clock::now();
    (*client)->send("", update);
    if (!wait_for(arrivals, 2 + r)) {
      std::fprintf(stderr, "%s: timed out\n", kind.c_str());
      return -1;
    }
    std::lock_guard lock(arrivals.mutex);
    if (arrivals.error || arrivals.last_tensor_bytes != bytes) {
      std::fprintf(stderr, "%s: received %llu bytes, %s\n", kind.c_str(),
                   static_cast<unsigned long long>(arrivals.last_tensor_bytes),
                   arrivals.error_text.c_str());
      return -1;
    }
    const double s = std::chrono::duration<double>(arrivals.last - start).count();
    if (best < 0 || s < best) best = s;
  }
  (*client)->close();
  (*server)->close();
  if (!ipc_dir.empty()) std::filesystem::remove_all(ipc_dir);
  return best;
}

/// Best seconds to encode and decode `update` with no socket in between: the codec's share.
double codec_seconds(const flotilla::Message& update, int repeat) {
  double best = -1;
  for (int r = 0; r < repeat; ++r) {
    const auto start = Clock::now();
    auto encoded = flotilla::encode(update);
    std::vector<zmq::message_t> frames;
    for (auto f : encoded.frames) {
      frames.emplace_back(const_cast<std::byte*>(f.data()), f.size(), [](void*, void*) {});
    }
    auto decoded = flotilla::decode(std::move(frames));
    const double s = std::chrono::duration<double>(Clock::now() - start).count();
    if (!decoded) return -1;
    if (best < 0 || s < best) best = s;
  }
  return best;
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
  int failures = 0;
  for (const auto& kind : kinds) {
    const double s = run_transport(kind, update, bytes, o.repeat);
    if (s < 0) {
      ++failures;
      continue;
    }
    std::printf("transport %s bytes=%llu seconds=%.3f GBps=%.2f\n", kind.c_str(),
                static_cast<unsigned long long>(bytes), s, static_cast<double>(bytes) / s / 1e9);
    std::fflush(stdout);
  }
  if (o.transport == "all") {
    const double c = codec_seconds(update, o.repeat);
    std::printf("codec bytes=%llu seconds=%.3f GBps=%.2f\n", static_cast<unsigned long long>(bytes),
                c, static_cast<double>(bytes) / c / 1e9);
  }
  const double m = memcpy_seconds(tensor, o.repeat);
  std::printf("memcpy GBps=%.2f\n", static_cast<double>(bytes) / m / 1e9);
  return failures == 0 ? 0 : 1;
}
