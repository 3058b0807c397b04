#pragma once
/// Schedules that never wait for the slowest client. Up to max-concurrency clients train at
/// once; a client gets new work as soon as it returns an update.
///  - async (FedAsync, Xie et al. 2019): every update is mixed into the model on arrival,
///    w ← w + α·s(τ)·(w_method − w), where w_method is what the aggregation method makes of
///    the one update (the update itself, for fedavg) and τ its staleness in versions.
///  - buffered (FedBuff, Nguyen et al. 2022): clients send deltas against the version they
///    trained from; the method folds K of them (each rebased onto the current model, weighted
///    by examples and optionally s(τ)), then w ← w + η_g·(w_method − w).
/// Updates based more than max-staleness versions back are dropped and counted.
#include "runtime/server/schedule.hpp"

#include <map>
#include <unordered_map>

namespace flotilla {

class AsyncSchedule final : public Schedule {
 public:
  /// Errc::invalid_config if `aggregation` declares it cannot work under this schedule.
  [[nodiscard]] static Expected<void> supports(const ScheduleOptions& options,
                                               const Aggregation& aggregation);
  /// The same from what a method declares (`name` for the message).
  [[nodiscard]] static Expected<void> supports(const ScheduleOptions& options,
                                               const AggregationTraits& traits,
                                               const std::string& name);

  AsyncSchedule(ScheduleOptions options, TensorList initial_model,
                std::unique_ptr<Aggregation> aggregation, const Clock& clock, std::string run_id);

  [[nodiscard]] std::uint64_t planned() const override { return options_.versions; }
  [[nodiscard]] std::string describe() const override;

 protected:
  [[nodiscard]] std::vector<Send> handle_update(const std::string& peer, const Update& update) override;
  void start(std::vector<Send>& out) override;
  void on_client_ready(const std::string& peer, std::vector<Send>& out) override;
  void on_client_restarted(const std::string& peer, std::vector<Send>& out) override;
  void on_client_left(const std::string& peer, std::vector<Send>& out) override;
  [[nodiscard]] bool owes_update(const std::string& peer) const override {
    return tasks_.contains(peer);
  }
  [[nodiscard]] Expected<void> accepts(const AggregationTraits& traits,
                                       const std::string& name) const override {
    return supports(options_, traits, name);
  }
  void tick_running(std::vector<Send>& out) override;
  /// Versions produced, the next task's number; only with nothing folded in.
  void save_position(ScheduleSnapshot& snapshot) const override;
  /// Task numbers continue well past any handed out after the checkpoint (those were not
  /// journaled): an answer to a task of the killed aggregator never matches a new one.
  void restore_position(const ScheduleSnapshot& snapshot) override {
    next_seq_ = snapshot.next_task + kResumeTaskGap;
  }
  static constexpr std::uint64_t kResumeTaskGap = 1ull << 32;
  void replay(const JournalEntry& entry) override;

 private:
  /// Folds an accepted (validated) update in and produces a version if that completes one:
  /// every update under async, every buffer-size under buffered. Also what a replay does.
  void apply(UpdateAccepted accepted, const TensorList& tensors, std::vector<Send>& out);
  struct Held {
    std::uint64_t seq = 0;
    std::uint64_t base_version = 0;
    Clock::time_point sent_at;
  };
  /// Gives tasks to idle live clients (as the Selection picks them) until max-concurrency train.
  void hand_out(std::vector<Send>& out);
  /// Produces a version from what the method folded, moving the model by `factor` towards it.
  void step(double factor, std::vector<Send>& out);
  /// The version step() makes, without its containment.
  void make_version(Label what, double factor, std::vector<Send>& out);
  /// `delta` added to the current model, tensor by tensor (a delta on its own is not a model).
  [[nodiscard]] Expected<TensorList> rebase(const TensorList& delta) const;
  void after_update(std::vector<Send>& out);

  /// Live clients holding no task, in a vector a Selection reads without a copy; O(1) insert
  /// and erase (the last element moves into the gap), so handing out one task to a fleet of a
  /// million costs no more than to a fleet of ten.
  class Idle {
   public:
    void insert(const std::string& peer);
    void erase(const std::string& peer);
    [[nodiscard]] const std::vector<std::string>& peers() const { return peers_; }

   private:
    std::vector<std::string> peers_;
    std::unordered_map<std::string, std::size_t> position_;
  };
  /// The task of `peer` is over (answered, lost): it may be given work again if live.
  void task_over(const std::string& peer);

  std::map<std::string, Held> tasks_;
  Idle idle_;
  std::uint64_t next_seq_ = 1;
  /// Tasks lost at their deadline since the last accepted update: a run where nothing comes
  /// back any more fails instead of handing out tasks for ever.
  std::uint64_t lost_in_a_row_ = 0;
};

}  // namespace flotilla
