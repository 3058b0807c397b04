#include "runtime/net/security.hpp"

#include "runtime/base/log.hpp"
#include "runtime/net/context.hpp"

#include <sys/stat.h>
#include <unistd.h>
#include <zmq.hpp>

#include <chrono>
#include <fstream>
#include <sstream>
#include <thread>

namespace flotilla {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t kZ85Key = 40;
/// A key file is a few lines; anything longer is not one (bounded before it is read).
constexpr std::uintmax_t kMaxKeyFile = 4096;

bool is_z85_key(const std::string& s) {
  if (s.size() != kZ85Key) return false;
  std::uint8_t raw[32];
  return zmq_z85_decode(raw, s.c_str()) != nullptr;
}

/// "public-key = ..." / "secret-key = ..." lines of a key file.
Expected<std::map<std::string, std::string>> read_key_lines(const fs::path& path) {
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) return Error{Errc::io, path.string() + ": cannot read: " + ec.message()};
  if (size > kMaxKeyFile) return Error{Errc::invalid_config, path.string() + ": too large for a key file"};
  std::ifstream in(path);
  if (!in) return Error{Errc::io, path.string() + ": cannot open"};
  std::map<std::string, std::string> out;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line.front() == '#') continue;
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    auto trim = [](std::string s) {
      const auto b = s.find_first_not_of(" \t\"");
      const auto e = s.find_last_not_of(" \t\"\r");
      return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
    };
    out[trim(line.substr(0, eq))] = trim(line.substr(eq + 1));
  }
  return out;
}

Expected<std::string> key_of(const std::map<std::string, std::string>& lines, const char* name,
                             const fs::path& path) {
  const auto it = lines.find(name);
  if (it == lines.end()) return Error{Errc::invalid_config, path.string() + ": no " + name + " line"};
  if (!is_z85_key(it->second)) {
    return Error{Errc::invalid_config, path.string() + ": " + name + " is not a Z85 Curve key (40 characters)"};
  }
  return it->second;
}

/// The process's ZAP handler: answers ZeroMQ's authentication requests (RFC 27) for the curve
/// servers of this process, each domain with its own authorized keys.
class ZapHandler {
 public:
  static ZapHandler& instance() {
    static auto* handler = new ZapHandler();  // never destroyed: its thread serves until exit
    return *handler;
  }

  void add(const std::string& domain, std::shared_ptr<AuthorizedKeys> keys) {
    std::lock_guard lock(mutex_);
    domains_[domain] = std::move(keys);
  }

 private:
  ZapHandler() : socket_(detail::zmq_context(), zmq::socket_type::rep) {
    socket_.bind("inproc://zeromq.zap.01");
    thread_ = std::thread([this] { serve(); });
    thread_.detach();
  }

  void serve() {
    while (true) {
      try {
        std::vector<zmq::message_t> request;
        zmq::message_t part;
        do {
          if (!socket_.recv(part)) break;
          const bool more = part.more();
          request.push_back(std::move(part));
          if (!more) break;
        } while (true);
        reply(request);
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) return;
      } catch (...) {
      }
    }
  }

  void reply(const std::vector<zmq::message_t>& request) {
    // version, request id, domain, address, identity, mechanism, credentials...
    std::string status = "400", text = "malformed request", user;
    std::string request_id;
    if (request.size() >= 2) request_id = request[1].to_string();
    if (request.size() >= 7 && request[0].to_string() == "1.0" && request[5].to_string() == "CURVE" &&
        request[6].size() == 32) {
      const std::string domain = request[2].to_string();
      const std::string address = request[3].to_string();
      char z85[kZ85Key + 1];
      zmq_z85_encode(z85, static_cast<const std::uint8_t*>(request[6].data()), 32);
      std::shared_ptr<AuthorizedKeys> keys;
      {
        std::lock_guard lock(mutex_);
        if (auto it = domains_.find(domain); it != domains_.end()) keys = it->second;
      }
      const auto name = keys ? keys->find(z85) : std::nullopt;
      if (name) {
        status = "200";
        text = "OK";
        user = *name;
      } else {
        text = "key not authorized";
        logger("security")->warn("refused a connection from {} to the {} endpoint: its key {} is not in {}",
                                 address.empty() ? "?" : address, domain, z85,
                                 keys ? keys->dir().string() : std::string("any authorized list"));
      }
    }
    const std::string frames[] = {"1.0", request_id, status, text, user, ""};
    for (std::size_t i = 0; i < 6; ++i) {
      socket_.send(zmq::buffer(frames[i]), i + 1 < 6 ? zmq::send_flags::sndmore : zmq::send_flags::none);
    }
  }

  zmq::socket_t socket_;
  std::thread thread_;
  std::mutex mutex_;
  std::map<std::string, std::shared_ptr<AuthorizedKeys>> domains_;
};

}  // namespace

