#include "actors/evaluator_actor.hpp"

#include "runtime/trainer.hpp"

#include <ATen/Parallel.h>

namespace flotilla::actors {
namespace {

using Self = caf::stateful_actor<EvaluatorState>;

void score(Self* self, const Message& m, const EvaluationRequest& req) {
  auto& s = *self->state.setup;
  auto& link = *self->state.link;
  if (auto ok = s.model->load_state(req.tensors); !ok) {
    link.log()->error("cannot evaluate version {}: {}", req.model_version, ok.error().message);
    link.send(ErrorReply{WireErrc::rejected, ok.error().message}, m.message_id);
    return;
  }
  if (s.compute_slots) s.compute_slots->acquire();
  at::set_num_threads(s.threads);
  const auto stats = evaluate(*s.model, s.test, s.config.evaluator.batch_size);
  if (s.compute_slots) s.compute_slots->release();
  link.send(EvaluationResult{req.round, req.model_version, stats.num_examples, stats.loss,
                             stats.accuracy, {{"seconds", stats.seconds}}},
            m.message_id);
}

void handle(Self* self, const Inbound& in) {
  auto& link = *self->state.link;
  if (!in.message) {
    link.log()->warn("dropped a message from the aggregator: {}", in.message.error().message);
    return;
  }
  const Message& m = in.message.value();
  switch (link.handle_common(m)) {
    case PeerLink::Next::handled: return;
    case PeerLink::Next::stop: self->quit(); return;
    case PeerLink::Next::not_mine: break;
  }
  if (const auto* req = std::get_if<EvaluationRequest>(&m.payload)) {
    link.mark_welcomed();
    score(self, m, *req);
  } else {
    link.log()->warn("ignored a '{}' message", payload_name(m.payload));
  }
}

}  // namespace

caf::behavior evaluator_actor(Self* self, std::shared_ptr<EvaluatorSetup> setup) {
  auto& s = *setup;
  self->state.setup = std::move(setup);
  self->state.link =
      std::make_unique<PeerLink>("evaluator", s.endpoint, s.mailbox, s.outcome, s.config.client);
  s.mailbox->attach(caf::actor_cast<caf::actor>(self));
  Hello hello;
  hello.role = Role::evaluator;
  hello.num_examples = static_cast<std::uint64_t>(s.test.size());
  self->state.link->send(std::move(hello));
  start_peer_timers(self, *self->state.link);
  return {
      [=](const InboundPtr& in) {
        try {
          handle(self, *in);
        } catch (const std::exception& e) {
          self->state.link->log()->error("while handling a message: {}", e.what());
        }
      },
      [=](tick_atom) { peer_tick(self, *self->state.link); },
      [=](timeout_atom) { peer_timeout(self, *self->state.link); },
  };
}

}  // namespace flotilla::actors
