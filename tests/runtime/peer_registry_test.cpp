// Who takes part: registration, silence, setting aside and re-admission, at any fleet size.
#include "runtime/server/peer_registry.hpp"

#include <gtest/gtest.h>

using namespace flotilla;
using namespace std::chrono_literals;

namespace {
Hello client(std::uint32_t id) { return Hello{Role::client, id, {}, 10}; }
std::string peer(int i) { return "client-" + std::to_string(i); }
}  // namespace

TEST(PeerRegistry, SilentFindsExactlyThosePastTheTimeoutWhateverTheOrderOfHearing) {
  ManualClock clock;
  PeerRegistry r(clock);
  for (int i = 0; i < 6; ++i) {
    r.add(peer(i), client(static_cast<std::uint32_t>(i)));
    clock.advance(1s);
  }
  // Heard at 0..5 s; now 6 s. client-1 and client-4 speak again at 6 s.
  r.heard_from(peer(1));
  r.heard_from(peer(4));
  clock.advance(3500ms);  // now 9.5 s: silent past 5 s are those last heard before 4.5 s
  EXPECT_EQ(r.silent(5s, nullptr), (std::vector<std::string>{peer(0), peer(2), peer(3)}));
  const auto training = [](const std::string& p) { return p == "client-2"; };
  EXPECT_EQ(r.silent(5s, training), (std::vector<std::string>{peer(0), peer(3)}));

  EXPECT_TRUE(r.set_aside(peer(0)));
  EXPECT_FALSE(r.set_aside(peer(0))) << "already aside";
  EXPECT_EQ(r.live_clients(), 5U);
  EXPECT_EQ(r.silent(5s, nullptr), (std::vector<std::string>{peer(2), peer(3)}));
  EXPECT_TRUE(r.heard_from(peer(0))) << "re-admitted";
  EXPECT_EQ(r.live_clients(), 6U);
  EXPECT_EQ(r.silent(5s, nullptr), (std::vector<std::string>{peer(2), peer(3)}));
  // Registering again counts as being heard from, and is known.
  EXPECT_TRUE(r.add(peer(2), client(2)));
  EXPECT_EQ(r.silent(5s, nullptr), (std::vector<std::string>{peer(3)}));
  EXPECT_EQ(r.live_clients(), 6U);
  clock.advance(10s);
  EXPECT_EQ(r.silent(5s, nullptr).size(), 6U);
  EXPECT_EQ(r.clients().front(), peer(0)) << "sorted";
}

TEST(PeerRegistry, EvaluatorsAreKeptApart) {
  ManualClock clock;
  PeerRegistry r(clock);
  r.add("evaluator", Hello{Role::evaluator, 0, {}, 0});
  r.add(peer(0), client(0));
  EXPECT_EQ(r.live_clients(), 1U);
  EXPECT_EQ(r.evaluator(), "evaluator");
  r.set_aside("evaluator");
  EXPECT_FALSE(r.evaluator());
  r.heard_from("evaluator");
  EXPECT_EQ(r.evaluator(), "evaluator");
  EXPECT_EQ(r.everyone().size(), 2U);
}