Expected<CurveKeyPair> generate_curve_keypair() {
  char pub[kZ85Key + 1], sec[kZ85Key + 1];
  if (zmq_curve_keypair(pub, sec) != 0) {
    return Error{Errc::internal, std::string("cannot make a Curve key pair: ") + zmq_strerror(zmq_errno()) +
                                     " (is ZeroMQ built with libsodium?)"};
  }
  return CurveKeyPair{pub, sec};
}

Expected<void> write_curve_keypair(const fs::path& dir, const std::string& name, const CurveKeyPair& keys) {
  if (name.empty() || name.find('/') != std::string::npos || name.front() == '.') {
    return Error{Errc::invalid_argument, "'" + name + "' cannot name a key (no '/', not starting with '.')"};
  }
  std::error_code ec;
  if (!fs::exists(dir, ec)) {
    fs::create_directories(dir, ec);
    if (ec) return Error{Errc::io, dir.string() + ": cannot create: " + ec.message()};
    ::chmod(dir.c_str(), 0700);
  }
  const auto secret = dir / (name + ".key");
  const auto pub = dir / (name + ".pub");
  for (const auto& p : {secret, pub}) {
    if (fs::exists(p, ec)) return Error{Errc::invalid_argument, p.string() + " exists; not overwritten"};
  }
  const auto write = [](const fs::path& p, const std::string& text, ::mode_t mode) -> Expected<void> {
    // Created with its final mode: a secret key is never readable by others, not even briefly.
    const ::mode_t before = ::umask(0777 & ~mode);
    std::ofstream out(p, std::ios::trunc);
    ::umask(before);
    out << text;
    out.close();
    if (!out) return Error{Errc::io, p.string() + ": cannot write"};
    return {};
  };
  const std::string header = "# Flotilla Curve key of '" + name + "' (ZeroMQ Z85)\n";
  if (auto ok = write(secret, header + "# SECRET: never share this file\npublic-key = \"" + keys.public_key +
                                  "\"\nsecret-key = \"" + keys.secret_key + "\"\n",
                      0600);
      !ok) {
    return ok;
  }
  return write(pub, header + "public-key = \"" + keys.public_key + "\"\n", 0644);
}

Expected<CurveKeyPair> read_curve_secret(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    return Error{Errc::io, path.string() + ": no such key file (make one with `flotilla keygen`)"};
  }
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    return Error{Errc::invalid_config, path.string() + ": a secret key readable by others (mode " + mode +
                                           "); refused: run `chmod 600 " + path.string() + "`"};
  }
  if (st.st_uid != ::geteuid()) {
    return Error{Errc::invalid_config, path.string() + ": a secret key owned by another user; refused"};
  }
  auto lines = read_key_lines(path);
  if (!lines) return lines.error();
  auto pub = key_of(*lines, "public-key", path);
  if (!pub) return pub.error();
  auto sec = key_of(*lines, "secret-key", path);
  if (!sec) return sec.error();
  return CurveKeyPair{*pub, *sec};
}

Expected<std::string> read_curve_public(const fs::path& path) {
  auto lines = read_key_lines(path);
  if (!lines) return lines.error();
  return key_of(*lines, "public-key", path);
}

Expected<std::shared_ptr<AuthorizedKeys>> AuthorizedKeys::open(fs::path dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Error{Errc::io, dir.string() + ": no such directory of authorized keys (NAME.pub files)"};
  }
  std::shared_ptr<AuthorizedKeys> keys(new AuthorizedKeys(std::move(dir)));
  keys->reload_if_changed();
  return keys;
}

void AuthorizedKeys::reload_if_changed() {
  std::error_code ec;
  const auto stamp = fs::last_write_time(dir_, ec);
  if (ec || (stamp == seen_ && !names_.empty())) return;
  seen_ = stamp;
  std::map<std::string, std::string> names;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    if (e.path().extension() != ".pub") continue;
    auto key = read_curve_public(e.path());
    if (!key) {
      logger("security")->warn("skipped {}", key.error().message);
      continue;
    }
    names[*key] = e.path().stem().string();
  }
  names_ = std::move(names);
}

std::optional<std::string> AuthorizedKeys::find(const std::string& public_key) {
  std::lock_guard lock(mutex_);
  reload_if_changed();
  if (auto it = names_.find(public_key); it != names_.end()) return it->second;
  return std::nullopt;
}

std::size_t AuthorizedKeys::size() {
  std::lock_guard lock(mutex_);
  reload_if_changed();
  return names_.size();
}

namespace detail {
void authorize_domain(const std::string& domain, std::shared_ptr<AuthorizedKeys> authorized) {
  ZapHandler::instance().add(domain, std::move(authorized));
}
}  // namespace detail

}  // namespace flotilla
