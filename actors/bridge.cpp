#include "actors/bridge.hpp"

#include "runtime/base/tsan.hpp"

namespace flotilla::actors {

void Mailbox::deliver(Inbound in) {
  auto ptr = std::make_shared<Inbound>(std::move(in));
  std::lock_guard lock(mutex_);
  if (detached_) return;
  if (target_) {
    tsan_handed_over(ptr.get());
    caf::anon_send(target_, ptr);
  } else {
    held_.push_back(std::move(ptr));
  }
}

void Mailbox::attach(caf::actor target) {
  std::lock_guard lock(mutex_);
  target_ = std::move(target);
  for (auto& p : held_) {
    tsan_handed_over(p.get());
    caf::anon_send(target_, std::move(p));
  }
  held_.clear();
}

void Mailbox::detach() {
  std::lock_guard lock(mutex_);
  detached_ = true;
  target_ = caf::actor{};
  held_.clear();
}

Endpoint::Handler Mailbox::handler(const std::shared_ptr<Mailbox>& box, int channel) {
  return [box, channel](Inbound in) {
    in.channel = channel;
    box->deliver(std::move(in));
  };
}

std::function<void(const std::string&)> Mailbox::failure_handler(const std::shared_ptr<Mailbox>& box,
                                                               std::string what) {
  return [box, what = std::move(what)](const std::string& why) {
    box->deliver(Inbound{{}, Error{Errc::io, what + " stopped: " + why}, 0, kTransportFailedChannel, nullptr});
  };
}

Message envelope(const std::string& run_id, const std::string& sender, std::uint64_t message_id,
                 Payload payload, std::uint64_t reply_to) {
  Message m;
  m.run_id = run_id;
  m.sender = sender;
  m.message_id = message_id;
  m.reply_to = reply_to;
  m.payload = std::move(payload);
  return m;
}

}  // namespace flotilla::actors
