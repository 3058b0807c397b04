// A minimal Flotilla aggregation plugin, as a user would write one: "uniform-mean", the plain
// (unweighted) mean of the clients' updates, so that every client counts the same however
// much data it holds. Build it out of tree against the installed header (see README.md here).
//
// A plugin implements flotilla::sdk::Aggregator (flotilla/plugin.hpp, header-only, compiled
// into the plugin: only the C ABI of flotilla/plugin.h crosses into the host):
//   check     is this update acceptable? (names and shapes; no tensor data is read)
//   accept    fold one update in (called only after check accepted it)
//   finalize  emit the new values of the tensors that change (the host keeps the rest)
//   discard   forget this version's updates (a failed round)
// Exceptions become error codes with their message: sdk::Rejected for an update the method
// does not take, sdk::Invalid for a bad option.
#include <flotilla/plugin.hpp>

#include <string>
#include <vector>

namespace {

using namespace flotilla::sdk;

class UniformMean final : public Aggregator {
 public:
  static constexpr bool kPerClient = false;  // every client gets the same global model

  UniformMean(const Host& host, const Options& options, const NamedTensors& global)
      : host_(host), min_updates_(options.integer("min-updates", 1)) {
    if (min_updates_ < 1) throw Invalid("option 'min-updates' must be >= 1");
    for (const auto& t : global) shapes_.push_back({t.name, t.tensor});
  }

  void check(const NamedTensors& update, const flotilla_update_info&) override {
    if (update.size() != shapes_.size()) {
      throw Rejected("expected " + std::to_string(shapes_.size()) + " tensors, got " +
                     std::to_string(update.size()));
    }
    for (std::size_t i = 0; i < update.size(); ++i) {
      if (update[i].name != shapes_[i].name ||
          !update[i].tensor.sizes().equals(shapes_[i].tensor.sizes())) {
        throw Rejected("tensor " + std::to_string(i) + " '" + update[i].name +
                       "' does not match the global model's '" + shapes_[i].name + "'");
      }
    }
  }

  void accept(const NamedTensors& update, const flotilla_update_info&) override {
    // Updates arrive as borrowed CPU views: copy what is kept, on the configured device.
    for (std::size_t i = 0; i < update.size(); ++i) {
      auto t = update[i].tensor.to(host_.device(), at::kFloat);
      if (sums_.size() <= i) {
        sums_.push_back(t.clone());
      } else {
        sums_[i].add_(t);
      }
    }
    ++count_;
  }

  void finalize(flotilla_output* out) override {
    if (count_ < min_updates_) throw std::runtime_error("fewer updates than min-updates");
    for (std::size_t i = 0; i < sums_.size(); ++i) {
      host_.emit(out, shapes_[i].name, sums_[i].div_(count_).to(shapes_[i].tensor.scalar_type()));
    }
    host_.log(FLOTILLA_LOG_DEBUG, "averaged " + std::to_string(count_) + " updates");
    discard();
  }

  void discard() override {
    sums_.clear();
    count_ = 0;
  }

 private:
  Host host_;
  std::int64_t min_updates_;
  NamedTensors shapes_;  // names and shapes of the global model
  std::vector<at::Tensor> sums_;
  std::int64_t count_ = 0;
};

// Options are declared so that the host can check a run config's [aggregator.options].
const flotilla_option_spec kOptions[] = {
    {"min-updates", "int", "1", "finalize fails (the round fails) with fewer updates than this"}};

}  // namespace

// The exported entry point, flotilla_plugin_v1: name, version, description, options.
FLOTILLA_AGGREGATOR_PLUGIN(UniformMean, "uniform-mean", "1.0.0",
                           "Unweighted mean of the updates: every client counts the same", kOptions)
