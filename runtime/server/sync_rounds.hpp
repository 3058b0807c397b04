#pragma once
/// Synchronous federated rounds (FedAvg-style): sample clients, wait for their updates until
/// every sampled client replied, K of them did (over-selection), or the deadline passed, then
/// produce one version from them.
#include "runtime/server/schedule.hpp"

#include <set>

namespace flotilla {

class SyncRounds final : public Schedule {
 public:
  SyncRounds(ScheduleOptions options, TensorList initial_model,
             std::unique_ptr<Aggregation> aggregation, const Clock& clock, std::string run_id);

  [[nodiscard]] std::uint64_t round() const override { return round_; }
  [[nodiscard]] std::uint64_t planned() const override { return options_.rounds; }
  [[nodiscard]] std::string describe() const override;

 protected:
  [[nodiscard]] std::vector<Send> handle_update(const std::string& peer, const Update& update) override;
  void start(std::vector<Send>& out) override { start_round(out); }
  [[nodiscard]] bool owes_update(const std::string& peer) const override {
    return collecting_ && sampled_.contains(peer) && !replied_.contains(peer);
  }
  void tick_running(std::vector<Send>& out) override;
  /// A client (new, or back after a silence) while a round is open joins it if the round can
  /// use it: it samples every live client, or sampled fewer than it wanted.
  void on_client_ready(const std::string& peer, std::vector<Send>& out) override;
  /// A client whose process restarted: if it held this round's task and had not answered, it
  /// gets the task again (the old process took it along); else as on_client_ready.
  void on_client_restarted(const std::string& peer, std::vector<Send>& out) override;
  [[nodiscard]] bool at_safe_point() const override { return !collecting_; }
  /// Rounds closed (a round in progress is run again when resumed: its clients train it anew).
  void save_position(ScheduleSnapshot& snapshot) const override;
  void restore_position(const ScheduleSnapshot& snapshot) override { round_ = snapshot.step; }

 private:
  void start_round(std::vector<Send>& out);
  void fold_queued();
  /// `deadline`: closed because the deadline passed (not because enough updates came).
  void close_round(std::vector<Send>& out, bool deadline);
  /// Updates that close the round: K (clients-per-round) with over-selection, else all sampled.
  [[nodiscard]] std::size_t needed() const;

  std::uint64_t round_ = 0;
  bool collecting_ = false;
  Clock::time_point round_started_;
  std::set<std::string> sampled_;
  /// Clients the round means to have: ceil(K·(1+over-selection)), not capped at the live
  /// clients; 0 = every live client.
  std::size_t wanted_ = 0;
  /// Sampled clients that answered this round's task (accepted or refused): not set aside at
  /// the deadline for silence.
  std::set<std::string> answered_;
  std::set<std::string> replied_;
  std::uint32_t accepted_ = 0;
  /// Accepted updates waiting to be folded together (at most fold_batch, folded by the next
  /// tick at the latest).
  struct Queued {
    TensorList tensors;
    double weight = 0;
    std::uint32_t client_id = 0;
  };
  std::vector<Queued> fold_queue_;
};

}  // namespace flotilla
