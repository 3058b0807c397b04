#include "runtime/net/security.hpp"
#include "runtime/net/transport.hpp"

#include "temp_dir.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

using namespace flotilla;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct TempDir : TestDir {
  TempDir() : TestDir("flotilla-security") { std::filesystem::create_directories(path / "authorized"); }
};

/// What an endpoint received, by peer.
class Inbox {
 public:
  Endpoint::Handler handler() {
    return [this](Inbound in) {
      std::lock_guard lock(mutex_);
      peers_.push_back(in.peer);
      cv_.notify_all();
    };
  }
  bool wait_for(std::size_t n, std::chrono::milliseconds timeout = 10s) {
    std::unique_lock lock(mutex_);
    return cv_.wait_for(lock, timeout, [&] { return peers_.size() >= n; });
  }
  std::vector<std::string> peers() {
    std::lock_guard lock(mutex_);
    return peers_;
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  std::vector<std::string> peers_;
};

Message hello(std::uint32_t id) {
  Message m;
  m.sender = "client-" + std::to_string(id);
  m.message_id = 1;
  m.payload = Hello{Role::client, id, {}, 100};
  return m;
}

/// A Curve server on a free port, its clients authorized from `dir`/authorized.
struct Server {
  explicit Server(const fs::path& dir) {
    keys = generate_curve_keypair().value();
    authorized = AuthorizedKeys::open(dir / "authorized").value();
    EndpointOptions o;
    o.curve_server = CurveServer{keys, authorized, "clients-" + dir.filename().string()};
    endpoint = Endpoint::bind("tcp://127.0.0.1:*", inbox.handler(), o).value();
  }
  /// Waits until the server counted `n` refusals.
  bool refused(std::uint64_t n) {
    for (int i = 0; i < 500 && endpoint->peers_refused() < n; ++i) std::this_thread::sleep_for(10ms);
    return endpoint->peers_refused() >= n;
  }
  CurveKeyPair keys;
  std::shared_ptr<AuthorizedKeys> authorized;
  Inbox inbox;
  std::unique_ptr<Endpoint> endpoint;
};

/// Makes client `name`'s key pair in `dir` and authorizes it as `as` (if not empty).
CurveKeyPair client_key(const fs::path& dir, const std::string& name, const std::string& as) {
  auto keys = generate_curve_keypair().value();
  EXPECT_TRUE(write_curve_keypair(dir, name, keys));
  if (!as.empty()) fs::copy_file(dir / (name + ".pub"), dir / "authorized" / (as + ".pub"));
  return keys;
}

std::unique_ptr<Endpoint> connect(const Server& server, const std::string& id, const CurveKeyPair& keys,
                                  const std::string& server_key, Inbox& inbox) {
  EndpointOptions o;
  o.curve_client = CurveClient{keys, server_key};
  return Endpoint::connect(server.endpoint->address(), id, inbox.handler(), o).value();
}

}  // namespace

TEST(Curve, AnAuthorizedClientIsHeardUnderItsIdAndAnswered) {
  const TempDir dir;
  const auto keys = client_key(dir.path, "client-1", "client-1");
  Server server(dir.path);
  Inbox replies;
  auto client = connect(server, "client-1", keys, server.keys.public_key, replies);
  client->send("", hello(1));
  ASSERT_TRUE(server.inbox.wait_for(1));
  EXPECT_EQ(server.inbox.peers().front(), "client-1");
  server.endpoint->send("client-1", hello(9));
  ASSERT_TRUE(replies.wait_for(1));
  EXPECT_EQ(server.endpoint->peers_refused(), 0u);
}

TEST(Curve, StrangersWrongServerKeysAndPlaintextPeersAreRefusedAndCounted) {
  const TempDir dir;
  const auto good = client_key(dir.path, "client-1", "client-1");
  const auto stranger = client_key(dir.path, "client-2", "");
  Server server(dir.path);
  Inbox ignored;
  // Not on the list.
  auto a = connect(server, "client-2", stranger, server.keys.public_key, ignored);
  a->send("", hello(2));
  ASSERT_TRUE(server.refused(1));
  // On the list, but holding another server's public key.
  auto other = generate_curve_keypair().value();
  auto b = connect(server, "client-1", good, other.public_key, ignored);
  b->send("", hello(1));
  ASSERT_TRUE(server.refused(2));
  // No encryption at all.
  auto plain = Endpoint::connect(server.endpoint->address(), "client-1", ignored.handler()).value();
  plain->send("", hello(1));
  ASSERT_TRUE(server.refused(3));
  std::this_thread::sleep_for(200ms);
  EXPECT_TRUE(server.inbox.peers().empty()) << "a refused peer's message was delivered";
  // The authorized client still gets through.
  Inbox replies;
  auto c = connect(server, "client-1", good, server.keys.public_key, replies);
  c->send("", hello(1));
  ASSERT_TRUE(server.inbox.wait_for(1));
  EXPECT_EQ(server.inbox.peers(), std::vector<std::string>{"client-1"});
}

