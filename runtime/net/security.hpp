#pragma once
/// CurveZMQ for every link (security.mode = "curve", docs/security.md): each peer has a key
/// pair, the aggregator knows the public keys it accepts (a directory of NAME.pub files, the
/// name being the peer's id), and a peer can only speak under the id its key is authorized
/// for. Keys are Z85 text (40 characters), as ZeroMQ writes them.
#include "runtime/base/error.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>

namespace flotilla {

struct CurveKeyPair {
  std::string public_key;  ///< Z85, 40 characters
  std::string secret_key;
};

/// A new key pair (libsodium through ZeroMQ).
[[nodiscard]] Expected<CurveKeyPair> generate_curve_keypair();

/// Writes `dir`/NAME.key (both keys, owner read/write only) and `dir`/NAME.pub (the public
/// key, to hand out); refuses to overwrite either. Creates `dir` (owner-only) if missing.
[[nodiscard]] Expected<void> write_curve_keypair(const std::filesystem::path& dir,
                                                 const std::string& name, const CurveKeyPair& keys);

/// Reads a NAME.key file. A file that others may read (group or other permission bits), or
/// that is not this user's, is refused with the reason: a secret key must stay secret.
[[nodiscard]] Expected<CurveKeyPair> read_curve_secret(const std::filesystem::path& path);
/// Reads a NAME.pub (or NAME.key: its public key).
[[nodiscard]] Expected<std::string> read_curve_public(const std::filesystem::path& path);

/// The public keys a server accepts, from a directory of NAME.pub files (NAME: the id a peer
/// with that key must use). Read again when the directory changes (a key added or removed
/// takes effect for the next connection, without a restart).
class AuthorizedKeys {
 public:
  /// Errc::io if `dir` cannot be read; a file that is not a key is skipped with a warning.
  [[nodiscard]] static Expected<std::shared_ptr<AuthorizedKeys>> open(std::filesystem::path dir);

  /// The id `public_key` (Z85) is authorized as; nothing if it is not on the list.
  [[nodiscard]] std::optional<std::string> find(const std::string& public_key);
  [[nodiscard]] std::size_t size();
  [[nodiscard]] const std::filesystem::path& dir() const { return dir_; }

 private:
  explicit AuthorizedKeys(std::filesystem::path dir) : dir_(std::move(dir)) {}
  void reload_if_changed();

  std::filesystem::path dir_;
  std::mutex mutex_;
  std::string listing_;  ///< the .pub files' names, sizes and times when last read
  bool loaded_ = false;
  std::map<std::string, std::string> names_;  ///< public key -> id
};

/// A server's side of CurveZMQ: its key pair and who may connect (ZAP, RFC 27).
struct CurveServer {
  CurveKeyPair keys;
  std::shared_ptr<AuthorizedKeys> authorized;
  /// Names the endpoint in logs and separates the authorization of its connections from
  /// another endpoint's in the same process ("clients", "admin").
  std::string domain = "clients";
};

/// A client's side: its key pair and the server's public key.
struct CurveClient {
  CurveKeyPair keys;
  std::string server_public_key;
};

namespace detail {
/// Serves ZeroMQ's authentication requests for `domain` in this process with `authorized`
/// (a ZAP handler on the process-wide context, started once). Refusals are logged.
void authorize_domain(const std::string& domain, std::shared_ptr<AuthorizedKeys> authorized);
}  // namespace detail

}  // namespace flotilla
