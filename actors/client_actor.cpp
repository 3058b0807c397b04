#include "actors/client_actor.hpp"

#include "runtime/trainer.hpp"

namespace flotilla::actors {
namespace {

using Self = caf::stateful_actor<ClientState>;

void train(Self* self, const Message& m, const Task& task) {
  auto& s = *self->state.setup;
  auto& link = *self->state.link;
  if (auto ok = s.model->load_state(task.tensors); !ok) {
    link.log()->error("cannot use the model of round {}: {}", task.round, ok.error().message);
    link.send(ErrorReply{WireErrc::rejected, ok.error().message}, m.message_id);
    return;
  }
  const auto plugin = s.optimizer->current();
  if (!plugin.event.empty()) {
    if (plugin.failed) {
      link.log()->warn("{}", plugin.event);
    } else {
      link.log()->info("{}", plugin.event);
    }
  }
  auto optimizer = make_optimizer(plugin.library, s.config.optimizer.options, task.config, *s.model,
                                  s.config.source + ": training.options");
  if (!optimizer) {
    link.log()->error("cannot train round {}: {}", task.round, optimizer.error().message);
    link.send(ErrorReply{WireErrc::rejected, optimizer.error().message}, m.message_id);
    return;
  }
  TrainStats stats;
  {
    const auto slot = s.compute();
    stats = train_local(*s.model, s.train, task.config, **optimizer);
  }
  Update update;
  update.round = task.round;
  update.base_model_version = task.model_version;
  update.num_examples = stats.num_examples;
  update.metrics = {{"loss", stats.loss},
                    {"accuracy", stats.accuracy},
                    {"seconds", stats.seconds},
                    {"steps", static_cast<double>(stats.steps)}};
  // Exactly what was trained: the full weights, or only the LoRA adapters.
  update.tensors = s.model->trainable_state();
  link.log()->debug("round {}: {} steps, loss {:.4f}, {:.2f} s", task.round, stats.steps,
                    stats.loss, stats.seconds);
  link.send(std::move(update), m.message_id);
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
  s.mailbox->attach(caf::actor_cast<caf::actor>(self));
  Hello hello;
  hello.role = Role::client;
  hello.client_id = s.id;
  hello.profile = s.profile;
  hello.num_examples = static_cast<std::uint64_t>(s.train.size());
  self->state.link->send(std::move(hello));
  return peer_behavior(self, handle);
}

}  // namespace flotilla::actors
