// Writes the fuzz targets' seed inputs (valid examples the fuzzer mutates) under DIR/NAME/:
// every payload kind as the wire carries it, tensor fields in tensor_fuzz.cpp's layout, and
// safetensors files. The kept corpus in tests/fuzz/corpus/ started from these; the config
// target's seeds are the example configs, the SentencePiece target's a model spm_train wrote
// (docs/fuzzing.md). Usage: fuzz_seeds DIR
#include "fuzz.hpp"

#include "runtime/protocol/wire.hpp"
#include "runtime/storage/safetensors.hpp"

#include <ATen/ATen.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace {

namespace fs = std::filesystem;
using namespace flotilla;

void write(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::create_directories(dir);
  std::ofstream(dir / ("seed-" + name), std::ios::binary) << bytes;
}

TensorList some_tensors() {
  return {{"fc.weight", at::arange(12, at::kFloat).reshape({3, 4})},
          {"fc.bias", at::ones({3}, at::kBFloat16)},
          {"steps", at::tensor({7}, at::kLong)},
          {"mask", at::zeros({2, 0}, at::kByte)}};
}

void envelope_seeds(const fs::path& dir) {
  auto with = [](Payload p) {
    Message m;
    m.run_id = "run-1";
    m.sender = "client-3";
    m.message_id = 42;
    m.reply_to = 41;
    m.payload = std::move(p);
    return m;
  };
  ClientStats stats{"phone", 3, 1, 2.5, 640, 1 << 20, 1 << 21, 4096};
  Task task{7, 6, some_tensors(), {}, true, {"lora_B"}};
  Update update{7, 6, 120, {{"loss", 0.5}, {"accuracy", 0.9}}, some_tensors(), true, stats};
  const std::vector<std::pair<std::string, Message>> messages = {
      {"hello", with(Hello{Role::client, 3, {"cuda:0", 2.0F, 1 << 30}, 600})},
      {"welcome", with(Welcome{"run-1", 6})},
      {"task", with(task)},
      {"update", with(update)},
      {"evaluation-request", with(EvaluationRequest{7, 6, some_tensors()})},
      {"evaluation-result", with(EvaluationResult{7, 6, 1000, 0.7, 0.8, {{"perplexity", 2.0}}})},
      {"heartbeat", with(Heartbeat{6, true, stats})},
      {"shutdown", with(Shutdown{"run finished"})},
      {"error", with(ErrorReply{WireErrc::not_registered, "say hello first"})},
      {"admin-command", with(AdminCommand{"reload", {"aggregation"}})},
      {"admin-reply", with(AdminReply{true, "reloaded"})},
  };
  for (const auto& [name, m] : messages) write(dir, name, fuzz::input_of(encode(m).frames));
  // A tensor large enough to travel as its own segment (more than one segment frame).
  write(dir, "update-segments",
        fuzz::input_of(encode(with(Update{1, 0, 10, {}, {{"w", at::ones({1100}, at::kFloat)}}, false, {}})).frames));
}

/// tensor_fuzz.cpp's layout: kind, count, then per tensor name, dtype, shape, chunks.
struct TensorSeed {
  std::string out;
  void u8(unsigned v) { out.push_back(static_cast<char>(v)); }
  void u16(unsigned v) { u8(v & 0xff); u8(v >> 8); }
  void tensor(const std::string& name, unsigned dtype, std::vector<unsigned> shape,
              std::vector<std::string> chunks) {
    u8(name.size());
    out += name;
    u8(dtype);
    u8(shape.size());
    for (auto d : shape) u8(d);
    u8(chunks.size());
    for (const auto& c : chunks) {
      u16(c.size());
      out += c;
    }
  }
};

void tensor_seeds(const fs::path& dir) {
  TensorSeed a;  // an update: f32 [2, 3] in one chunk, bf16 [4] in two
  a.u8(0);
  a.u8(2);
  a.tensor("w", 0, {2, 3}, {std::string(24, '\x01')});
  a.tensor("b", 2, {4}, {std::string(3, '\x3f'), std::string(5, '\x80')});
  write(dir, "update", a.out);
  TensorSeed b;  // a task: an i64 scalar, an empty u8 [0, 5], an f64 [1, 1, 2] in three chunks
  b.u8(1);
  b.u8(3);
  b.tensor("step", 3, {}, {std::string(8, '\x02')});
  b.tensor("none", 6, {0, 5}, {});
  b.tensor("x", 4, {1, 1, 2}, {std::string(8, 'a'), std::string(0, 'b'), std::string(8, 'c')});
  write(dir, "task", b.out);
}

void safetensors_seeds(const fs::path& dir) {
  write(dir, "model", encode_safetensors(some_tensors(), {{"format", "pt"}}).value());
  write(dir, "empty", encode_safetensors({}).value());
  write(dir, "int", encode_safetensors({{"ids", at::arange(5, at::kInt)},
                                        {"flags", at::ones({2, 2}, at::kBool)},
                                        {"h", at::ones({3}, at::kHalf)}}).value());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s DIR\n", argv[0]);
    return 2;
  }
  const fs::path dir = argv[1];
  envelope_seeds(dir / "envelope");
  tensor_seeds(dir / "tensor");
  safetensors_seeds(dir / "safetensors");
  std::printf("seeds written under %s\n", dir.c_str());
  return 0;
}
