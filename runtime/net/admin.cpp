#include "runtime/net/admin.hpp"

#include "runtime/net/transport.hpp"

#include <unistd.h>

#include <future>

namespace flotilla {

Expected<AdminReply> send_admin(const std::string& address, const std::string& command,
                                std::vector<std::string> args, std::chrono::milliseconds timeout,
                                const std::optional<AdminCredentials>& credentials) {
  auto reply = std::make_shared<std::promise<Expected<AdminReply>>>();
  auto future = reply->get_future();
  auto answered = std::make_shared<std::once_flag>();
  // Under Curve the id is the one the key is authorized for.
  const std::string identity = credentials ? credentials->name : "admin-" + std::to_string(::getpid());
  EndpointOptions options;
  if (credentials) options.curve_client = credentials->curve;
  auto endpoint = Endpoint::connect(address, identity, [reply, answered](Inbound in) {
    std::call_once(*answered, [&] {
      if (!in.message) {
        reply->set_value(in.message.error());
        return;
      }
      if (const auto* r = std::get_if<AdminReply>(&in.message->payload)) {
        reply->set_value(*r);
      } else if (const auto* e = std::get_if<ErrorReply>(&in.message->payload)) {
        reply->set_value(Error{Errc::rejected, e->message});
      } else {
        reply->set_value(Error{Errc::malformed, std::string("unexpected '") +
                                                    payload_name(in.message->payload) + "' reply"});
      }
    });
  }, options);
  if (!endpoint) return endpoint.error();
  Message m;
  m.sender = identity;
  m.message_id = 1;
  m.payload = AdminCommand{command, std::move(args)};
  (*endpoint)->send("", std::move(m));
  if (future.wait_for(timeout) != std::future_status::ready) {
    (*endpoint)->close();
    return Error{Errc::unreachable, "no reply from " + address + " within " +
                                        std::to_string(timeout.count() / 1000.0).substr(0, 4) +
                                        " s: is an aggregator listening there?"};
  }
  auto result = future.get();
  (*endpoint)->close();
  return result;
}

}  // namespace flotilla
