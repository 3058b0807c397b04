// fedavg: weighted direct weight averaging (McMahan et al., 2017). The new value of every tensor
// the clients send is the mean of their values weighted by the clients' example counts, folded
// into one running sum as updates arrive (memory: one model copy, whatever the client count).
//
// Updates may carry all of the global model's tensors or any subset of them in the same order
// (e.g. only LoRA adapters); the first update of a version fixes the subset. Integer tensors
// (counters) take the latest update's value.
#include "common.hpp"
#include "flotilla/fold.hpp"

#include <string>
#include <vector>

namespace {

using flotilla::aggregators::UpdateLayout;
using flotilla::sdk::Host;
using flotilla::sdk::NamedTensors;
using flotilla::sdk::Options;

class FedAvg final : public flotilla::sdk::Aggregator {
 public:
  static constexpr bool kPerClient = false;

  FedAvg(const Host& host, const Options&, const NamedTensors& global)
      : host_(host), layout_(global) {}

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    layout_.check(update, info);
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    layout_.check(update, info);
    const bool init = sums_.empty();
    if (init) {
      layout_.fix(update);
      for (const auto& u : update) {
        const auto dtype = u.tensor.scalar_type();
        sums_.push_back(at::isFloatingType(dtype)
                            ? at::empty(u.tensor.sizes(), at::TensorOptions()
                                                              .dtype(flotilla::sdk::accumulator_type(dtype))
                                                              .device(host_.device()))
                            : at::Tensor());
      }
    }
    for (std::size_t i = 0; i < update.size(); ++i) {
      const auto src = update[i].tensor.to(host_.device()).contiguous();
      if (!at::isFloatingType(src.scalar_type())) {
        sums_[i] = src.clone();  // counters, indices: the latest value
        continue;
      }
      flotilla::sdk::fold(sums_[i], {src}, {info.weight}, init);
    }
    total_ += info.weight;
  }

  void finalize(flotilla_output* out) override {
    const auto& indices = layout_.indices();
    for (std::size_t i = 0; i < sums_.size(); ++i) {
      auto& sum = sums_[i];
      if (at::isFloatingType(sum.scalar_type())) sum.mul_(1.0 / total_);
      host_.emit(out, layout_.name(indices[i]), sum);
    }
    discard();
  }

  void discard() override {
    sums_.clear();
    layout_.reset();
    total_ = 0;
  }

 private:
  Host host_;
  UpdateLayout layout_;
  std::vector<at::Tensor> sums_;
  double total_ = 0;
};

const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedAvg, "fedavg", "1.0.0",
                           "Weighted direct weight averaging (FedAvg): the example-weighted mean "
                           "of the tensors the clients send",
                           kOptions)
