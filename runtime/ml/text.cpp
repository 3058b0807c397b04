#include "runtime/ml/text.hpp"

#include "runtime/storage/durable.hpp"

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include <algorithm>
#include <cctype>
#include <map>

namespace flotilla {

std::vector<std::int64_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<std::int64_t> ids;
  ids.reserve(text.size());
  for (const char c : text) ids.push_back(static_cast<unsigned char>(c) + kOffset);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<std::int64_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  for (const auto id : ids) {
    if (id >= kOffset && id < vocab_size()) out.push_back(static_cast<char>(id - kOffset));
  }
  return out;
}

Expected<std::vector<InstructionRecord>> read_instructions(const std::filesystem::path& path,
                                                           const InstructionLimits& limits) {
  auto text = read_file(path, limits.max_file_bytes);
  if (!text) return text.error();
  std::vector<InstructionRecord> out;
  std::size_t line_no = 0, begin = 0;
  const std::string& all = *text;
  while (begin < all.size()) {
    auto end = all.find('\n', begin);
    if (end == std::string::npos) end = all.size();
    const std::string_view line(all.data() + begin, end - begin);
    begin = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
    const auto where = path.string() + ":" + std::to_string(line_no);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      return Error{Errc::malformed, where + ": not JSON: " + e.what()};
    }
    if (!j.is_object()) return Error{Errc::malformed, where + ": expected a JSON object per line"};
    InstructionRecord r;
    auto field = [&](const char* key, std::string& into, bool required) -> std::string {
      const auto it = j.find(key);
      if (it == j.end() || it->is_null()) return required ? std::string("lacks \"") + key + "\"" : "";
      if (!it->is_string()) return std::string("\"") + key + "\" is " + it->dump().substr(0, 40) + ", expected a string";
      into = it->get<std::string>();
      return "";
    };
    for (const auto& problem : {field("instruction", r.instruction, true), field("response", r.response, true),
                                field("context", r.context, false), field("category", r.category, false)}) {
      if (!problem.empty()) return Error{Errc::malformed, where + ": " + problem};
    }
    if (r.category.empty()) r.category = "general";
    if (out.size() >= limits.max_records) {
      return Error{Errc::malformed, path.string() + ": more than " + std::to_string(limits.max_records) + " records"};
    }
    out.push_back(std::move(r));
  }
  if (out.empty()) return Error{Errc::malformed, path.string() + ": no records"};
  return out;
}

std::string prompt_of(const InstructionRecord& r) {
  std::string p = "### Instruction:\n" + r.instruction + "\n\n";
  if (!r.context.empty()) p += "### Context:\n" + r.context + "\n\n";
  return p + "### Response:\n";
}

PromptParts prompt_parts(const InstructionRecord& r, const Tokenizer& tok) {
  PromptParts p;
  p.head = tok.encode("### Instruction:\n" + r.instruction + "\n\n");
  if (!r.context.empty()) p.context = tok.encode("### Context:\n" + r.context + "\n\n");
  p.cue = tok.encode("### Response:\n");
  return p;
}

std::vector<std::int64_t> fit_prompt(PromptParts parts, std::int64_t budget) {
  budget = std::max<std::int64_t>(budget, 0);
  auto over = parts.size() - budget;
  const auto size = [](const std::vector<std::int64_t>& v) { return static_cast<std::int64_t>(v.size()); };
  if (over > 0) {
    const auto cut = std::min(over, size(parts.context));
    parts.context.resize(static_cast<std::size_t>(size(parts.context) - cut));
    over -= cut;
  }
  if (over > 0) {
    const auto cut = std::min(over, size(parts.head));
    parts.head.erase(parts.head.begin(), parts.head.begin() + cut);
    over -= cut;
  }
  std::vector<std::int64_t> prompt = std::move(parts.head);
  prompt.insert(prompt.end(), parts.context.begin(), parts.context.end());
  prompt.insert(prompt.end(), parts.cue.begin(), parts.cue.end());
  if (over > 0) prompt.erase(prompt.begin(), prompt.begin() + over);  // the cue alone is too long: its end stays
  return prompt;
}

