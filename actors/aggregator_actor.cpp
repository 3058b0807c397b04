#include "actors/aggregator_actor.hpp"

#include "runtime/base/log.hpp"
#include "runtime/base/tsan.hpp"
#include "runtime/setup/federation.hpp"

namespace flotilla::actors {
namespace {

using Self = caf::stateful_actor<AggregatorState>;

/// The run is over (done, or it cannot go on): reports, closes the endpoints, quits.
void stop(Self* self) {
  auto& s = *self->state.setup;
  if (s.checkpoints) checkpoint_at_end(*s.checkpoints, *s.rounds);
  if (s.hooks.on_done) s.hooks.on_done(*s.rounds);
  s.mailbox->detach();
  if (s.admin_endpoint) s.admin_endpoint->close();
  s.endpoint->close();  // flushes the shutdown messages (up to the linger time)
  self->quit();
}

void dispatch(Self* self, std::vector<Send> sends) {
  auto& s = *self->state.setup;
  for (auto& send : sends) {
    s.endpoint->send(send.peer, envelope(s.rounds->run_id(), "aggregator",
                                         self->state.next_message_id++, std::move(send.payload),
                                         send.reply_to));
  }
  auto events = s.rounds->take_events();
  if (s.hooks.on_events && !events.empty()) s.hooks.on_events(*s.rounds, events);
  for (const auto& record : s.rounds->take_completed()) {
    if (s.hooks.on_round) s.hooks.on_round(record);
  }
  if (s.rounds->done()) {
    if (!s.rounds->failure().empty()) s.outcome->fail(1, s.rounds->failure());
    stop(self);
  }
}

/// Loads the current file of the aggregation plugin and has the rounds switch to it at the next
/// safe point. The reply says what was loaded, or why nothing was (the old build keeps running).
AdminReply reload_plugin(AggregatorSetup& s, const std::string& reason) {
  const std::string name = s.rounds->aggregation().plugin_name();
  if (name.empty()) {
    return {false, "aggregator.strategy is \"builtin\": there is no plugin to reload"};
  }
  auto library = s.plugins->reload(name);
  if (!library) {
    s.rounds->reload_failed(library.error().message);
    logger("aggregator")->error("plugin reload ({}) failed; still running {}: {}", reason,
                                s.rounds->aggregation().describe(), library.error().message);
    return {false, library.error().message + "; still running " + s.rounds->aggregation().describe()};
  }
  const auto& info = (*library)->info();
  s.rounds->request_reload(*library, reason);
  const bool now = !s.rounds->reload_pending();
  return {true, "loaded " + info.name + " " + info.version + " from " + info.path.string() +
                    (now ? "; running it now"
                         : "; switching once the version being aggregated is produced (model version " +
                               std::to_string(s.rounds->model_version()) + " now)")};
}

AdminReply admin(AggregatorSetup& s, const AdminCommand& c) {
  if (c.command == "reload") return reload_plugin(s, "admin command");
  if (c.command == "status") {
    const auto& r = *s.rounds;
    const auto& k = r.counters();
    return {true, "run " + r.run_id() + ": schedule " + r.describe() + ", round " +
                      std::to_string(r.round()) + ", model version " +
                      std::to_string(r.model_version()) + ", " + std::to_string(r.live_clients()) +
                      " clients; aggregation " + r.aggregation().describe() + "; " +
                      std::to_string(k.updates_accepted) + " updates accepted, " +
                      std::to_string(k.plugin_reloads) + " plugin reloads (" +
                      std::to_string(k.plugin_reload_failures) + " failed)"};
  }
  return {false, "unknown admin command '" + c.command + "' (known: reload, status)"};
}

std::vector<Send> route(AggregatorSetup& s, const Inbound& in) {
  auto& rounds = *s.rounds;
  if (!in.message) return rounds.on_bad_message(in.peer, in.message.error());
  const Message& m = in.message.value();
  // A peer left over from another run (same address, new run) must not mix into this one. A
  // peer that has not been welcomed yet does not know the run id and sends none.
  if (!m.run_id.empty() && m.run_id != rounds.run_id()) return rounds.on_other_run(in.peer, m.run_id);
  return std::visit(
      [&](const auto& p) -> std::vector<Send> {
        using T = std::decay_t<decltype(p)>;
        if constexpr (std::is_same_v<T, Hello>) {
          return rounds.on_hello(in.peer, p, m.protocol_minor);
        } else if constexpr (std::is_same_v<T, Update>) {
          return rounds.on_update(in.peer, p);
        } else if constexpr (std::is_same_v<T, EvaluationResult>) {
          return rounds.on_evaluation(in.peer, p);
        } else if constexpr (std::is_same_v<T, Heartbeat>) {
          return rounds.on_heartbeat(in.peer, p, m.protocol_minor >= 4);
        } else if constexpr (std::is_same_v<T, ErrorReply>) {
          rounds.on_peer_error(in.peer, p.message);
          return {};
        } else if constexpr (std::is_same_v<T, AdminCommand>) {
          // The clients' endpoint is open to every client (and whoever else reaches it).
          return rounds.on_bad_message(
              in.peer, Error{Errc::rejected,
                             std::string("admin commands are not taken on the clients' endpoint") +
                                 (s.admin_endpoint ? "; this aggregator takes them on " +
                                                         s.admin_endpoint->address()
                                                   : "; this aggregator takes none (set "
                                                     "aggregator.admin-listen)")});
        } else {
          return rounds.on_bad_message(
              in.peer, Error{Errc::rejected, std::string("the aggregator does not take '") +
                                                 payload_name(m.payload) + "' messages"});
        }
      },
      m.payload);
}

/// A message on the admin endpoint: only commands are taken there, answered on it.
void route_admin(Self* self, const Inbound& in) {
  auto& s = *self->state.setup;
  AdminReply reply{false, ""};
  std::uint64_t reply_to = 0;
  if (!in.message) {
    reply.message = "undecodable message: " + in.message.error().message;
  } else if (const auto* c = std::get_if<AdminCommand>(&in.message->payload)) {
    logger("aggregator")->info("admin command '{}' from {}", c->command, in.message->sender);
    reply = admin(s, *c);
    reply_to = in.message->message_id;
  } else {
    reply.message = std::string("the admin endpoint takes admin commands, not '") +
                    payload_name(in.message->payload) + "'";
  }
  if (!reply.ok) logger("aggregator")->warn("admin endpoint: {}", reply.message);
  s.admin_endpoint->send(in.peer, envelope(s.rounds->run_id(), "aggregator",
                                           self->state.next_message_id++, std::move(reply), reply_to));
}

}  // namespace

caf::behavior aggregator_actor(Self* self, std::shared_ptr<AggregatorSetup> setup) {
  self->state.setup = std::move(setup);
  self->state.setup->mailbox->attach(caf::actor_cast<caf::actor>(self));
  self->send(self, tick_atom::value);
  return {
      [=](const InboundPtr& in) {
        tsan_taken_over(in.get());  // handed over by Mailbox::deliver
        try {
          if (in->channel == kTransportFailedChannel) {
            // Nothing can be received or sent any more: end with the reason, never hang.
            const auto& why = in->message.error().message;
            logger("aggregator")->error("{}; the run cannot go on", why);
            self->state.setup->outcome->fail(1, why);
            stop(self);
            return;
          }
          if (in->channel == kAdminChannel) {
            route_admin(self, *in);
            dispatch(self, {});  // a reload may have been applied at once
          } else {
            dispatch(self, route(*self->state.setup, *in));
          }
        } catch (const std::exception& e) {
          // A message must never take the aggregator down with the accepted updates in it.
          logger("aggregator")->error("while handling a message from {}: {}", in->peer, e.what());
        }
      },
      [=](tick_atom) {
        auto& s = *self->state.setup;
        try {
          // About once a second: has the plugin's file changed (a new build dropped in)?
          if (s.watcher && ++self->state.ticks % 10 == 0 && s.watcher->poll()) {
            logger("aggregator")->info("plugin file {} changed", s.watcher->file().string());
            (void)reload_plugin(s, "file changed");
          }
          dispatch(self, s.rounds->on_tick());
        } catch (const std::exception& e) {
          // The schedule fails a version that cannot be made; anything else that escapes must
          // not stop the clock (no more ticks: no deadlines, a run that never ends).
          logger("aggregator")->error("while handling a tick: {}", e.what());
        }
        if (!s.rounds->done()) self->delayed_send(self, s.tick, tick_atom::value);
      },
  };
}

}  // namespace flotilla::actors
