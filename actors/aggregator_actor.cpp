#include "actors/aggregator_actor.hpp"

#include "runtime/log.hpp"

namespace flotilla::actors {
namespace {

using Self = caf::stateful_actor<AggregatorState>;

void dispatch(Self* self, std::vector<Send> sends) {
  auto& s = *self->state.setup;
  for (auto& send : sends) {
    s.endpoint->send(send.peer, envelope(s.rounds->run_id(), "aggregator",
                                         self->state.next_message_id++, std::move(send.payload),
                                         send.reply_to));
  }
  for (const auto& record : s.rounds->take_completed()) {
    if (s.hooks.on_round) s.hooks.on_round(record);
  }
  if (s.rounds->done()) {
    if (!s.rounds->failure().empty()) s.outcome->fail(1, s.rounds->failure());
    if (s.hooks.on_done) s.hooks.on_done(*s.rounds);
    s.mailbox->detach();
    s.endpoint->close();  // flushes the shutdown messages (up to the linger time)
    self->quit();
  }
}

std::vector<Send> route(SyncRounds& rounds, const Inbound& in) {
  if (!in.message) return rounds.on_bad_message(in.peer, in.message.error());
  const Message& m = in.message.value();
  // A peer left over from another run (same address, new run) must not mix into this one. A
  // peer that has not been welcomed yet does not know the run id and sends none.
  if (!m.run_id.empty() && m.run_id != rounds.run_id()) {
    return rounds.on_bad_message(in.peer, Error{Errc::rejected, "message for run '" + m.run_id +
                                                                    "', this aggregator runs '" +
                                                                    rounds.run_id() + "'"});
  }
  return std::visit(
      [&](const auto& p) -> std::vector<Send> {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, Hello>) {
          return rounds.on_hello(in.peer, p);
        } else if constexpr (std::is_same_v<T, Update>) {
          return rounds.on_update(in.peer, p);
        } else if constexpr (std::is_same_v<T, EvaluationResult>) {
          return rounds.on_evaluation(in.peer, p);
        } else if constexpr (std::is_same_v<T, Heartbeat>) {
          return rounds.on_heartbeat(in.peer, p);
        } else if constexpr (std::is_same_v<T, ErrorReply>) {
          logger("aggregator")->warn("{} reports an error: {}", in.peer, p.message);
          return {};
        } else {
          return rounds.on_bad_message(
              in.peer, Error{Errc::rejected, std::string("the aggregator does not take '") +
                                                 payload_name(m.payload) + "' messages"});
        }
      },
      m.payload);
}

}  // namespace

caf::behavior aggregator_actor(Self* self, std::shared_ptr<AggregatorSetup> setup) {
  self->state.setup = std::move(setup);
  self->state.setup->mailbox->attach(caf::actor_cast<caf::actor>(self));
  self->send(self, tick_atom::value);
  return {
      [=](const InboundPtr& in) {
        try {
          dispatch(self, route(*self->state.setup->rounds, *in));
        } catch (const std::exception& e) {
          // A message must never take the aggregator down with the accepted updates in it.
          logger("aggregator")->error("while handling a message from {}: {}", in->peer, e.what());
        }
      },
      [=](tick_atom) {
        dispatch(self, self->state.setup->rounds->on_tick());
        if (!self->state.setup->rounds->done()) {
          self->delayed_send(self, self->state.setup->tick, tick_atom::value);
        }
      },
  };
}

}  // namespace flotilla::actors
