#include "runtime/storage/durable.hpp"
#include "runtime/storage/safetensors.hpp"

#include "temp_dir.hpp"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <filesystem>
#include <fstream>

using namespace flotilla;

namespace {

/// A fresh directory for the test, removed after it.
struct TempDir : TestDir {
  TempDir() : TestDir("flotilla-safetensors") {}
};

std::span<const std::byte> as_bytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

/// A file as Hugging Face's writer lays it out: the length, a JSON header (keys sorted, a
/// "__metadata__" of strings, padded with spaces to 8 bytes), then the data.
std::string hf_file(const std::string& json, const std::string& data) {
  std::string header = json;
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

std::string floats(std::initializer_list<float> values) {
  std::string s(values.size() * 4, '\0');
  std::memcpy(s.data(), std::data(values), s.size());
  return s;
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes().equals(b.sizes()) &&
         (a.nbytes() == 0 || std::memcmp(a.contiguous().data_ptr(), b.contiguous().data_ptr(), a.nbytes()) == 0);
}

}  // namespace

TEST(Safetensors, EveryDtypeRoundTripsBitExactlyInOrderWithMetadata) {
  torch::manual_seed(3);
  TensorList tensors = {
      {"model.layers.0.mlp.up_proj.weight", torch::randn({3, 5})},
      {"half", torch::randn({4}).to(torch::kHalf)},
      {"brain", torch::randn({2, 2}).to(torch::kBFloat16)},
      {"double", torch::randn({2}, torch::kDouble)},
      {"steps", torch::tensor({7, -1}, torch::kLong)},
      {"int", torch::tensor({1, 2, 3}, torch::kInt)},
      {"bytes", torch::tensor({250, 3}, torch::kByte)},
      {"mask", torch::tensor({true, false})},
      {"scalar", torch::tensor(2.5f)},
      {"empty", torch::empty({0, 4})},
      {"a.strided.view", torch::arange(12, torch::kFloat).reshape({3, 4}).t()},
  };
  // A NaN and an infinity keep their exact bits.
  tensors[0].tensor[0][0] = std::numeric_limits<float>::quiet_NaN();
  tensors[0].tensor[1][1] = -std::numeric_limits<float>::infinity();
  const TempDir tmp;
  const std::filesystem::path& dir = tmp;
  ASSERT_TRUE(write_safetensors(dir / "m.safetensors", tensors, {{"format", "pt"}, {"version", "12"}}));
  for (const bool mapped : {true, false}) {
    Expected<Safetensors> read = Error{};
    std::string bytes;
    if (mapped) {
      read = read_safetensors(dir / "m.safetensors");
    } else {
      bytes = read_file(dir / "m.safetensors", 1 << 20).value();
      read = decode_safetensors(as_bytes(bytes), "m");
    }
    ASSERT_TRUE(read) << read.error().message;
    ASSERT_EQ(read->tensors.size(), tensors.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      EXPECT_EQ(read->tensors[i].name, tensors[i].name);
      EXPECT_TRUE(bit_equal(read->tensors[i].tensor, tensors[i].tensor)) << tensors[i].name;
    }
    EXPECT_EQ(read->metadata.at("format"), "pt");
    EXPECT_EQ(read->metadata.at("version"), "12");
  }
}

TEST(Safetensors, AMappedTensorChangedInPlaceLeavesTheFileAlone) {
  const TempDir tmp;
  const std::filesystem::path& dir = tmp;
  ASSERT_TRUE(write_safetensors(dir / "m.safetensors", {{"w", torch::ones({4})}}));
  {
    auto read = read_safetensors(dir / "m.safetensors");
    ASSERT_TRUE(read);
    read->tensors[0].tensor.mul_(3);
    EXPECT_EQ(read->tensors[0].tensor[0].item<float>(), 3.0f);
  }
  auto again = read_safetensors(dir / "m.safetensors");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->tensors[0].tensor[2].item<float>(), 1.0f);
}

TEST(Safetensors, AFileInHuggingFacesLayoutLoadsByNameInDataOrder) {
  // Keys sorted by name in the header, data in another order, as a checkpoint writer may.
  const auto file = hf_file(
      R"({"__metadata__":{"format":"pt"},)"
      R"("lm_head.weight":{"dtype":"F32","shape":[1,2],"data_offsets":[8,16]},)"
      R"("model.embed_tokens.weight":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
      R"("model.norm.weight":{"dtype":"BF16","shape":[2],"data_offsets":[16,20]}})",
      floats({1, 2, 3, 4}) + std::string("\x80\x3f\x00\x40", 4));  // bf16 1.0, 2.0
  auto read = decode_safetensors(as_bytes(file), "hf.safetensors");
  ASSERT_TRUE(read) << read.error().message;
  ASSERT_EQ(read->tensors.size(), 3u);
  EXPECT_EQ(read->tensors[0].name, "model.embed_tokens.weight");
  EXPECT_EQ(read->tensors[1].name, "lm_head.weight");
  EXPECT_TRUE(torch::equal(read->tensors[1].tensor, torch::tensor({{3.0f, 4.0f}})));
  EXPECT_EQ(read->tensors[2].tensor.scalar_type(), torch::kBFloat16);
  EXPECT_TRUE(torch::equal(read->tensors[2].tensor.to(torch::kFloat), torch::tensor({1.0f, 2.0f})));
  EXPECT_EQ(read->metadata.at("format"), "pt");
}

