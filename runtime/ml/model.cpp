#include "runtime/ml/model.hpp"

#include "runtime/ml/layers.hpp"
#include "runtime/ml/llama.hpp"
#include "runtime/ml/vit.hpp"
#include "runtime/storage/durable.hpp"
#include "runtime/storage/safetensors.hpp"

#include <nlohmann/json.hpp>

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <fnmatch.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <mutex>
#include <set>

namespace flotilla {
namespace {

using detail::LoraLinear;
using detail::Net;

/// flatten -> hidden -> ReLU -> hidden -> ReLU -> classes.
struct Mlp : Net {
  explicit Mlp(const ModelSpec& s)
      : fc1(linear("fc1", s.input_channels * s.input_size * s.input_size, s.hidden)),
        fc2(linear("fc2", s.hidden, s.hidden)),
        fc3(linear("fc3", s.hidden, s.num_classes)) {}
  torch::Tensor forward(const torch::Tensor& x) override {
    auto h = torch::relu(fc1->forward(x.flatten(1)));
    h = torch::relu(fc2->forward(h));
    return fc3->forward(h);
  }
  std::shared_ptr<LoraLinear> fc1, fc2, fc3;
};

/// Two 3x3 conv + 2x2 max-pool stages (8 then 16 channels), then one hidden fully connected
/// layer. Chosen by bench/baseline_bench: 8 clients on Dirichlet(0.5) Fashion-MNIST reach 80%
/// test accuracy in ~7-9 s on one core; the 16/32-channel 5x5 variant takes ~2.5x longer per
/// round (convolutions dominate) for no fewer rounds.
struct Cnn : Net {
  explicit Cnn(const ModelSpec& s)
      : conv1(register_module(
            "conv1",
            torch::nn::Conv2d(
                torch::nn::Conv2dOptions(s.input_channels, kC1, kKernel).padding(kKernel / 2)))),
        conv2(register_module(
            "conv2",
            torch::nn::Conv2d(torch::nn::Conv2dOptions(kC1, kC2, kKernel).padding(kKernel / 2)))),
        fc1(linear("fc1", kC2 * (s.input_size / 4) * (s.input_size / 4), s.hidden)),
        fc2(linear("fc2", s.hidden, s.num_classes)) {}
  torch::Tensor forward(const torch::Tensor& x) override {
    auto h = torch::max_pool2d(torch::relu(conv1->forward(x)), 2);
    h = torch::max_pool2d(torch::relu(conv2->forward(h)), 2);
    h = torch::relu(fc1->forward(h.flatten(1)));
    return fc2->forward(h);
  }
  static constexpr std::int64_t kC1 = 8;
  static constexpr std::int64_t kC2 = 16;
  static constexpr std::int64_t kKernel = 3;
  torch::nn::Conv2d conv1, conv2;
  std::shared_ptr<LoraLinear> fc1, fc2;
};

/// Seed of layer `name`'s A: the model's seed mixed with the name (FNV-1a, then splitmix64),
/// the same in every process of a run.
std::uint64_t adapter_seed(std::uint64_t seed, const std::string& name) {
  std::uint64_t h = 1469598103934665603ULL;
  for (const char c : "lora_A:" + name) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ULL;
  }
  std::uint64_t z = seed ^ h;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/// Whether lora.targets entry `target` names linear layer `layer` (its full dotted name): the
/// name itself, its last components ("up_proj" names every "model.layers.N.mlp.up_proj"), or
/// a glob ("model.layers.1*.mlp.*").
bool target_matches(const std::string& target, const std::string& layer) {
  if (target == layer) return true;
  if (target.find_first_of("*?[") != std::string::npos) return ::fnmatch(target.c_str(), layer.c_str(), 0) == 0;
  return layer.size() > target.size() && layer.compare(layer.size() - target.size(), target.size(), target) == 0 &&
         layer[layer.size() - target.size() - 1] == '.';
}

/// The linear layers of `net` for an error message: every name, or for a deep model the
/// distinct last components ("q_proj, k_proj, ...") and how many layers there are.
std::string known_layers(const Net& net) {
  std::vector<std::string> names;
  for (const auto& l : net.linear_layers) names.push_back(l.first);
  if (names.size() > 12) {
    std::vector<std::string> shorts;
    for (const auto& n : names) {
      const auto last = n.substr(n.rfind('.') + 1);
      if (std::find(shorts.begin(), shorts.end(), last) == shorts.end()) shorts.push_back(last);
    }
    names = shorts;
  }
  std::string known;
  for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
  return known;
}

/// Adds adapters to `net`'s targets and freezes everything else. Errc::invalid_config for a
/// target that names none of its linear layers.
Expected<void> add_adapters(Net& net, const ModelSpec& spec, std::uint64_t seed) {
  const auto& lora = spec.lora;
  std::set<std::string> done;
  for (const auto& target : lora.targets) {
    bool any = false;
    for (auto& [name, layer] : net.linear_layers) {
      if (!target_matches(target, name)) continue;
      any = true;
      if (!done.insert(name).second) continue;
      layer->add_adapter(lora, adapter_seed(seed, name));
    }
    if (!any) {
      return Error{Errc::invalid_config, "lora.targets: '" + target + "' names no linear layer of model '" +
                                             spec.name + "' (its linear layers: " + known_layers(net) + ")"};
    }
  }
  for (auto& p : net.named_parameters(true)) {
    const auto& name = p.key();
    const bool adapter = name.find(".lora_A.") != std::string::npos ||
                         name.find(".lora_B.") != std::string::npos;
    if (!adapter) p.value().set_requires_grad(false);
  }
  return {};
}

/// Freezes every parameter but those of the linear layers `spec.trainable` names.
/// Errc::invalid_config for a pattern that names none.
Expected<void> freeze_all_but(Net& net, const ModelSpec& spec) {
  std::set<const torch::nn::Module*> trained;
  for (const auto& pattern : spec.trainable) {
    bool any = false;
    for (auto& [name, layer] : net.linear_layers) {
      if (!target_matches(pattern, name)) continue;
      any = true;
      trained.insert(layer.get());
    }
    if (!any) {
      return Error{Errc::invalid_config, "model.trainable: '" + pattern + "' names no linear layer of model '" +
                                             spec.name + "' (its linear layers: " + known_layers(net) + ")"};
    }
  }
  for (auto& p : net.parameters(true)) p.set_requires_grad(false);
  for (const auto* layer : trained) {
    for (auto p : layer->parameters(true)) p.set_requires_grad(true);
  }
  return {};
}

/// Parameters then buffers, each in registration order: the order state() promises.
TensorList named_state(const torch::nn::Module& m) {
  TensorList out;
  for (const auto& p : m.named_parameters(true)) out.push_back({p.key(), p.value()});
  for (const auto& b : m.named_buffers(true)) out.push_back({b.key(), b.value()});
  return out;
}

class TorchModel final : public Model {
 public:
  TorchModel(std::shared_ptr<Net> net, c10::Device device, ModelSpec spec)
      : net_(std::move(net)), device_(device), spec_(std::move(spec)) {}

