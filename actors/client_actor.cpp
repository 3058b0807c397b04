#include "actors/client_actor.hpp"

#include "runtime/ml/client_task.hpp"

#include <algorithm>
#include <chrono>
#include <thread>

namespace flotilla::actors {
namespace {

using Self = caf::stateful_actor<ClientState>;

double run_seconds(const ClientState& state) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - state.started).count();
}

/// Blocks for an emulated delay (the actor is detached: it owns its thread), at most as long as
/// the aggregator waits for a task (its deadline and a second): an update later than that is
/// dropped as late anyway, and a Pareto tail must not hold the client, or its shutdown, for hours.
void emulate(const ClientSetup& s, double seconds) {
  const auto& a = s.config.aggregator;
  const double cap = std::chrono::duration<double>(
                         a.schedule == ScheduleKind::sync ? a.round_deadline : a.task_deadline)
                         .count() + 1.0;
  seconds = std::min(seconds, cap);
  if (seconds > 0) std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
}

/// Whether the emulated device is online now; logs each change.
bool online(Self* self) {
  auto& st = self->state;
  auto& device = st.setup->device;
  if (!device) return true;
  const bool now = device->online_at(run_seconds(st));
  if (now == st.offline) {
    st.offline = !now;
    st.link->log()->info("emulated device {} (profile '{}')", now ? "back online" : "went offline",
                         device->profile().name);
  }
  return now;
}

void train(Self* self, const Message& m, const Task& task) {
  auto& s = *self->state.setup;
  auto& link = *self->state.link;
  if (!online(self)) {
    link.log()->debug("offline: task {} never reaches this device", task.round);
    return;
  }
  if (s.device) emulate(s, s.device->download_seconds(total_bytes(task.tensors)));
  const auto plugin = s.optimizer->current();
  if (!plugin.event.empty()) {
    if (plugin.failed) {
      link.log()->warn("{}", plugin.event);
    } else {
      link.log()->info("{}", plugin.event);
    }
  }
  Expected<TaskResult> result = Error{};
  {
    const auto slot = s.compute();
    result = run_task(*s.model, s.train, task, plugin.library, s.config.optimizer.options,
                      s.config.source + ": training.options");
  }
  auto& counters = self->state.counters;
  if (!result) {
    ++counters.tasks_failed;
    link.log()->error("cannot train task {}: {}", task.round, result.error().message);
    link.send(ErrorReply{WireErrc::rejected, result.error().message}, m.message_id);
    return;
  }
  if (s.device) {
    const auto plan = s.device->plan_task(result->stats.seconds);
    if (plan.drops) {
      // A device that drops out mid-task never answers; the schedule must cope.
      link.log()->info("emulated dropout: task {} is abandoned", task.round);
      ++counters.tasks_failed;
      return;
    }
    emulate(s, plan.compute_seconds - result->stats.seconds);
    emulate(s, s.device->upload_seconds(total_bytes(result->update.tensors)));
  }
  link.log()->debug("task {}: model version {}, {} steps, loss {:.4f}, {:.2f} s", task.round,
                    task.model_version, result->stats.steps, result->stats.loss, result->stats.seconds);
  ++counters.tasks_completed;
  counters.training_seconds += result->stats.seconds;
  counters.examples += result->stats.examples_seen;
  counters.optimizer_state_bytes = result->stats.optimizer_state_bytes;
  result->update.stats = link.report();
  link.send(std::move(result->update), m.message_id);
}

void handle(Self* self, const Inbound& in) {
  route_peer_message<Task>(self, *self->state.link, in,
                            [self](const Message& m, const Task& w) { train(self, m, w); });
}

}  // namespace

caf::behavior client_actor(Self* self, std::shared_ptr<ClientSetup> setup) {
  auto& s = *setup;
  self->state.setup = std::move(setup);
  self->state.link = std::make_unique<PeerLink>("client-" + std::to_string(s.id), s);
  self->state.counters.device_class = s.device_class;
  self->state.link->count_as_client(&self->state.counters, s.client_metrics.get());
  s.mailbox->attach(caf::actor_cast<caf::actor>(self));
  Hello hello;
  hello.role = Role::client;
  hello.client_id = s.id;
  hello.profile = s.profile;
  hello.num_examples = static_cast<std::uint64_t>(s.train.size());
  self->state.link->hello(std::move(hello));
  // An emulated device that is offline sends no heartbeats, so the aggregator sets it aside;
  // its first heartbeat once back online brings it back.
  return peer_behavior(self, handle, [self] { return online(self); });
}

}  // namespace flotilla::actors