TEST(Curve, AKeyIsItsIdWhateverItsConnectionIsCalled) {
  const TempDir dir;
  const auto one = client_key(dir.path, "client-1", "client-1");
  const auto two = client_key(dir.path, "client-2", "client-2");
  Server server(dir.path);
  Inbox to_two;
  auto real = connect(server, "client-2", two, server.keys.public_key, to_two);
  real->send("", hello(2));
  ASSERT_TRUE(server.inbox.wait_for(1));
  // client-1's key on a raw connection that sets its routing id to "client-2": it is
  // client-1, and what is sent to client-2 still reaches client-2.
  zmq::context_t ctx;
  zmq::socket_t impostor(ctx, zmq::socket_type::dealer);
  impostor.set(zmq::sockopt::routing_id, "client-2");
  impostor.set(zmq::sockopt::linger, 0);
  impostor.set(zmq::sockopt::rcvtimeo, 300);
  impostor.set(zmq::sockopt::curve_serverkey, server.keys.public_key);
  impostor.set(zmq::sockopt::curve_publickey, one.public_key);
  impostor.set(zmq::sockopt::curve_secretkey, one.secret_key);
  impostor.connect(server.endpoint->address());
  const auto encoded = encode(hello(2));
  for (std::size_t i = 0; i < encoded.frames.size(); ++i) {
    const auto& f = encoded.frames[i];
    impostor.send(zmq::buffer(f.data(), f.size()),
                  i + 1 < encoded.frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);
  }
  ASSERT_TRUE(server.inbox.wait_for(2));
  EXPECT_EQ(server.inbox.peers(), (std::vector<std::string>{"client-2", "client-1"}));
  server.endpoint->send("client-2", hello(9));
  ASSERT_TRUE(to_two.wait_for(1));
  zmq::message_t stolen;
  EXPECT_FALSE(impostor.recv(stolen)) << "the impostor got what was sent to client-2";
}

TEST(Curve, AnUnreadableEntryAmongTheAuthorizedKeysDoesNotStopAuthentication) {
  const TempDir dir;
  const auto keys = client_key(dir.path, "client-1", "client-1");
  // A FIFO named like a key: reading it must not block the handler (and every handshake).
  ASSERT_EQ(::mkfifo((dir.path / "authorized" / "evil.pub").c_str(), 0600), 0);
  fs::create_directory(dir.path / "authorized" / "dir.pub");
  Server server(dir.path);
  Inbox ignored;
  auto client = connect(server, "client-1", keys, server.keys.public_key, ignored);
  client->send("", hello(1));
  ASSERT_TRUE(server.inbox.wait_for(1));
  EXPECT_EQ(server.inbox.peers().front(), "client-1");
}

TEST(Curve, AKeyAuthorizedWhileTheServerRunsIsTakenWithoutARestart) {
  const TempDir dir;
  Server server(dir.path);
  const auto keys = client_key(dir.path, "client-3", "");
  Inbox ignored;
  auto early = connect(server, "client-3", keys, server.keys.public_key, ignored);
  early->send("", hello(3));
  ASSERT_TRUE(server.refused(1));
  early->close();
  fs::copy_file(dir.path / "client-3.pub", dir.path / "authorized" / "client-3.pub");
  auto later = connect(server, "client-3", keys, server.keys.public_key, ignored);
  later->send("", hello(3));
  ASSERT_TRUE(server.inbox.wait_for(1));
  EXPECT_EQ(server.inbox.peers().front(), "client-3");
}

TEST(CurveKeys, KeygenWritesAnOwnerOnlySecretAndRefusesToOverwrite) {
  const TempDir dir;
  const auto keys = generate_curve_keypair().value();
  ASSERT_TRUE(write_curve_keypair(dir.path / "keys", "client-4", keys));
  struct stat st {};
  ASSERT_EQ(::stat((dir.path / "keys" / "client-4.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(read_curve_secret(dir.path / "keys" / "client-4.key").value().secret_key, keys.secret_key);
  EXPECT_EQ(read_curve_public(dir.path / "keys" / "client-4.pub").value(), keys.public_key);
  auto again = write_curve_keypair(dir.path / "keys", "client-4", keys);
  ASSERT_FALSE(again);
  EXPECT_NE(again.error().message.find("not overwritten"), std::string::npos);
  EXPECT_FALSE(write_curve_keypair(dir.path, "../escape", keys));
  // A key file whose public key is not its secret key's.
  const auto other = generate_curve_keypair().value();
  ASSERT_TRUE(write_curve_keypair(dir.path / "mixed", "x", CurveKeyPair{other.public_key, keys.secret_key}));
  auto mixed = read_curve_secret(dir.path / "mixed" / "x.key");
  ASSERT_FALSE(mixed);
  EXPECT_NE(mixed.error().message.find("not the secret key's"), std::string::npos);
}

TEST(CurveKeys, ASecretKeyOthersCanReadIsRefusedWithTheReason) {
  const TempDir dir;
  ASSERT_TRUE(write_curve_keypair(dir.path, "aggregator", generate_curve_keypair().value()));
  const auto path = dir.path / "aggregator.key";
  fs::permissions(path, fs::perms::group_read, fs::perm_options::add);
  auto loose = read_curve_secret(path);
  ASSERT_FALSE(loose);
  EXPECT_NE(loose.error().message.find("mode 640"), std::string::npos) << loose.error().message;
  EXPECT_NE(loose.error().message.find("chmod 600"), std::string::npos);
  auto missing = read_curve_secret(dir.path / "nope.key");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("flotilla keygen"), std::string::npos);
  // A public key file that is not one.
  std::ofstream(dir.path / "bad.pub") << "public-key = \"short\"\n";
  auto bad = read_curve_public(dir.path / "bad.pub");
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("Z85"), std::string::npos);
}

TEST(CurveKeys, CurveOverInprocIsRefused) {
  const TempDir dir;
  EndpointOptions o;
  o.curve_server = CurveServer{generate_curve_keypair().value(), AuthorizedKeys::open(dir.path / "authorized").value(), "x"};
  auto bound = Endpoint::bind("inproc://curve-test", [](Inbound) {}, o);
  ASSERT_FALSE(bound);
  EXPECT_NE(bound.error().message.find("tcp:// or ipc://"), std::string::npos);
}
