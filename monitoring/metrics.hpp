#pragma once
/// The metrics registry every role is handed, and the HTTP endpoint that serves it.
#include <prometheus/registry.h>

#include <memory>
#include <string>

namespace flotilla::monitoring {

/// One registry per process; actors receive it (never a global) and add their families.
using RegistryPtr = std::shared_ptr<prometheus::Registry>;

[[nodiscard]] RegistryPtr make_registry();

/// The registry in Prometheus' text exposition format.
[[nodiscard]] std::string serialize(const prometheus::Registry& registry);

}  // namespace flotilla::monitoring
