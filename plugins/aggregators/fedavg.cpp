// fedavg: weighted direct weight averaging (McMahan et al., 2017). The new value of every tensor
// the clients send is the mean of their values weighted by the clients' example counts, folded
// into one running sum as updates arrive (memory: one model copy, whatever the client count).
//
// Updates may carry all of the global model's tensors or any subset of them in the same order
// (e.g. only LoRA adapters); the first update of a version fixes the subset. Integer tensors
// (counters) take the latest update's value.
#include "common.hpp"
#include "flotilla/fold.hpp"

namespace {

using flotilla::aggregators::UpdateLayout;
using flotilla::sdk::Host;
using flotilla::sdk::NamedTensors;
using flotilla::sdk::Options;

class FedAvg final : public flotilla::sdk::Aggregator {
 public:
  static constexpr bool kPerClient = false;

  FedAvg(const Host& host, const Options&, const NamedTensors& global)
      : layout_(global), mean_(host) {}

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    layout_.check(update, info);
    mean_.check_same(update);
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    mean_.add(update, info.weight);
  }

  void finalize(flotilla_output* out) override { mean_.emit(out); }

  void discard() override { mean_.clear(); }

 private:
  UpdateLayout layout_;
  flotilla::sdk::WeightedMean mean_;
};

const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedAvg, "fedavg", "1.0.0",
                           "Weighted direct weight averaging (FedAvg): the example-weighted mean "
                           "of the tensors the clients send",
                           kOptions)