  [[nodiscard]] TensorList state() const override {
    TensorList out;
    for (const auto& [name, t] : named_state(*net_)) {
      // copy=true: the caller's tensors must not change when training continues.
      out.push_back({name, t.detach().to(torch::kCPU, t.scalar_type(), false, true).contiguous()});
    }
    return out;
  }

  [[nodiscard]] TensorList trainable_state() const override {
    if (!spec_.lora.enabled() && spec_.trainable.empty()) return state();
    TensorList out;
    for (const auto& p : net_->named_parameters(true)) {
      if (!p.value().requires_grad()) continue;
      const auto& t = p.value();
      out.push_back({p.key(), t.detach().to(torch::kCPU, t.scalar_type(), false, true).contiguous()});
    }
    return out;
  }

  [[nodiscard]] Expected<void> load_state(const TensorList& state) override {
    const auto targets = named_state(*net_);
    // Checked before anything is copied, so a refused state changes nothing.
    if (auto ok = check_compatible(targets, state, DtypeMatch::same_kind); !ok) return ok;
    torch::NoGradGuard no_grad;
    for (std::size_t i = 0; i < targets.size(); ++i) targets[i].tensor.copy_(state[i].tensor);
    return {};
  }

  [[nodiscard]] Expected<void> load_tensors(const TensorList& tensors) override {
    const auto targets = named_state(*net_);
    auto at = match_subset(targets, tensors, DtypeMatch::same_kind);
    if (!at) return at.error();
    torch::NoGradGuard no_grad;
    for (std::size_t k = 0; k < tensors.size(); ++k) targets[(*at)[k]].tensor.copy_(tensors[k].tensor);
    return {};
  }

