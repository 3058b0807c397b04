#include "actors/client_actor.hpp"

#include "runtime/log.hpp"
#include "runtime/trainer.hpp"

#include <ATen/Parallel.h>

namespace flotilla::actors {
namespace {

using Self = caf::stateful_actor<ClientState>;

std::string name_of(const ClientSetup& s) { return "client-" + std::to_string(s.id); }

void send(Self* self, Payload payload, std::uint64_t reply_to = 0) {
  auto& s = *self->state.setup;
  s.endpoint->send("", envelope(self->state.run_id, name_of(s), self->state.next_message_id++,
                                std::move(payload), reply_to));
}

void stop(Self* self) {
  auto& s = *self->state.setup;
  s.mailbox->detach();
  s.endpoint->close();
  self->quit();
}

void train(Self* self, const Message& m, const Task& task) {
  auto& s = *self->state.setup;
  auto log = logger(name_of(s));
  if (auto ok = s.model->load_state(task.tensors); !ok) {
    log->error("cannot use the model of round {}: {}", task.round, ok.error().message);
    send(self, ErrorReply{WireErrc::rejected, ok.error().message}, m.message_id);
    return;
  }
  TrainStats stats;
  {
    if (s.training_slots) s.training_slots->acquire();
    at::set_num_threads(s.threads);
    stats = train_local(*s.model, s.train, task.config);
    if (s.training_slots) s.training_slots->release();
  }
  Update update;
  update.round = task.round;
  update.base_model_version = task.model_version;
  update.num_examples = stats.num_examples;
  update.metrics = {{"loss", stats.loss},
                    {"accuracy", stats.accuracy},
                    {"seconds", stats.seconds},
                    {"steps", static_cast<double>(stats.steps)}};
  update.tensors = s.model->state();
  log->debug("round {}: {} steps, loss {:.4f}, {:.2f} s", task.round, stats.steps, stats.loss,
             stats.seconds);
  send(self, std::move(update), m.message_id);
}

void handle(Self* self, const Inbound& in) {
  auto& s = *self->state.setup;
  auto log = logger(name_of(s));
  if (!in.message) {
    log->warn("dropped a message from the aggregator: {}", in.message.error().message);
    return;
  }
  const Message& m = in.message.value();
  if (const auto* w = std::get_if<Welcome>(&m.payload)) {
    self->state.welcomed = true;
    self->state.run_id = w->run_id;
    log->info("registered with the aggregator (run {}, model version {})", w->run_id,
              w->model_version);
  } else if (const auto* task = std::get_if<Task>(&m.payload)) {
    self->state.welcomed = true;
    train(self, m, *task);
  } else if (const auto* bye = std::get_if<Shutdown>(&m.payload)) {
    log->info("shutting down: {}", bye->reason);
    stop(self);
  } else if (const auto* err = std::get_if<ErrorReply>(&m.payload)) {
    if (err->code == WireErrc::protocol_version) {
      s.outcome->fail(1, "the aggregator refused this client: " + err->message);
      stop(self);
      return;
    }
    log->warn("the aggregator says: {}", err->message);
  } else {
    log->warn("ignored a '{}' message", payload_name(m.payload));
  }
}

}  // namespace

caf::behavior client_actor(Self* self, std::shared_ptr<ClientSetup> setup) {
  self->state.setup = std::move(setup);
  auto& s = *self->state.setup;
  s.mailbox->attach(caf::actor_cast<caf::actor>(self));
  send(self, Hello{Role::client, s.id, s.profile, static_cast<std::uint64_t>(s.train.size())});
  self->delayed_send(self, s.config.client.connect_timeout, timeout_atom::value);
  self->delayed_send(self, s.config.client.heartbeat_interval, tick_atom::value);
  return {
      [=](const InboundPtr& in) {
        try {
          handle(self, *in);
        } catch (const std::exception& e) {
          logger(name_of(*self->state.setup))->error("while handling a message: {}", e.what());
        }
      },
      [=](tick_atom) {
        send(self, Heartbeat{0, false});
        self->delayed_send(self, self->state.setup->config.client.heartbeat_interval,
                           tick_atom::value);
      },
      [=](timeout_atom) {
        if (self->state.welcomed) return;
        auto& st = *self->state.setup;
        st.outcome->fail(1, "no answer from the aggregator at " + st.endpoint->address() +
                                " within " +
                                std::to_string(st.config.client.connect_timeout.count() / 1000) +
                                " s (client.connect-timeout): is it running, and is the address right?");
        stop(self);
      },
  };
}

}  // namespace flotilla::actors
