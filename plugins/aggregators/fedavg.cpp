// fedavg: weighted direct weight averaging (McMahan et al., 2017). The new value of every tensor
// the clients send is the mean of their values weighted by the clients' example counts, folded
// into one running sum as updates arrive (memory: one model copy, whatever the client count).
//
// Updates may carry all of the global model's tensors or any subset of them in the same order
// (e.g. only LoRA adapters); the first update of a version fixes the subset. Integer tensors
// (counters) take the latest update's value.
#include "flotilla/fold.hpp"
#include "flotilla/plugin.hpp"

#include <string>
#include <vector>

namespace {

using flotilla::sdk::Host;
using flotilla::sdk::NamedTensors;
using flotilla::sdk::Options;
using flotilla::sdk::Rejected;

class FedAvg final : public flotilla::sdk::Aggregator {
 public:
  static constexpr bool kPerClient = false;

  FedAvg(const Host& host, const Options&, const NamedTensors& global) : host_(host) {
    for (const auto& t : global) {
      reference_.push_back({t.name, at::empty(t.tensor.sizes(),
                                              t.tensor.options().device(at::kMeta))});
    }
  }

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    if (!(info.weight > 0)) throw Rejected("update weight must be > 0");
    if (update.empty()) throw Rejected("update has no tensors");
    std::size_t r = 0;
    for (std::size_t i = 0; i < update.size(); ++i) {
      const auto& u = update[i];
      while (r < reference_.size() && reference_[r].name != u.name) ++r;
      if (r == reference_.size()) {
        throw Rejected("tensor " + std::to_string(i) + " '" + u.name +
                       "' is not in the global model (or out of order)");
      }
      const auto& ref = reference_[r].tensor;
      if (!ref.sizes().equals(u.tensor.sizes()) || ref.scalar_type() != u.tensor.scalar_type()) {
        throw Rejected("tensor '" + u.name + "': expected " + shape(ref) + ", got " + shape(u.tensor));
      }
      ++r;
    }
    if (!names_.empty()) {
      bool same = names_.size() == update.size();
      for (std::size_t i = 0; same && i < update.size(); ++i) same = names_[i] == update[i].name;
      if (!same) throw Rejected("update carries other tensors than this version's first update");
    }
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    check(update, info);
    const bool init = sums_.empty();
    if (init) {
      for (const auto& u : update) {
        names_.push_back(u.name);
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
        sums_[i] = src.clone();
        continue;
      }
      flotilla::sdk::fold(sums_[i], {src}, {info.weight}, init);
    }
    total_ += info.weight;
  }

  void finalize(flotilla_output* out) override {
    for (std::size_t i = 0; i < sums_.size(); ++i) {
      auto& sum = sums_[i];
      if (at::isFloatingType(sum.scalar_type())) sum.mul_(1.0 / total_);
      host_.emit(out, names_[i], sum);
    }
    discard();
  }

  void discard() override {
    sums_.clear();
    names_.clear();
    total_ = 0;
  }

 private:
  static std::string shape(const at::Tensor& t) {
    std::string s = std::string(c10::toString(t.scalar_type())) + " [";
    for (std::int64_t d = 0; d < t.dim(); ++d) s += (d ? ", " : "") + std::to_string(t.size(d));
    return s + "]";
  }

  Host host_;
  NamedTensors reference_;
  std::vector<std::string> names_;
  std::vector<at::Tensor> sums_;
  double total_ = 0;
};

const flotilla_option_spec kOptions[] = {{nullptr, nullptr, nullptr, nullptr}};

}  // namespace

FLOTILLA_AGGREGATOR_PLUGIN(FedAvg, "fedavg", "1.0.0",
                           "Weighted direct weight averaging (FedAvg): the example-weighted mean "
                           "of the tensors the clients send",
                           kOptions)
