// A hostile peer for the soak (tests/slow/soak.sh): connects to an aggregator again and again
// under a new routing id each time and sends what no client would: random bytes, empty and
// truncated frames, many frames, a frame of 1 MiB of noise, headers that claim huge segment
// counts. It never reads what it is answered. Runs until SIGTERM, then prints what it sent.
//   hostile_peer --connect tcp://127.0.0.1:5555 [--interval-ms 50] [--seed 1]
#include <zmq.hpp>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {
std::atomic<bool> stop{false};
void on_signal(int) { stop = true; }
}  // namespace

int main(int argc, char** argv) {
  std::string connect;
  int interval_ms = 50;
  unsigned seed = 1;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--connect") connect = argv[i + 1];
    else if (a == "--interval-ms") interval_ms = std::stoi(argv[i + 1]);
    else if (a == "--seed") seed = static_cast<unsigned>(std::stoul(argv[i + 1]));
  }
  if (connect.empty()) {
    std::fprintf(stderr, "usage: hostile_peer --connect ENDPOINT [--interval-ms N] [--seed S]\n");
    return 2;
  }
  std::signal(SIGTERM, on_signal);
  std::signal(SIGINT, on_signal);
  std::mt19937 rng(seed);
  const auto noise = [&](std::size_t n) {
    std::string s(n, '\0');
    for (auto& c : s) c = static_cast<char>(rng());
    return s;
  };
  zmq::context_t ctx;
  std::uint64_t connections = 0, messages = 0, bytes = 0;
  while (!stop) {
    zmq::socket_t s(ctx, zmq::socket_type::dealer);
    s.set(zmq::sockopt::routing_id, "hostile-" + std::to_string(connections++));
    s.set(zmq::sockopt::linger, 0);
    s.set(zmq::sockopt::sndhwm, 64);
    s.connect(connect);
    std::vector<std::vector<std::string>> batch;
    batch.push_back({noise(1 + rng() % 200)});                          // random bytes
    batch.push_back({""});                                              // an empty frame
    batch.push_back({noise(3)});                                        // shorter than a header
    batch.push_back({noise(16), noise(8), noise(1 + rng() % 64)});      // several frames
    std::string header(8, '\0');                                        // a Cap'n Proto header
    const std::uint32_t segments = 0xFFFFFFF0u, words = 0x7FFFFFFFu;    // claiming the world
    std::memcpy(header.data(), &segments, 4);
    std::memcpy(header.data() + 4, &words, 4);
    batch.push_back({header + noise(8)});
    if (rng() % 8 == 0) batch.push_back({noise(1 << 20)});              // 1 MiB of noise
    std::vector<std::string> many(100, "x");                            // many frames
    batch.push_back(many);
    for (const auto& message : batch) {
      for (std::size_t i = 0; i < message.size(); ++i) {
        const auto flags = (i + 1 < message.size() ? zmq::send_flags::sndmore : zmq::send_flags::none) |
                           zmq::send_flags::dontwait;
        if (!s.send(zmq::buffer(message[i]), flags)) break;
        bytes += message[i].size();
      }
      ++messages;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(interval_ms));
  }
  std::printf("hostile_peer: %llu connections, %llu messages, %llu bytes\n",
              static_cast<unsigned long long>(connections), static_cast<unsigned long long>(messages),
              static_cast<unsigned long long>(bytes));
  return 0;
}
