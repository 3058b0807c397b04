#include "runtime/base/error.hpp"

namespace flotilla {

const char* to_string(Errc code) noexcept {
  switch (code) {
    case Errc::invalid_config: return "invalid config";
    case Errc::io: return "I/O error";
    case Errc::protocol_version: return "protocol version mismatch";
    case Errc::malformed: return "malformed message";
    case Errc::rejected: return "rejected";
    case Errc::unreachable: return "unreachable";
    case Errc::address_in_use: return "address in use";
    case Errc::invalid_argument: return "invalid argument";
    case Errc::internal: return "internal error";
  }
  return "unknown error";
}

}  // namespace flotilla
