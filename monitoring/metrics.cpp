#include "monitoring/metrics.hpp"

#include <prometheus/text_serializer.h>

namespace flotilla::monitoring {

RegistryPtr make_registry() { return std::make_shared<prometheus::Registry>(); }

std::string serialize(const prometheus::Registry& registry) {
  return prometheus::TextSerializer{}.Serialize(registry.Collect());
}

}  // namespace flotilla::monitoring