TEST(Safetensors, BrokenFilesAreRefusedNamingTheProblem) {
  const auto good_json = std::string(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})");
  const auto good = hf_file(good_json, floats({1, 2}));
  ASSERT_TRUE(decode_safetensors(as_bytes(good), "f"));
  const auto refused = [](const std::string& bytes) {
    auto r = decode_safetensors(as_bytes(bytes), "f.safetensors");
    EXPECT_FALSE(r);
    if (r) return std::string();
    EXPECT_EQ(r.error().code, Errc::malformed);
    EXPECT_NE(r.error().message.find("f.safetensors"), std::string::npos) << r.error().message;
    return r.error().message;
  };
  EXPECT_NE(refused(good.substr(0, 5)).find("truncated"), std::string::npos);
  EXPECT_NE(refused(good.substr(0, 20)).find("truncated"), std::string::npos);
  // The data cut short: the tensor's range lies past the end.
  EXPECT_NE(refused(good.substr(0, good.size() - 1)).find("outside"), std::string::npos);
  // A header length of 2^62: refused before anything is read or allocated.
  std::string huge = good;
  const std::uint64_t lie = 1ull << 62;
  std::memcpy(huge.data(), &lie, 8);
  EXPECT_NE(refused(huge).find("limit"), std::string::npos);
  EXPECT_NE(refused(hf_file(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,80]}})",
                            floats({1, 2}))).find("outside"), std::string::npos);
  // Offsets that disagree with the shape: a misshapen tensor.
  EXPECT_NE(refused(hf_file(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})",
                            floats({1, 2}))).find("needs 12"), std::string::npos);
  EXPECT_NE(refused(hf_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                            R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                            floats({1, 2}))).find("overlap"), std::string::npos);
  // A shape whose byte count overflows 64 bits.
  EXPECT_NE(refused(hf_file(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})",
                            floats({1, 2}))).find("overflows"), std::string::npos);
  // No bytes at all, but sizes whose strides overflow: refused, not left to LibTorch to throw.
  EXPECT_NE(refused(hf_file(R"({"w":{"dtype":"F32","shape":[0,4611686018427387904,4],"data_offsets":[0,0]}})",
                            "")).find("overflows"), std::string::npos);
  EXPECT_NE(refused(hf_file(R"({"w":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}})",
                            floats({1, 2}))).find("C64"), std::string::npos);
  EXPECT_NE(refused(hf_file("[1,2]", "")).find("object"), std::string::npos);
  EXPECT_NE(refused(hf_file("{\"w\":", "")).find("JSON"), std::string::npos);
  EXPECT_NE(refused(hf_file(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})",
                            floats({1, 2}))).find("count"), std::string::npos);
  // A tensor without a name (found by reviewing the fuzz target: read, it could not be written).
  EXPECT_NE(refused(hf_file(R"({"":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}})", ""))
                .find("empty name"), std::string::npos);
}

TEST(Safetensors, TensorsOfNoBytesKeepTheOrderTheyWereWrittenIn) {
  // They share their offset with the next tensor, so the data's order cannot say; the header's
  // must (it was read as a std::map: "z" and "a" came back as a, z).
  const TensorList written = {{"z", at::zeros({0}, at::kFloat)},
                              {"a", at::zeros({2, 0}, at::kByte)},
                              {"m", at::ones({2}, at::kFloat)},
                              {"b", at::zeros({0}, at::kLong)}};
  auto bytes = encode_safetensors(written);
  ASSERT_TRUE(bytes) << bytes.error().message;
  auto read = decode_safetensors(as_bytes(*bytes), "f");
  ASSERT_TRUE(read) << read.error().message;
  ASSERT_EQ(read->tensors.size(), written.size());
  for (std::size_t i = 0; i < written.size(); ++i) {
    EXPECT_EQ(read->tensors[i].name, written[i].name) << i;
    EXPECT_TRUE(bit_equal(read->tensors[i].tensor, written[i].tensor)) << written[i].name;
  }
}

TEST(Safetensors, AMissingFileAndUnwritableTensorsAreClearErrors) {
  const TempDir tmp;
  const std::filesystem::path& dir = tmp;
  auto missing = read_safetensors(dir / "nope.safetensors");
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.error().code, Errc::io);
  EXPECT_NE(missing.error().message.find("nope.safetensors"), std::string::npos);
  EXPECT_FALSE(encode_safetensors({{"a", torch::ones({1})}, {"a", torch::ones({1})}}));
  EXPECT_FALSE(encode_safetensors({{"c", torch::ones({1}, torch::kComplexFloat)}}));
}

TEST(DurableFile, ReplacesTheOldContentWholeAndLeavesNoTemporaryBehind) {
  const TempDir tmp;
  const std::filesystem::path& dir = tmp;
  ASSERT_TRUE(write_file_durably(dir / "state.json", std::string_view("old")));
  ASSERT_TRUE(write_file_durably(dir / "state.json", std::string_view("new content")));
  EXPECT_EQ(read_file(dir / "state.json", 100).value(), "new content");
  std::size_t files = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(dir)) ++files;
  EXPECT_EQ(files, 1u);
  auto too_big = read_file(dir / "state.json", 3);
  ASSERT_FALSE(too_big);
  EXPECT_NE(too_big.error().message.find("more than"), std::string::npos);
  EXPECT_FALSE(write_file_durably(dir / "no-such-dir" / "x", std::string_view("x")));
}
