#pragma once
/// The process-wide ZeroMQ context every endpoint (and the ZAP handler) lives in.
#include <zmq.hpp>

namespace flotilla::detail {
[[nodiscard]] zmq::context_t& zmq_context();
}  // namespace flotilla::detail
