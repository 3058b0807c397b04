#include "actors/peer_link.hpp"

#include "runtime/log.hpp"

namespace flotilla::actors {

PeerLink::PeerLink(std::string name, std::shared_ptr<Endpoint> endpoint,
                   std::shared_ptr<Mailbox> mailbox, std::shared_ptr<Outcome> outcome,
                   ClientSection timing)
    : name_(std::move(name)),
      endpoint_(std::move(endpoint)),
      mailbox_(std::move(mailbox)),
      outcome_(std::move(outcome)),
      timing_(timing),
      log_(logger(name_)) {}

void PeerLink::send(Payload payload, std::uint64_t reply_to) {
  endpoint_->send("", envelope(run_id_, name_, next_message_id_++, std::move(payload), reply_to));
}

void PeerLink::close() {
  mailbox_->detach();
  endpoint_->close();
}

PeerLink::Next PeerLink::handle_common(const Message& m) {
  if (const auto* w = std::get_if<Welcome>(&m.payload)) {
    welcomed_ = true;
    run_id_ = w->run_id;
    log_->info("registered with the aggregator (run {}, model version {})", w->run_id,
               w->model_version);
    return Next::handled;
  }
  if (const auto* bye = std::get_if<Shutdown>(&m.payload)) {
    log_->info("shutting down: {}", bye->reason);
    close();
    return Next::stop;
  }
  if (const auto* err = std::get_if<ErrorReply>(&m.payload)) {
    if (err->code == WireErrc::protocol_version) {
      outcome_->fail(1, "the aggregator refused " + name_ + ": " + err->message);
      close();
      return Next::stop;
    }
    log_->warn("the aggregator says: {}", err->message);
    return Next::handled;
  }
  return Next::not_mine;
}

bool PeerLink::give_up_if_unanswered() {
  if (welcomed_) return false;
  outcome_->fail(1, "no answer from the aggregator at " + endpoint_->address() + " within " +
                        std::to_string(timing_.connect_timeout.count() / 1000) +
                        " s (client.connect-timeout): is it running, and is the address right?");
  close();
  return true;
}

}  // namespace flotilla::actors
