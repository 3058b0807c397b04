#include "actors/evaluator_actor.hpp"

#include "runtime/ml/trainer.hpp"

namespace flotilla::actors {
namespace {

using Self = caf::stateful_actor<EvaluatorState>;

void score(Self* self, const Message& m, const EvaluationRequest& req) {
  auto& s = *self->state.setup;
  auto& link = *self->state.link;
  if (auto ok = s.model->load_tensors(req.tensors); !ok) {
    link.log()->error("cannot evaluate version {}: {}", req.model_version, ok.error().message);
    link.send(ErrorReply{WireErrc::rejected, ok.error().message}, m.message_id);
    return;
  }
  EvalStats stats;
  {
    const auto slot = s.compute();
    stats = evaluate(*s.model, s.test, s.config.evaluator.batch_size);
  }
  if (s.metrics) s.metrics->evaluated(req.model_version, stats.loss, stats.accuracy, stats.seconds);
  link.send(EvaluationResult{req.round, req.model_version, stats.num_examples, stats.loss,
                             stats.accuracy, {{"seconds", stats.seconds}}},
            m.message_id);
}

void handle(Self* self, const Inbound& in) {
  route_peer_message<EvaluationRequest>(self, *self->state.link, in,
                            [self](const Message& m, const EvaluationRequest& w) { score(self, m, w); });
}

}  // namespace

caf::behavior evaluator_actor(Self* self, std::shared_ptr<EvaluatorSetup> setup) {
  auto& s = *setup;
  self->state.setup = std::move(setup);
  self->state.link = std::make_unique<PeerLink>("evaluator", s);
  s.mailbox->attach(caf::actor_cast<caf::actor>(self));
  Hello hello;
  hello.role = Role::evaluator;
  hello.num_examples = static_cast<std::uint64_t>(s.test.size());
  self->state.link->hello(std::move(hello));
  return peer_behavior(self, handle);
}

}  // namespace flotilla::actors
