#include "actors/peer_link.hpp"

#include "runtime/setup/federation.hpp"
#include "runtime/base/log.hpp"

#include <ATen/Parallel.h>

#include <algorithm>

namespace flotilla::actors {

Expected<void> PeerSetup::connect(const Config& run_config, const std::string& address,
                                  const std::string& name, std::optional<std::uint32_t> client_id) {
  config = run_config;
  this->client_id = client_id;
  if (auto ok = rebuild_model(); !ok) return ok.error();
  auto options = endpoint_options(config);
  if (auto ok = secure_client(config, name, options); !ok) return ok.error();
  options.on_failure = Mailbox::failure_handler(mailbox, "the link to the aggregator at " + address);
  auto connected = Endpoint::connect(address, name, Mailbox::handler(mailbox), options);
  if (!connected) return connected.error();
  endpoint = std::shared_ptr<Endpoint>(std::move(connected).value());
  return {};
}

Expected<void> PeerSetup::rebuild_model() {
  auto built = client_id ? build_client_model(config, *client_id) : build_model(config);
  if (!built) return built.error();
  model = std::move(built).value();
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
      silence_limit_(setup.config.aggregator.peer_timeout),
      log_(logger(name_)),
      rng_(static_cast<std::minstd_rand::result_type>(
          std::hash<std::string>{}(name_) ^
          static_cast<std::size_t>(std::chrono::steady_clock::now().time_since_epoch().count()))) {}

void PeerLink::send(Payload payload, std::uint64_t reply_to) {
  endpoint_->send("", envelope(run_id_, name_, next_message_id_++, std::move(payload), reply_to));
}

void PeerLink::close() {
  mailbox_->detach();
  endpoint_->close();
}

void PeerLink::hello(Hello hello) {
  hello_ = hello;
  send(std::move(hello));
}

void PeerLink::register_again(std::uint64_t generation) {
  hello_scheduled_ = false;
  if (!hello_ || generation != generation_) return;  // a Welcome came meanwhile
  ++unanswered_hellos_;
  hello_sent_at_ = std::chrono::steady_clock::now();
  log_->info("registering again with the aggregator at {}", endpoint_->address());
  run_id_.clear();
  send(*hello_);
}

std::chrono::milliseconds PeerLink::backoff() const {
  using std::chrono::milliseconds;
  const auto base = std::chrono::duration_cast<milliseconds>(timing_.heartbeat_interval);
  const auto cap = milliseconds(30'000);
  auto b = std::max(base, milliseconds(100));
  for (int i = 0; i < unanswered_hellos_ && b < cap; ++i) b *= 2;
  return std::min(b, cap);
}

bool PeerLink::should_register() {
  if (hello_scheduled_) return false;
  if (hello_sent_at_ && std::chrono::steady_clock::now() - *hello_sent_at_ < backoff()) return false;
  hello_scheduled_ = true;
  return true;
}

std::chrono::milliseconds PeerLink::register_delay() {
  std::uniform_int_distribution<long> jitter(0, backoff().count());
  return std::chrono::milliseconds(jitter(rng_));
}

void PeerLink::heartbeat() {
  if (hello_scheduled_) return;  // registering: the Welcome will tell
  if (hello_sent_at_) {
    // No Welcome within the backoff: the Hello (or its answer) was lost; ask again, later each
    // time.
    if (std::chrono::steady_clock::now() - *hello_sent_at_ >= backoff()) register_again(generation_);
    return;
  }
  if (endpoint_->pending() > 0) return;            // the last message has not left yet
  if (!unanswered_since_) unanswered_since_ = std::chrono::steady_clock::now();
  send(Heartbeat{0, false, report()});
}

void PeerLink::check_aggregator() {
  if (!welcomed_ || !aggregator_answers_ || said_silent_ || !unanswered_since_) return;
  const auto silent = std::chrono::steady_clock::now() - *unanswered_since_;
  if (silent <= silence_limit_) return;
  said_silent_ = true;
  log_->warn("no word from the aggregator at {} for {:.0f} s (aggregator.peer-timeout): it may "
             "be down; still trying, and registering again when one answers",
             endpoint_->address(), std::chrono::duration<double>(silent).count());
}

PeerLink::Next PeerLink::handle_common(const Message& m) {
  unanswered_since_.reset();
  if (said_silent_) {
    said_silent_ = false;
    log_->info("the aggregator at {} answers again", endpoint_->address());
  }
  if (const auto* w = std::get_if<Welcome>(&m.payload)) {
    const bool again = welcomed_ || unanswered_hellos_ > 0;
    // A Welcome at a version older than one this peer has seen: a new run, or a resumed one
    // behind what it had (a checkpoint before the crash): tensors tasks no longer carry must
    // hold the initial model's values again.
    new_run_ = welcomed_ && w->model_version < highest_version_;
    highest_version_ = w->model_version;
    welcomed_ = true;
    unanswered_hellos_ = 0;
    hello_sent_at_.reset();
    ++generation_;
    run_id_ = w->run_id;
    aggregator_answers_ = m.protocol_minor >= 4;
    log_->info("{} with the aggregator (run {}, model version {})",
               again ? "registered again" : "registered", w->run_id, w->model_version);
    return Next::handled;
  }
  if (const auto* t = std::get_if<Task>(&m.payload)) highest_version_ = std::max(highest_version_, t->model_version);
  if (const auto* r = std::get_if<EvaluationRequest>(&m.payload)) {
    highest_version_ = std::max(highest_version_, r->model_version);
  }
  if (std::holds_alternative<Heartbeat>(m.payload)) return Next::handled;
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
    if (err->code == WireErrc::not_registered) {
      // Said once per registration: what was queued while it was down all gets this answer.
      if (!hello_scheduled_ && !hello_sent_at_) log_->info("the aggregator says: {}", err->message);
      return Next::register_again;
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