Expected<LmDataset> build_lm_dataset(const std::vector<InstructionRecord>& records, const Tokenizer& tok,
                                     std::int64_t max_length) {
  if (max_length < 4) {
    return Error{Errc::invalid_config, "the longest sequence must be at least 4 tokens, got " + std::to_string(max_length)};
  }
  LmDataset out;
  std::map<std::string, std::int64_t> index;
  for (const auto& r : records) index.emplace(r.category, 0);
  for (auto& [name, i] : index) {
    i = static_cast<std::int64_t>(out.categories.size());
    out.categories.push_back(name);
  }
  const auto n = static_cast<std::int64_t>(records.size());
  auto inputs = torch::full({n, max_length}, tok.pad(), torch::kInt64);
  auto labels = torch::full({n, max_length}, kIgnoreLabel, torch::kInt64);
  auto groups = torch::empty({n}, torch::kInt64);
  auto in = inputs.accessor<std::int64_t, 2>();
  auto lab = labels.accessor<std::int64_t, 2>();
  for (std::int64_t k = 0; k < n; ++k) {
    const auto& r = records[static_cast<std::size_t>(k)];
    const auto parts = prompt_parts(r, tok);
    auto response = tok.encode(r.response);
    response.push_back(tok.eos());
    // bos + prompt + response must fit: the prompt gets up to half the room (more if the
    // response leaves it); the response the rest, cut from its end.
    const std::int64_t room = max_length - 1;
    const auto keep_response =
        std::min<std::int64_t>(static_cast<std::int64_t>(response.size()), room - std::min(parts.size(), room / 2));
    const auto prompt = fit_prompt(parts, room - keep_response);
    std::int64_t t = 0;
    in[k][t++] = tok.bos();
    for (const auto id : prompt) in[k][t++] = id;
    for (std::int64_t i = 0; i < keep_response; ++i) {
      in[k][t] = response[static_cast<std::size_t>(i)];
      lab[k][t] = response[static_cast<std::size_t>(i)];
      ++t;
    }
    groups[k] = index.at(r.category);
  }
  out.data.inputs = inputs;
  out.data.labels = labels;
  out.data.groups = groups;
  out.data.num_classes = static_cast<std::int64_t>(out.categories.size());
  return out;
}

std::vector<std::int64_t> generate_greedy(Model& model, std::vector<std::int64_t> ids, std::int64_t max_new_tokens,
                                          std::int64_t eos) {
  torch::NoGradGuard no_grad;
  auto* module = static_cast<torch::nn::Module*>(model.module());
  const bool was_training = module->is_training();
  module->eval();
  const auto longest = model.spec().name == "llama" ? model.spec().lm.max_positions : std::numeric_limits<std::int64_t>::max();
  std::vector<std::int64_t> out;
  for (std::int64_t step = 0; step < max_new_tokens && static_cast<std::int64_t>(ids.size()) < longest; ++step) {
    const auto logits = model.forward(torch::tensor(ids, torch::kInt64).unsqueeze(0));
    const auto next = logits[0][static_cast<std::int64_t>(ids.size()) - 1].argmax().item<std::int64_t>();
    if (next == eos) break;
    ids.push_back(next);
    out.push_back(next);
  }
  module->train(was_training);
  return out;
}

namespace {

std::vector<std::string> words(std::string_view text) {
  std::vector<std::string> out;
  std::string w;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    // As Google's rouge_score: ASCII letters and digits make words, anything else separates.
    if (u < 0x80 && std::isalnum(u) != 0) {
      w.push_back(static_cast<char>(std::tolower(u)));
    } else if (!w.empty()) {
      out.push_back(std::move(w));
      w.clear();
    }
  }
  if (!w.empty()) out.push_back(std::move(w));
  return out;
}

}  // namespace

RougeL rouge_l(std::string_view candidate, std::string_view reference) {
  const auto c = words(candidate), r = words(reference);
  if (c.empty() && r.empty()) return {1, 1, 1};
  if (c.empty() || r.empty()) return {};
  // The longest common subsequence, one row at a time.
  std::vector<std::size_t> prev(r.size() + 1, 0), row(r.size() + 1, 0);
  for (std::size_t i = 1; i <= c.size(); ++i) {
    for (std::size_t j = 1; j <= r.size(); ++j) {
      row[j] = c[i - 1] == r[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], row[j - 1]);
    }
    std::swap(prev, row);
  }
  const auto lcs = static_cast<double>(prev[r.size()]);
  RougeL out;
  out.precision = lcs / static_cast<double>(c.size());
  out.recall = lcs / static_cast<double>(r.size());
  out.f1 = lcs == 0 ? 0 : 2 * out.precision * out.recall / (out.precision + out.recall);
  return out;
}

}  // namespace flotilla
