#include "runtime/server/peer_registry.hpp"

#include <algorithm>

namespace flotilla {

void PeerRegistry::link(Entry& e, const std::string& id) {
  e.id = &id;
  e.older = newest_;
  e.newer = nullptr;
  if (newest_ != nullptr) newest_->newer = &e;
  newest_ = &e;
  if (oldest_ == nullptr) oldest_ = &e;
}

void PeerRegistry::unlink(Entry& e) {
  (e.older != nullptr ? e.older->newer : oldest_) = e.newer;
  (e.newer != nullptr ? e.newer->older : newest_) = e.older;
  e.older = e.newer = nullptr;
}

bool PeerRegistry::add(const std::string& peer, const Hello& hello) {
  auto live = peers_.find(peer);
  const bool known = live != peers_.end() || gone_.erase(peer) > 0;
  if (live != peers_.end()) {
    forget(live->second.peer.role, peer);
    unlink(live->second);
  }
  auto [it, inserted] = peers_.try_emplace(peer);
  it->second.peer = Peer{hello.role, hello.client_id, hello.num_examples, clock_.now()};
  link(it->second, it->first);
  count(hello.role, peer);
  return known;
}

bool PeerRegistry::heard_from(const std::string& peer) {
  if (auto it = peers_.find(peer); it != peers_.end()) {
    it->second.peer.last_seen = clock_.now();
    unlink(it->second);
    link(it->second, it->first);
    return false;
  }
  auto g = gone_.find(peer);
  if (g == gone_.end()) return false;
  g->second.last_seen = clock_.now();
  count(g->second.role, peer);
  auto [it, inserted] = peers_.try_emplace(peer);
  it->second.peer = g->second;
  link(it->second, it->first);
  gone_.erase(g);
  return true;
}

bool PeerRegistry::set_aside(const std::string& peer) {
  auto it = peers_.find(peer);
  if (it == peers_.end()) return false;
  forget(it->second.peer.role, peer);
  unlink(it->second);
  gone_.emplace(peer, it->second.peer);
  peers_.erase(it);
  return true;
}

std::vector<std::string> PeerRegistry::silent(
    Duration timeout, const std::function<bool(const std::string&)>& exempt) const {
  std::vector<std::string> out;
  const auto now = clock_.now();
  for (const Entry* e = oldest_; e != nullptr && now - e->peer.last_seen > timeout; e = e->newer) {
    if (!(exempt && exempt(*e->id))) out.push_back(*e->id);
  }
  std::sort(out.begin(), out.end());
  return out;
}

const PeerRegistry::Peer* PeerRegistry::find(const std::string& peer) const {
  auto it = peers_.find(peer);
  return it == peers_.end() ? nullptr : &it->second.peer;
}

const PeerRegistry::Peer* PeerRegistry::find_any(const std::string& peer) const {
  if (const auto* p = find(peer)) return p;
  auto it = gone_.find(peer);
  return it == gone_.end() ? nullptr : &it->second;
}

std::vector<std::string> PeerRegistry::clients() const {
  std::vector<std::string> out;
  for (const auto& [id, p] : peers_) {
    if (p.peer.role == Role::client) out.push_back(id);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::optional<std::string> PeerRegistry::evaluator() const {
  if (evaluators_.empty()) return std::nullopt;
  return *evaluators_.begin();
}

void PeerRegistry::count(Role role, const std::string& peer) {
  if (role == Role::client) ++live_clients_;
  if (role == Role::evaluator) evaluators_.insert(peer);
}

void PeerRegistry::forget(Role role, const std::string& peer) {
  if (role == Role::client) --live_clients_;
  if (role == Role::evaluator) evaluators_.erase(peer);
}

std::vector<std::string> PeerRegistry::all() const {
  std::vector<std::string> out;
  for (const auto& [id, p] : peers_) out.push_back(id);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::string> PeerRegistry::everyone() const {
  std::vector<std::string> out = all();
  for (const auto& [id, p] : gone_) out.push_back(id);
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<std::pair<std::string, PeerRegistry::Peer>> PeerRegistry::entries() const {
  std::vector<std::pair<std::string, Peer>> out;
  out.reserve(known());
  for (const auto& [id, e] : peers_) out.emplace_back(id, e.peer);
  for (const auto& [id, p] : gone_) out.emplace_back(id, p);
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void PeerRegistry::restore(const std::string& peer, const Peer& known) {
  if (peers_.contains(peer)) return;
  gone_[peer] = known;
}

}  // namespace flotilla
