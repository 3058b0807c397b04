#include "actors/evaluator_actor.hpp"

#include "runtime/log.hpp"
#include "runtime/trainer.hpp"

#include <ATen/Parallel.h>

namespace flotilla::actors {
namespace {

using Self = caf::stateful_actor<EvaluatorState>;

void send(Self* self, Payload payload, std::uint64_t reply_to = 0) {
  auto& s = *self->state.setup;
  s.endpoint->send("", envelope(self->state.run_id, "evaluator", self->state.next_message_id++,
                                std::move(payload), reply_to));
}

void stop(Self* self) {
  self->state.setup->mailbox->detach();
  self->state.setup->endpoint->close();
  self->quit();
}

void handle(Self* self, const Inbound& in) {
  auto& s = *self->state.setup;
  auto log = logger("evaluator");
  if (!in.message) {
    log->warn("dropped a message from the aggregator: {}", in.message.error().message);
    return;
  }
  const Message& m = in.message.value();
  if (const auto* w = std::get_if<Welcome>(&m.payload)) {
    self->state.welcomed = true;
    self->state.run_id = w->run_id;
    log->info("registered with the aggregator (run {})", w->run_id);
  } else if (const auto* req = std::get_if<EvaluationRequest>(&m.payload)) {
    self->state.welcomed = true;
    if (auto ok = s.model->load_state(req->tensors); !ok) {
      log->error("cannot evaluate version {}: {}", req->model_version, ok.error().message);
      send(self, ErrorReply{WireErrc::rejected, ok.error().message}, m.message_id);
      return;
    }
    if (s.compute_slots) s.compute_slots->acquire();
    at::set_num_threads(s.threads);
    const auto stats = evaluate(*s.model, s.test, s.config.evaluator.batch_size);
    if (s.compute_slots) s.compute_slots->release();
    send(self,
         EvaluationResult{req->round, req->model_version, stats.num_examples, stats.loss,
                          stats.accuracy, {{"seconds", stats.seconds}}},
         m.message_id);
  } else if (const auto* bye = std::get_if<Shutdown>(&m.payload)) {
    log->info("shutting down: {}", bye->reason);
    stop(self);
  } else if (const auto* err = std::get_if<ErrorReply>(&m.payload)) {
    if (err->code == WireErrc::protocol_version) {
      s.outcome->fail(1, "the aggregator refused this evaluator: " + err->message);
      stop(self);
      return;
    }
    log->warn("the aggregator says: {}", err->message);
  }
}

}  // namespace

caf::behavior evaluator_actor(Self* self, std::shared_ptr<EvaluatorSetup> setup) {
  self->state.setup = std::move(setup);
  auto& s = *self->state.setup;
  s.mailbox->attach(caf::actor_cast<caf::actor>(self));
  Hello hello;
  hello.role = Role::evaluator;
  hello.num_examples = static_cast<std::uint64_t>(s.test.size());
  send(self, std::move(hello));
  self->delayed_send(self, s.config.client.connect_timeout, timeout_atom::value);
  self->delayed_send(self, s.config.client.heartbeat_interval, tick_atom::value);
  return {
      [=](const InboundPtr& in) {
        try {
          handle(self, *in);
        } catch (const std::exception& e) {
          logger("evaluator")->error("while handling a message: {}", e.what());
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
