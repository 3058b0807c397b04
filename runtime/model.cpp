#include "runtime/model.hpp"

#include <torch/torch.h>

#include <cctype>
#include <mutex>

namespace flotilla {
namespace {

/// A network with a forward pass, so one wrapper serves every architecture.
struct Net : torch::nn::Module {
  virtual torch::Tensor forward(const torch::Tensor& x) = 0;
};

/// flatten -> hidden -> ReLU -> hidden -> ReLU -> classes.
struct Mlp : Net {
  explicit Mlp(const ModelSpec& s)
      : fc1(register_module(
            "fc1", torch::nn::Linear(s.input_channels * s.input_size * s.input_size, s.hidden))),
        fc2(register_module("fc2", torch::nn::Linear(s.hidden, s.hidden))),
        fc3(register_module("fc3", torch::nn::Linear(s.hidden, s.num_classes))) {}
  torch::Tensor forward(const torch::Tensor& x) override {
    auto h = torch::relu(fc1->forward(x.flatten(1)));
    h = torch::relu(fc2->forward(h));
    return fc3->forward(h);
  }
  torch::nn::Linear fc1, fc2, fc3;
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
        fc1(register_module(
            "fc1", torch::nn::Linear(kC2 * (s.input_size / 4) * (s.input_size / 4), s.hidden))),
        fc2(register_module("fc2", torch::nn::Linear(s.hidden, s.num_classes))) {}
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
  torch::nn::Linear fc1, fc2;
};


/// Parameters then buffers, each in registration order: the order state() promises.
TensorList named_state(const torch::nn::Module& m) {
  TensorList out;
  for (const auto& p : m.named_parameters(true)) out.push_back({p.key(), p.value()});
  for (const auto& b : m.named_buffers(true)) out.push_back({b.key(), b.value()});
  return out;
}

class TorchModel final : public Model {
 public:
  TorchModel(std::shared_ptr<Net> net, c10::Device device)
      : net_(std::move(net)), device_(device) {}

  [[nodiscard]] TensorList state() const override {
    TensorList out;
    for (const auto& [name, t] : named_state(*net_)) {
      // copy=true: the caller's tensors must not change when training continues.
      out.push_back({name, t.detach().to(torch::kCPU, t.scalar_type(), false, true).contiguous()});
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

 private:
  std::shared_ptr<Net> net_;
  c10::Device device_;
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
  if (spec.name != "mlp" && spec.name != "cnn") {
    return Error{Errc::invalid_config,
                 "unknown model '" + spec.name + "': expected \"mlp\" or \"cnn\""};
  }
  if (spec.hidden < 1 || spec.num_classes < 1 || spec.input_channels < 1 ||
      spec.input_size < (spec.name == "cnn" ? 4 : 1)) {
    return Error{Errc::invalid_config,
                 "model '" + spec.name + "' needs positive sizes, got hidden=" +
                     std::to_string(spec.hidden) + " classes=" + std::to_string(spec.num_classes) +
                     " input=" + std::to_string(spec.input_channels) + "x" +
                     std::to_string(spec.input_size)};
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
    } else {
      net = std::make_shared<Cnn>(spec);
    }
  }
  net->to(device);
  return std::unique_ptr<Model>(std::make_unique<TorchModel>(std::move(net), device));
}

}  // namespace flotilla
