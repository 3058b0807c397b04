// The config loader: any text as a run's TOML file. It is accepted or refused with
// Errc::invalid_config and a message; nothing else (no crash, no exception, no other error
// code). Parsing reads no files, so inputs are all there is.
#include "fuzz.hpp"

#include "runtime/setup/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace flotilla;
  fuzz::quiet();
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = parse_config(text, "fuzz.toml");
  if (!config) {
    fuzz::require(config.error().code == Errc::invalid_config,
                  "a bad config is Errc::invalid_config: " + config.error().message);
    fuzz::require(!config.error().message.empty(), "a refusal says why");
    return 0;
  }
  // What was accepted is accepted again, the same (parsing is deterministic and keeps no state).
  auto again = parse_config(text, "fuzz.toml");
  fuzz::require(again.has_value(), "an accepted config is accepted again");
  return 0;
}
