#include "runtime/net/security.hpp"

#include "runtime/base/log.hpp"
#include "runtime/net/context.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.hpp>

#include <cerrno>
#include <chrono>
#include <cstring>
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

/// "public-key = ..." / "secret-key = ..." lines of a key file, read through one descriptor
/// (no symlink followed, a FIFO never blocks, at most kMaxKeyFile bytes). `secret`: refused
/// unless it is this user's and nobody else may read it (checked on the file that is read).
Expected<std::map<std::string, std::string>> read_key_lines(const fs::path& path, bool secret) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    return Error{Errc::io, path.string() + ": " + std::strerror(errno) +
                               (secret ? " (make a key with `flotilla keygen`)" : "")};
  }
  struct stat st {};
  std::string text;
  std::optional<Error> problem;
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    problem = Error{Errc::invalid_config, path.string() + ": not a regular file"};
  } else if (static_cast<std::uintmax_t>(st.st_size) > kMaxKeyFile) {
    problem = Error{Errc::invalid_config, path.string() + ": too large for a key file"};
  } else if (secret && (st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%03o", static_cast<unsigned>(st.st_mode & 0777));
    problem = Error{Errc::invalid_config, path.string() + ": a secret key readable by others (mode " + mode +
                                              "); refused: run `chmod 600 " + path.string() + "`"};
  } else if (secret && st.st_uid != ::geteuid()) {
    problem = Error{Errc::invalid_config, path.string() + ": a secret key owned by another user; refused"};
  } else {
    text.resize(kMaxKeyFile);
    const auto n = ::read(fd, text.data(), text.size());
    text.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  }
  ::close(fd);
  if (problem) return *problem;
  std::map<std::string, std::string> out;
  std::istringstream in(text);
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
        // Every request gets its reply, whatever deciding it throws: a REP socket left without
        // one would refuse every later request (and so every handshake).
        Decision d;
        try {
          d = decide(request);
        } catch (const std::exception& e) {
          d = Decision{"500", std::string("internal error: ") + e.what(), ""};
          logger("security")->error("authorizing a connection failed: {}", e.what());
        }
        const std::string request_id = request.size() >= 2 ? request[1].to_string() : "";
        const std::string frames[] = {"1.0", request_id, d.status, d.text, d.user, ""};
        for (std::size_t i = 0; i < 6; ++i) {
          socket_.send(zmq::buffer(frames[i]), i + 1 < 6 ? zmq::send_flags::sndmore : zmq::send_flags::none);
        }
      } catch (const zmq::error_t& e) {
        if (e.num() == ETERM) return;
        // Out of step (EFSM) or broken: a fresh socket on the same address.
        logger("security")->error("the authentication handler's socket failed ({}); reopened", e.what());
        try {
          socket_ = zmq::socket_t(detail::zmq_context(), zmq::socket_type::rep);
          socket_.bind("inproc://zeromq.zap.01");
        } catch (...) {
          std::this_thread::sleep_for(std::chrono::milliseconds(100));
        }
      } catch (...) {
      }
    }
  }

  struct Decision {
    std::string status = "400";
    std::string text = "malformed request";
    std::string user;
  };

  Decision decide(const std::vector<zmq::message_t>& request) {
    // version, request id, domain, address, identity, mechanism, credentials...
    Decision d;
    auto& [status, text, user] = d;
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
        // At most every 5 s per endpoint: a stranger can retry as fast as it likes.
        const std::string what = fmt::format(
            "refused a connection from {} to the {} endpoint: its key {} is not in {}",
            address.empty() ? "?" : address, domain, z85,
            keys ? keys->dir().string() : std::string("any authorized list"));
        warn_throttled(*logger("security"), refusal_log_[domain], std::chrono::steady_clock::now(), what);
      }
    }
    return d;
  }

  zmq::socket_t socket_;
  std::thread thread_;
  std::map<std::string, LogThrottle> refusal_log_;  ///< per domain; the handler's thread only
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
  if (name.empty() || name.size() > 200 || name.find('/') != std::string::npos || name.front() == '.') {
    return Error{Errc::invalid_argument,
                 "'" + name + "' cannot name a key (1 to 200 bytes, no '/', not starting with '.')"};
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
    // Created exclusively with its final mode (a secret key is never readable by others, not
    // even briefly), through no symlink.
    const int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0) return Error{Errc::io, p.string() + ": cannot create: " + std::strerror(errno)};
    const bool ok = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size()) &&
                    ::fsync(fd) == 0;
    ::close(fd);
    if (!ok) return Error{Errc::io, p.string() + ": cannot write"};
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
  auto lines = read_key_lines(path, true);
  if (!lines) return lines.error();
  auto pub = key_of(*lines, "public-key", path);
  if (!pub) return pub.error();
  auto sec = key_of(*lines, "secret-key", path);
  if (!sec) return sec.error();
  char derived[kZ85Key + 1];
  if (zmq_curve_public(derived, sec->c_str()) != 0 || *pub != derived) {
    return Error{Errc::invalid_config, path.string() + ": its public key is not the secret key's"};
  }
  return CurveKeyPair{*pub, *sec};
}

Expected<std::string> read_curve_public(const fs::path& path) {
  auto lines = read_key_lines(path, false);
  if (!lines) return lines.error();
  return key_of(*lines, "public-key", path);
}

Expected<std::shared_ptr<AuthorizedKeys>> AuthorizedKeys::open(fs::path dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Error{Errc::io, dir.string() + ": no such directory of authorized keys (NAME.pub files)"};
  }
  struct stat st {};
  if (::stat(dir.c_str(), &st) == 0 && (st.st_mode & 022) != 0) {
    logger("security")->warn("{}: others may write this directory of authorized keys, and so let "
                             "anyone in; make it owner-writable only (chmod go-w)", dir.string());
  }
  std::shared_ptr<AuthorizedKeys> keys(new AuthorizedKeys(std::move(dir)));
  std::lock_guard lock(keys->mutex_);
  keys->reload_if_changed();
  return keys;
}

void AuthorizedKeys::reload_if_changed() {
  // What the directory holds now: every .pub's name, size and modification time. Compared
  // whole (not the directory's own time), so a key written after its file was created, or two
  // changes within one tick, are seen at the next handshake.
  std::string listing;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    if (e.path().extension() != ".pub") continue;
    std::error_code fe;
    const auto size = e.file_size(fe);
    const auto time = e.last_write_time(fe);
    listing += e.path().filename().string() + ':' + std::to_string(size) + ':' +
               std::to_string(time.time_since_epoch().count()) + '\n';
  }
  if (ec || (loaded_ && listing == listing_)) return;
  listing_ = std::move(listing);
  loaded_ = true;
  std::map<std::string, std::string> names;
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    if (e.path().extension() != ".pub") continue;
    auto key = read_curve_public(e.path());
    if (!key) {
      logger("security")->warn("skipped {}", key.error().message);
      continue;
    }
    const auto name = e.path().stem().string();
    if (auto [it, fresh] = names.emplace(*key, name); !fresh) {
      logger("security")->warn("{}: the key of '{}' is also '{}'s; refused for both", dir_.string(), name,
                               it->second);
      it->second.clear();
    }
  }
  std::erase_if(names, [](const auto& kv) { return kv.second.empty(); });
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