  [[nodiscard]] at::Tensor forward(const at::Tensor& inputs) override {
    return net_->forward(inputs.to(device_));
  }
  [[nodiscard]] c10::Device device() const override { return device_; }
  [[nodiscard]] std::int64_t num_parameters() const override {
    std::int64_t n = 0;
    for (const auto& p : net_->parameters()) n += p.numel();
    return n;
  }
  [[nodiscard]] void* module() override { return static_cast<torch::nn::Module*>(net_.get()); }
  [[nodiscard]] const ModelSpec& spec() const override { return spec_; }
  void merge() override {
    for (auto& [name, layer] : net_->linear_layers) layer->merge();
    merged_ = spec_.lora.enabled();
  }
  void unmerge() override {
    for (auto& [name, layer] : net_->linear_layers) layer->unmerge();
    merged_ = false;
  }
  [[nodiscard]] bool merged() const override { return merged_; }

 private:
  std::shared_ptr<Net> net_;
  c10::Device device_;
  ModelSpec spec_;
  bool merged_ = false;
};

Error bad_device(const std::string& name, const std::string& why) {
  return Error{Errc::invalid_config, "device '" + name + "' requested but " + why};
}

}  // namespace

Expected<c10::Device> resolve_device(const std::string& name) {
  if (name == "cpu") return c10::Device(c10::kCPU);
  if (name == "auto") {
    return torch::cuda::is_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  }
  c10::DeviceIndex index = 0;
  bool cuda = name == "cuda";
  if (!cuda && name.rfind("cuda:", 0) == 0 && name.size() > 5 && name.size() <= 8) {
    cuda = true;
    int parsed = 0;
    for (const char ch : name.substr(5)) {
      if (!std::isdigit(static_cast<unsigned char>(ch))) cuda = false;
      parsed = parsed * 10 + (ch - '0');
    }
    index = static_cast<c10::DeviceIndex>(parsed);
  }
  if (!cuda) {
    return Error{Errc::invalid_config,
                 "unknown device '" + name +
                     "': expected \"cpu\", \"cuda\", \"cuda:N\" (N a GPU index) or \"auto\""};
  }
  const std::string shown = "cuda:" + std::to_string(index);
  if (!torch::cuda::is_available()) {
    return bad_device(shown, std::string("no CUDA device is available (") +
                                 (at::hasCUDA() ? "this LibTorch has CUDA but no GPU is visible"
                                                : "this LibTorch was built without CUDA") +
                                 "); use device = \"cpu\" or \"auto\"");
  }
  const auto count = torch::cuda::device_count();
  if (static_cast<std::size_t>(index) >= count) {
    return bad_device(shown, "only " + std::to_string(count) + " CUDA device(s) are visible");
  }
  return c10::Device(c10::kCUDA, index);
}

Expected<std::unique_ptr<Model>> Model::create(const ModelSpec& spec, c10::Device device,
                                               std::uint64_t seed) {
  if (spec.name != "mlp" && spec.name != "cnn" && spec.name != "vit" && spec.name != "llama") {
    return Error{Errc::invalid_config,
                 "unknown model '" + spec.name + "': expected \"mlp\", \"cnn\", \"vit\" or \"llama\""};
  }
  if (spec.name == "llama") {
    if (auto ok = check_lm_spec(spec.lm); !ok) return ok.error();
  } else if (spec.name == "vit") {
    if (auto ok = check_vit_spec(spec); !ok) return ok.error();
  } else if (spec.hidden < 1 || spec.num_classes < 1 || spec.input_channels < 1 ||
      spec.input_size < (spec.name == "cnn" ? 4 : 1)) {
    return Error{Errc::invalid_config,
                 "model '" + spec.name + "' needs positive sizes, got hidden=" +
                     std::to_string(spec.hidden) + " classes=" + std::to_string(spec.num_classes) +
                     " input=" + std::to_string(spec.input_channels) + "x" +
                     std::to_string(spec.input_size)};
  }
  const auto& lora = spec.lora;
  if (lora.rank < 0) {
    return Error{Errc::invalid_config, "lora.rank must be >= 0, got " + std::to_string(lora.rank)};
  }
  if (lora.enabled()) {
    if (lora.targets.empty()) {
      return Error{Errc::invalid_config, "lora.targets is empty; name the linear layers to adapt"};
    }
    if (!(lora.alpha > 0)) {
      return Error{Errc::invalid_config, "lora.alpha must be > 0, got " + std::to_string(lora.alpha)};
    }
    if (!(lora.dropout >= 0 && lora.dropout < 1)) {
      return Error{Errc::invalid_config,
                   "lora.dropout must be in [0, 1), got " + std::to_string(lora.dropout)};
    }
  }
  std::shared_ptr<Net> net;
  {
    // The initialisers draw from LibTorch's one global generator: seeding it and building
    // must be one step, or two models built at once would interleave their draws.
    static std::mutex init_mutex;
    const std::lock_guard lock(init_mutex);
    torch::manual_seed(seed);
    if (spec.name == "mlp") {
      net = std::make_shared<Mlp>(spec);
    } else if (spec.name == "cnn") {
      net = std::make_shared<Cnn>(spec);
    } else if (spec.name == "vit") {
      net = detail::make_vit(spec);
    } else {
      net = detail::make_llama(spec.lm);
    }
  }
  // Adapters draw from their own generators (adapter_seed), not the global one: the base
  // weights are the same with and without LoRA, and A does not depend on the build order.
  if (lora.enabled()) {
    if (auto ok = add_adapters(*net, spec, seed); !ok) return ok.error();
  } else if (!spec.trainable.empty()) {
    if (auto ok = freeze_all_but(*net, spec); !ok) return ok.error();
  }
  net->to(device);
  auto model = std::unique_ptr<Model>(std::make_unique<TorchModel>(std::move(net), device, spec));
  if (!spec.checkpoint.empty()) {
    if (auto ok = load_checkpoint_weights(*model, spec.checkpoint); !ok) return ok.error();
  }
  return model;
}

Expected<void> load_checkpoint_weights(Model& model, const std::filesystem::path& where) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  std::error_code ec;
  if (fs::is_directory(where, ec)) {
    // A sharded checkpoint names its shards in model.safetensors.index.json; other *.safetensors
    // beside them (an adapter, a second copy) are not the model's.
    const auto index = where / "model.safetensors.index.json";
    if (fs::exists(index, ec)) {
      auto text = read_file(index, 64u << 20);
      if (!text) return Error{Errc::invalid_config, "model.checkpoint: " + text.error().message};
      try {
        std::set<std::string> shards;
        const auto parsed = nlohmann::json::parse(*text);  // kept: the loop below iterates into it
        for (const auto& [name, file] : parsed.at("weight_map").items()) shards.insert(file.get<std::string>());
        for (const auto& shard : shards) {
          if (shard.find('/') != std::string::npos || shard == ".." || shard.empty()) {
            return Error{Errc::invalid_config, "model.checkpoint: '" + index.string() + "' names a shard outside its directory: '" + shard + "'"};
          }
          files.push_back(where / shard);
        }
      } catch (const std::exception& e) {
        return Error{Errc::invalid_config, "model.checkpoint: '" + index.string() + "' is not an index of shards (weight_map): " + e.what()};
      }
    } else {
      for (const auto& e : fs::directory_iterator(where, ec)) {
        if (e.path().extension() == ".safetensors") files.push_back(e.path());
      }
    }
    std::sort(files.begin(), files.end());
    if (files.empty()) {
      return Error{Errc::invalid_config, "model.checkpoint: '" + where.string() + "' has no *.safetensors file"};
    }
  } else {
    files.push_back(where);
  }
  const bool tied = model.spec().name == "llama" && model.spec().lm.tie_embeddings;
  TensorList weights;
  std::vector<Safetensors> keep;  // the tensors view the files' mappings until loaded
  for (const auto& file : files) {
    auto read = read_safetensors(file);
    if (!read) return Error{Errc::invalid_config, "model.checkpoint: " + read.error().message};
    for (auto& t : read->tensors) {
      // Not weights: old transformers checkpoints stored the rotary frequencies; a tied model's
      // output projection is the embedding.
      if (t.name.ends_with("rotary_emb.inv_freq") || (tied && t.name == "lm_head.weight")) continue;
      weights.push_back(t);
    }
    keep.push_back(std::move(read).value());
  }
  // A tied model has no lm_head: a checkpoint's must be its embedding, or it was an untied one.
  if (tied) {
    const NamedTensor* head = nullptr;
    const NamedTensor* embed = nullptr;
    for (const auto& f : keep) {
      for (const auto& t : f.tensors) {
        if (t.name == "lm_head.weight") head = &t;
        if (t.name == "model.embed_tokens.weight") embed = &t;
      }
    }
    if (head != nullptr && (embed == nullptr || !head->tensor.sizes().equals(embed->tensor.sizes()) ||
                            !at::equal(head->tensor, embed->tensor.to(head->tensor.scalar_type())))) {
      return Error{Errc::invalid_config, "model.checkpoint: '" + where.string() + "' has an lm_head.weight of its "
                                             "own, but model.tie-embeddings is true: set it to false (or use "
                                             "model.config-json, the checkpoint's config.json)"};
    }
  }
  // Names from the module itself: Model::state() would copy the whole model first.
  std::set<std::string> present;
  for (const auto& w : weights) present.insert(w.name);
  const auto& module = *static_cast<torch::nn::Module*>(model.module());
  std::vector<std::string> missing;
  auto check = [&](const std::string& name) {
    const bool adapter = name.find(".lora_A.") != std::string::npos || name.find(".lora_B.") != std::string::npos;
    if (!adapter && present.count(name) == 0) missing.push_back(name);
  };
  for (const auto& p : module.named_parameters(true)) check(p.key());
  for (const auto& b : module.named_buffers(true)) check(b.key());
  if (!missing.empty()) {
    return Error{Errc::invalid_config, "model.checkpoint: '" + where.string() + "' lacks '" + missing.front() + "'" +
                                           (missing.size() > 1 ? " and " + std::to_string(missing.size() - 1) + " more" : "") +
                                           " of the model's tensors (is the [model] config the checkpoint's?)"};
  }
  if (auto ok = model.load_tensors(weights); !ok) {
    return Error{Errc::invalid_config, "model.checkpoint: '" + where.string() + "': " + ok.error().message};
  }
  return {};
}

}  // namespace flotilla
