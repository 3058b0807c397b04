#include "runtime/ml/sentencepiece.hpp"

#include "runtime/base/log.hpp"
#include "runtime/storage/durable.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <queue>

namespace flotilla {
namespace {

/// The protobuf wire format, read with every length checked against what is left.
struct Wire {
  explicit Wire(std::span<const std::byte> b) : bytes(b) {}
  std::span<const std::byte> bytes;
  std::size_t at = 0;
  std::string problem;

  [[nodiscard]] bool done() const { return at >= bytes.size() || !problem.empty(); }
  std::uint64_t varint() {
    std::uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (at >= bytes.size()) {
        problem = "a number runs past the end";
        return 0;
      }
      const auto b = static_cast<std::uint8_t>(bytes[at++]);
      v |= static_cast<std::uint64_t>(b & 0x7F) << shift;
      if ((b & 0x80) == 0) return v;
    }
    problem = "a number longer than 10 bytes";
    return 0;
  }
  std::span<const std::byte> field_bytes() {
    const auto n = varint();
    if (!problem.empty()) return {};
    if (n > bytes.size() - at) {
      problem = fmt::format("a field of {} bytes where {} are left", n, bytes.size() - at);
      return {};
    }
    const auto out = bytes.subspan(at, n);
    at += n;
    return out;
  }
  float fixed32() {
    if (bytes.size() - at < 4) {
      problem = "a float runs past the end";
      return 0;
    }
    std::uint32_t raw = 0;
    for (int i = 0; i < 4; ++i) raw |= static_cast<std::uint32_t>(static_cast<std::uint8_t>(bytes[at + i])) << (8 * i);
    at += 4;
    float f = 0;
    std::memcpy(&f, &raw, 4);
    return f;
  }
  /// Reads the next tag: the field number and its wire type.
  std::pair<std::uint64_t, int> tag() {
    const auto t = varint();
    return {t >> 3, static_cast<int>(t & 7)};
  }
  void skip(int wire_type) {
    switch (wire_type) {
      case 0: (void)varint(); break;
      case 1:
        if (bytes.size() - at < 8) problem = "a field runs past the end";
        else at += 8;
        break;
      case 2: (void)field_bytes(); break;
      case 5: (void)fixed32(); break;
      default: problem = fmt::format("wire type {} (not a SentencePiece model)", wire_type);
    }
  }
};

std::string as_string(std::span<const std::byte> b) { return {reinterpret_cast<const char*>(b.data()), b.size()}; }

const std::string kSpace = "\xE2\x96\x81";  // U+2581, what SentencePiece writes for a space

/// The length of the UTF-8 character starting at s[i] (1 for a stray byte).
std::size_t utf8_length(std::string_view s, std::size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  const std::size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
  return std::min(n, s.size() - i);
}

}  // namespace

