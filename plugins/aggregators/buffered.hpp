// Base of the robust rules (median, trimmed-mean, krum), which need every update of a version
// at once and so cannot fold updates into a running sum: each accepted update's floating
// tensors are copied to the device and kept until finalize.
//
// Memory therefore grows with the number of clients: one copy of the tensors updates carry per
// update of the version, plus, at finalize, working space for one tensor of every update at a
// time (stacked, sorted). Updates are unweighted: a client's example count cannot buy it
// influence over a robust statistic.
#pragma once

#include "common.hpp"
#include "flotilla/fold.hpp"  // accumulator_type

#include <cstdint>
#include <vector>

namespace flotilla::aggregators {

class BufferedAggregator : public sdk::Aggregator {
 public:
  static constexpr bool kPerClient = false;
  /// A robust statistic of one update is that update: needs a cohort per version.
  static constexpr std::uint32_t kFlags = FLOTILLA_AGG_NEEDS_COHORT;

  BufferedAggregator(const sdk::Host& host, const NamedTensors& global)
      : host_(host), layout_(global) {}

  void check(const NamedTensors& update, const flotilla_update_info& info) override {
    layout_.check(update, info);
  }

  void accept(const NamedTensors& update, const flotilla_update_info& info) override {
    layout_.fix(update);
    latest_.resize(update.size());
    std::vector<at::Tensor> kept(update.size());
    for (std::size_t i = 0; i < update.size(); ++i) {
      const auto& t = update[i].tensor;
      const auto copy = owned_copy(t, t.options().device(host_.device()));
      // Counters, indices: no statistic of them means anything; the latest value is kept.
      (at::isFloatingType(t.scalar_type()) ? kept[i] : latest_[i]) = copy;
    }
    updates_.push_back(std::move(kept));
    clients_.push_back(info.client_id);
  }

  void finalize(flotilla_output* out) override {
    AtExit reset{[this] { discard(); }};
    select();
    const auto& indices = layout_.indices();
    for (std::size_t p = 0; p < indices.size(); ++p) {
      const auto& ref = layout_.reference()[indices[p]].tensor;
      const auto value =
          at::isFloatingType(ref.scalar_type()) ? combine(p).to(ref.scalar_type()) : latest_[p];
      host_.emit(out, layout_.name(indices[p]), value);
    }
  }

  void discard() override {
    updates_.clear();
    clients_.clear();
    latest_.clear();
    layout_.reset();
  }

 protected:
  /// Called once at finalize before any combine(): checks that the rule can run on count()
  /// updates (throws if not) and picks updates (Krum).
  virtual void select() {}
  /// The new value of floating tensor `p` of this version's subset, from the buffered updates
  /// (in the accumulator dtype; cast to the model's by the caller).
  virtual at::Tensor combine(std::size_t p) = 0;

  [[nodiscard]] std::size_t count() const { return updates_.size(); }
  [[nodiscard]] std::uint32_t client(std::size_t k) const { return clients_[k]; }
  [[nodiscard]] const UpdateLayout& layout() const { return layout_; }
  [[nodiscard]] const sdk::Host& host() const { return host_; }

  /// Floating tensor `p` of updates `which` (all when empty) stacked along a new first
  /// dimension, in the accumulator dtype (float32, float64 for float64 tensors).
  [[nodiscard]] at::Tensor stacked(std::size_t p, const std::vector<std::size_t>& which = {}) const {
    std::vector<at::Tensor> values;
    if (which.empty()) {
      for (const auto& u : updates_) values.push_back(u[p]);
    } else {
      for (const auto k : which) values.push_back(updates_[k][p]);
    }
    const auto stack = at::stack(values);
    return stack.to(sdk::accumulator_type(stack.scalar_type()));
  }

 private:
  sdk::Host host_;
  UpdateLayout layout_;
  std::vector<std::vector<at::Tensor>> updates_;  ///< [update][tensor]; floating tensors only
  std::vector<std::uint32_t> clients_;
  std::vector<at::Tensor> latest_;                ///< integer tensors: the latest value
};

}  // namespace flotilla::aggregators
