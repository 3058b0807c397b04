// The SentencePiece model reader (a tokenizer.model that comes with a checkpoint): any bytes.
// Refused with Errc::invalid_config, or read; a model that reads encodes text to ids within its
// vocabulary and decodes any ids (in range or not) without failing.
#include "fuzz.hpp"

#include "runtime/ml/sentencepiece.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace flotilla;
  fuzz::quiet();
  auto model = SentencePieceTokenizer::parse({reinterpret_cast<const std::byte*>(data), size},
                                             "fuzz.model");
  if (!model) {
    fuzz::require(model.error().code == Errc::invalid_config,
                  "a bad model is Errc::invalid_config: " + model.error().message);
    return 0;
  }
  for (std::string_view text : {"", " ", "Hello, world!", "a  b\tc\n", "\xc3\xa9t\xc3\xa9 \xff\xfe"}) {
    const auto ids = model->encode(text);
    for (auto id : ids) {
      fuzz::require(id >= 0 && id < model->vocab_size(), "encoded ids are in the vocabulary");
    }
    (void)model->decode(ids);
  }
  (void)model->decode({-1, 0, model->vocab_size(), model->vocab_size() + 7});
  return 0;
}
