#pragma once
/// Who takes part in a run: registered clients and evaluators, when each was last heard from,
/// and those set aside after a silence (re-admitted as soon as they are heard from again).
/// Every schedule holds one; it decides nothing about work.
#include "runtime/base/clock.hpp"
#include "runtime/protocol/message.hpp"

#include <cstdint>
#include <functional>
#include <set>
#include <unordered_map>
#include <optional>
#include <string>
#include <vector>

namespace flotilla {

class PeerRegistry {
 public:
  struct Peer {
    Role role = Role::client;
    std::uint32_t client_id = 0;
    std::uint64_t num_examples = 0;
    Clock::time_point last_seen;
  };

  explicit PeerRegistry(const Clock& clock) : clock_(clock) {}
  PeerRegistry(const PeerRegistry&) = delete;
  PeerRegistry& operator=(const PeerRegistry&) = delete;

  /// Registers `peer` (again, if known or set aside); true if it was known before.
  bool add(const std::string& peer, const Hello& hello);
  /// `peer` was heard from now; true if that re-admits a peer that had been set aside.
  bool heard_from(const std::string& peer);
  /// Sets a live peer aside until it is heard from again; false if it is not live.
  bool set_aside(const std::string& peer);
  /// Live peers silent for longer than `timeout`, except those `exempt` says may be silent
  /// (e.g. training without heartbeats), sorted. Costs what it finds (and the exempt), not the
  /// number of peers: live peers are kept in the order they were last heard from.
  [[nodiscard]] std::vector<std::string> silent(Duration timeout,
                                                const std::function<bool(const std::string&)>& exempt) const;

  [[nodiscard]] const Peer* find(const std::string& peer) const;
  /// Also finds peers set aside (their client id stays known).
  [[nodiscard]] const Peer* find_any(const std::string& peer) const;
  [[nodiscard]] bool live(const std::string& peer) const { return peers_.contains(peer); }
  /// Live clients' routing ids, sorted.
  [[nodiscard]] std::vector<std::string> clients() const;
  [[nodiscard]] std::size_t live_clients() const { return live_clients_; }
  /// Peers known, live or set aside.
  [[nodiscard]] std::size_t known() const { return peers_.size() + gone_.size(); }
  [[nodiscard]] std::optional<std::string> evaluator() const;
  /// Every live peer (clients and evaluators).
  [[nodiscard]] std::vector<std::string> all() const;
  /// Every peer ever registered, live or set aside (who must hear that the run is over).
  [[nodiscard]] std::vector<std::string> everyone() const;
  /// Every peer known, live or set aside, with what is known of it, sorted by id.
  [[nodiscard]] std::vector<std::pair<std::string, Peer>> entries() const;
  /// Adds a peer known from a checkpoint, set aside: live again as soon as it is heard from.
  void restore(const std::string& peer, const Peer& known);

 private:
  void count(Role role, const std::string& peer);
  void forget(Role role, const std::string& peer);

  /// A live peer, linked into the list of live peers from the longest silent to the most
  /// recently heard (the clock never goes back, so the list stays ordered by last_seen).
  struct Entry {
    Peer peer;
    Entry* older = nullptr;
    Entry* newer = nullptr;
    const std::string* id = nullptr;  ///< its key in peers_ (node addresses are stable)
  };
  void link(Entry& e, const std::string& id);
  void unlink(Entry& e);

  const Clock& clock_;
  // Hashed: a heartbeat from one of a million peers costs one lookup, not twenty string
  // comparisons; the lists above are sorted where their order matters.
  std::unordered_map<std::string, Entry> peers_;
  Entry* oldest_ = nullptr;
  Entry* newest_ = nullptr;
  std::unordered_map<std::string, Peer> gone_;
  std::size_t live_clients_ = 0;    ///< clients in peers_
  std::set<std::string> evaluators_;  ///< evaluators in peers_
};

}  // namespace flotilla
