#include "actors/peer_link.hpp"

#include "runtime/setup/federation.hpp"
#include "runtime/base/log.hpp"

#include <ATen/Parallel.h>

namespace flotilla::actors {

Expected<void> PeerSetup::connect(const Config& run_config, const std::string& address,
                                  const std::string& name, std::optional<std::uint32_t> client_id) {
  config = run_config;
  auto built = client_id ? build_client_model(config, *client_id) : build_model(config);
  if (!built) return built.error();
  model = std::move(built).value();
  auto options = endpoint_options(config);
  options.on_failure = Mailbox::failure_handler(mailbox, "the link to the aggregator at " + address);
  auto connected = Endpoint::connect(address, name, Mailbox::handler(mailbox), options);
  if (!connected) return connected.error();
  endpoint = std::shared_ptr<Endpoint>(std::move(connected).value());
  return {};
}

ComputeSlot PeerSetup::compute() const {
  at::set_num_threads(threads);
  return ComputeSlot(compute_slots.get());
}

PeerLink::PeerLink(std::string name, const PeerSetup& setup)
    : name_(std::move(name)),
      endpoint_(setup.endpoint),
      mailbox_(setup.mailbox),
      outcome_(setup.outcome),
      timing_(setup.config.client),
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

void PeerLink::count_as_client(const ClientStats* counters, monitoring::ClientMetrics* metrics) {
  counters_ = counters;
  metrics_ = metrics;
  recorded_ = ClientStats{};
  if (counters_ != nullptr) recorded_.device_class = counters_->device_class;
}

std::optional<ClientStats> PeerLink::report() {
  if (counters_ == nullptr) return std::nullopt;
  ClientStats now = *counters_;
  now.bytes_sent = endpoint_->bytes_sent();
  now.bytes_received = endpoint_->bytes_received();
  if (metrics_ != nullptr) metrics_->record(now, recorded_);
  recorded_ = now;
  return now;
}

void PeerLink::fail(const std::string& why) {
  log_->error("{}", why);
  outcome_->fail(1, why);
  close();
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