Expected<SentencePieceTokenizer> SentencePieceTokenizer::parse(std::span<const std::byte> bytes, const std::string& where) {
  auto bad = [&](const std::string& why) {
    return Error{Errc::invalid_config, where + ": not a SentencePiece model (tokenizer.model): " + why};
  };
  SentencePieceTokenizer t;
  std::int64_t model_type = 1;  // UNIGRAM, the format's default
  Wire top{bytes};
  while (!top.done()) {
    const auto [field, type] = top.tag();
    if (!top.problem.empty()) break;
    if (field == 1 && type == 2) {  // SentencePiece piece
      Wire p{top.field_bytes()};
      Piece piece;
      while (!p.done()) {
        const auto [f, w] = p.tag();
        if (f == 1 && w == 2) piece.text = as_string(p.field_bytes());
        else if (f == 2 && w == 5) piece.score = p.fixed32();
        else if (f == 3 && w == 0) {
          const auto v = p.varint();
          if (v < 1 || v > 6) return bad(fmt::format("piece {} has type {}", t.pieces_.size(), v));
          piece.type = static_cast<Type>(v);
        } else p.skip(w);
      }
      if (!p.problem.empty()) return bad(fmt::format("piece {}: {}", t.pieces_.size(), p.problem));
      if (t.pieces_.size() >= 10'000'000) return bad("more than 10,000,000 pieces");
      t.pieces_.push_back(std::move(piece));
    } else if (field == 2 && type == 2) {  // TrainerSpec
      Wire s{top.field_bytes()};
      while (!s.done()) {
        const auto [f, w] = s.tag();
        if (w != 0) {
          s.skip(w);
          continue;
        }
        const auto v = static_cast<std::int64_t>(static_cast<std::int32_t>(s.varint()));
        if (f == 3) model_type = v;
        else if (f == 35) t.byte_fallback_ = v != 0;
        else if (f == 40) t.unk_ = v;
        else if (f == 41) t.bos_ = v;
        else if (f == 42) t.eos_ = v;
        else if (f == 43) t.pad_ = v;
      }
      if (!s.problem.empty()) return bad("trainer_spec: " + s.problem);
    } else if (field == 3 && type == 2) {  // NormalizerSpec
      Wire n{top.field_bytes()};
      while (!n.done()) {
        const auto [f, w] = n.tag();
        if (f == 1 && w == 2) t.normalizer_ = as_string(n.field_bytes());
        else if (f == 3 && w == 0) t.add_dummy_prefix_ = n.varint() != 0;
        else if (f == 4 && w == 0) t.remove_extra_whitespaces_ = n.varint() != 0;
        else if (f == 5 && w == 0) t.escape_whitespaces_ = n.varint() != 0;
        else n.skip(w);
      }
      if (!n.problem.empty()) return bad("normalizer_spec: " + n.problem);
    } else {
      top.skip(type);
    }
  }
  if (!top.problem.empty()) return bad(top.problem);
  if (t.pieces_.empty()) return bad("it has no pieces");
  if (model_type != 2) {
    static const char* names[] = {"?", "unigram", "bpe", "word", "char"};
    return Error{Errc::invalid_config,
                 where + ": a SentencePiece " + (model_type >= 1 && model_type <= 4 ? names[model_type] : "unknown") +
                     " model; Flotilla applies BPE models (what LLaMA-family checkpoints ship)"};
  }
  const auto n = static_cast<std::int64_t>(t.pieces_.size());
  for (const auto id : {t.unk_, t.bos_, t.eos_}) {
    if (id >= n) return bad(fmt::format("a special token id {} is past its {} pieces", id, n));
  }
  if (t.unk_ < 0) return bad("it has no unknown-token piece");
  if (t.bos_ < 0 || t.eos_ < 0) return bad("it has no bos or eos piece (a language model's prompts need both)");
  if (t.pad_ >= n) return bad(fmt::format("the pad id {} is past its {} pieces", t.pad_, n));
  t.byte_ids_.assign(256, -1);
  for (std::int64_t id = 0; id < n; ++id) {
    const auto& p = t.pieces_[static_cast<std::size_t>(id)];
    if (p.type == Type::normal || p.type == Type::user_defined) t.merge_ids_.emplace(p.text, id);
    if (p.type == Type::user_defined) t.user_defined_.push_back(p.text);
    if (p.type == Type::byte) {
      unsigned value = 0;
      if (p.text.size() != 6 || std::sscanf(p.text.c_str(), "<0x%2X>", &value) != 1 || value > 255) {
        return bad("byte piece '" + p.text.substr(0, 16) + "' is not <0xNN>");
      }
      t.byte_ids_[value] = id;
    }
  }
  if (t.byte_fallback_ && std::count(t.byte_ids_.begin(), t.byte_ids_.end(), -1) > 0) {
    return bad("byte_fallback is on but not every <0xNN> piece is there");
  }
  std::sort(t.user_defined_.begin(), t.user_defined_.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  if (t.normalizer_ != "identity") {
    logger("tokenizer")->warn("{}: normalizer '{}' is applied as identity (text outside ASCII may tokenize "
                              "differently from SentencePiece)", where, t.normalizer_);
  }
  return t;
}

Expected<SentencePieceTokenizer> SentencePieceTokenizer::load(const std::filesystem::path& path) {
  auto bytes = read_file(path, 64u << 20);
  if (!bytes) return Error{Errc::invalid_config, "data.tokenizer-model: " + bytes.error().message};
  return parse(std::as_bytes(std::span(bytes->data(), bytes->size())), path.string());
}

std::vector<std::int64_t> SentencePieceTokenizer::encode(std::string_view text) const {
  // Normalize: extra spaces dropped, a space in front, spaces written as U+2581.
  std::string s;
  if (remove_extra_whitespaces_) {
    bool space = true;  // leading spaces go
    for (const char c : text) {
      if (c == ' ') {
        if (!space) s += ' ';
        space = true;
      } else {
        s += c;
        space = false;
      }
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
  } else {
    s = text;
  }
  if (s.empty()) return {};
  if (add_dummy_prefix_) s.insert(s.begin(), ' ');
  std::string normalized;
  for (const char c : s) {
    if (c == ' ' && escape_whitespaces_) normalized += kSpace;
    else normalized += c;
  }
  // Symbols: user-defined pieces whole, else one UTF-8 character each.
  struct Symbol {
    std::size_t begin, length;
    int prev, next;
    bool frozen;  // a user-defined piece: never merged with its neighbours
  };
  std::vector<Symbol> sym;
  for (std::size_t i = 0; i < normalized.size();) {
    std::size_t len = 0;
    for (const auto& u : user_defined_) {
      if (normalized.compare(i, u.size(), u) == 0) {
        len = u.size();
        break;
      }
    }
    const bool user = len > 0;
    if (len == 0) len = utf8_length(normalized, i);
    const int k = static_cast<int>(sym.size());
    sym.push_back({i, len, k - 1, k + 1, user});
    i += len;
  }
  sym.back().next = -1;
  // Merges, best score first, leftmost first among equals; stale candidates are skipped.
  struct Candidate {
    float score;
    int left, right;
    std::size_t length;  // of the merged piece: a symbol that changed since no longer matches
  };
  auto worse = [](const Candidate& a, const Candidate& b) {
    return a.score < b.score || (a.score == b.score && a.left > b.left);
  };
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse);
  auto consider = [&](int left, int right) {
    if (left < 0 || right < 0 || sym[left].frozen || sym[right].frozen) return;
    const auto length = sym[left].length + sym[right].length;
    const auto it = merge_ids_.find(normalized.substr(sym[left].begin, length));
    if (it == merge_ids_.end()) return;
    queue.push({pieces_[static_cast<std::size_t>(it->second)].score, left, right, length});
  };
  for (std::size_t i = 0; i + 1 < sym.size(); ++i) consider(static_cast<int>(i), static_cast<int>(i + 1));
  while (!queue.empty()) {
    const auto c = queue.top();
    queue.pop();
    auto& l = sym[c.left];
    auto& r = sym[c.right];
    if (l.length == 0 || r.length == 0 || l.next != c.right || l.length + r.length != c.length) continue;
    l.length += r.length;
    r.length = 0;
    l.next = r.next;
    if (r.next >= 0) sym[r.next].prev = c.left;
    consider(l.prev, c.left);
    consider(c.left, l.next);
  }
  std::vector<std::int64_t> ids;
  for (int i = 0; i >= 0; i = sym[i].next) {
    const auto piece = normalized.substr(sym[i].begin, sym[i].length);
    if (const auto it = merge_ids_.find(piece); it != merge_ids_.end()) {
      ids.push_back(it->second);
    } else if (byte_fallback_) {
      for (const char b : piece) ids.push_back(byte_ids_[static_cast<unsigned char>(b)]);
    } else if (ids.empty() || ids.back() != unk_) {
      ids.push_back(unk_);  // a run of unknown characters is one unknown token, as SentencePiece writes it
    }
  }
  return ids;
}

std::string SentencePieceTokenizer::decode(const std::vector<std::int64_t>& ids) const {
  std::string out;
  for (const auto id : ids) {
    if (id < 0 || id >= vocab_size()) continue;
    const auto& p = pieces_[static_cast<std::size_t>(id)];
    switch (p.type) {
      case Type::byte: out += static_cast<char>(std::stoi(p.text.substr(3, 2), nullptr, 16)); break;
      case Type::unknown: out += " \xE2\x81\x87 "; break;  // " ⁇ ", as SentencePiece shows it
      case Type::control: break;
      default: out += p.text;
    }
  }
  std::string text;
  for (std::size_t i = 0; i < out.size();) {
    if (out.compare(i, kSpace.size(), kSpace) == 0) {
      text += ' ';
      i += kSpace.size();
    } else {
      text += out[i++];
    }
  }
  if (add_dummy_prefix_ && !text.empty() && text.front() == ' ') text.erase(0, 1);
  return text;
}

Expected<std::unique_ptr<Tokenizer>> make_tokenizer(const std::string& kind, const std::string& model_path) {
  if (kind == "bytes") return std::unique_ptr<Tokenizer>(std::make_unique<ByteTokenizer>());
  if (kind == "sentencepiece") {
    if (model_path.empty()) {
      return Error{Errc::invalid_config, "data.tokenizer \"sentencepiece\" needs data.tokenizer-model (a tokenizer.model file)"};
    }
    auto t = SentencePieceTokenizer::load(model_path);
    if (!t) return t.error();
    return std::unique_ptr<Tokenizer>(std::make_unique<SentencePieceTokenizer>(std::move(t).value()));
  }
  return Error{Errc::invalid_config, "unknown data.tokenizer \"" + kind + "\": expected \"bytes\" or \"sentencepiece\""};
}

}  // namespace flotilla
