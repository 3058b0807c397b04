/// The bare single-process LibTorch FedAvg loop that Flotilla's end-to-end time is compared
/// to: same data, partition, model and local training, but clients run one after another in
/// one process with no actors, sockets or serialization.
#include "runtime/ml/data.hpp"
#include "runtime/setup/federation.hpp"
#include "runtime/ml/model.hpp"
#include "runtime/ml/trainer.hpp"

#include <torch/torch.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <iostream>
#include <string>

namespace {

struct Options {
  int rounds = 50;
  int clients = 8;
  double alpha = 0.5;
  std::uint32_t local_steps = 50;
  std::uint32_t batch_size = 32;
  float lr = 0.05F;
  float momentum = 0.9F;
  std::string model = "cnn";
  std::int64_t hidden = 64;
  /// One thread: on a busy 2-core machine two OpenMP threads spin against other load and ran
  /// 5x slower; on an idle one they are ~1.35x faster (pass --threads 2).
  int threads = 1;
  std::uint64_t seed = 1;
  double target = 0.80;
  std::string data = "/usr/share/datasets/fashion-mnist";
};

[[noreturn]] void usage(const char* why) {
  std::cerr << "baseline_bench: " << why << "\n"
            << "usage: baseline_bench [--rounds N] [--clients N] [--alpha A] [--local-steps N]\n"
               "  [--batch-size N] [--lr X] [--momentum X] [--model cnn|mlp] [--hidden N]\n"
               "  [--threads N] [--seed N] [--target ACC] [--data DIR]\n";
  std::exit(2);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--help" || flag == "-h") usage("help");
    if (i + 1 >= argc) usage(("missing value for " + flag).c_str());
    const std::string v = argv[++i];
    try {
      if (flag == "--rounds") o.rounds = std::stoi(v);
      else if (flag == "--clients") o.clients = std::stoi(v);
      else if (flag == "--alpha") o.alpha = std::stod(v);
      else if (flag == "--local-steps") o.local_steps = static_cast<std::uint32_t>(std::stoul(v));
      else if (flag == "--batch-size") o.batch_size = static_cast<std::uint32_t>(std::stoul(v));
      else if (flag == "--lr") o.lr = std::stof(v);
      else if (flag == "--momentum") o.momentum = std::stof(v);
      else if (flag == "--model") o.model = v;
      else if (flag == "--hidden") o.hidden = std::stoll(v);
      else if (flag == "--threads") o.threads = std::stoi(v);
      else if (flag == "--seed") o.seed = std::stoull(v);
      else if (flag == "--target") o.target = std::stod(v);
      else if (flag == "--data") o.data = v;
      else usage(("unknown flag " + flag).c_str());
    } catch (const std::logic_error&) {
      usage(("bad value '" + v + "' for " + flag).c_str());
    }
  }
  return o;
}

/// Process CPU time: unlike wall time it shows whether other load on the machine, rather
/// than this loop, made a run slow.
double cpu_seconds() { return static_cast<double>(std::clock()) / CLOCKS_PER_SEC; }

}  // namespace

int main(int argc, char** argv) try {
  using namespace flotilla;
  using Clock = std::chrono::steady_clock;
  const Options o = parse(argc, argv);
  at::set_num_threads(o.threads);

  const auto load_start = Clock::now();
  const auto train = load_fashion_mnist(o.data, true).value();
  const auto test = load_fashion_mnist(o.data, false).value();
  // Exactly the runtime's per-client data: the same partition and held-out split.
  flotilla::Config config;
  config.data.clients = o.clients;
  config.data.alpha = o.alpha;
  config.data.partition = PartitionKind::dirichlet;
  config.run.seed = o.seed;
  std::vector<Dataset> client_data;
  for (int c = 0; c < o.clients; ++c) {
    client_data.push_back(client_train_data(config, train, static_cast<std::uint32_t>(c)).value());
  }
  const double load_seconds =
      std::chrono::duration<double>(Clock::now() - load_start).count();

  ModelSpec model_spec;
  model_spec.name = o.model;
  model_spec.hidden = o.hidden;
  const auto device = c10::Device(c10::kCPU);
  // The same optimizer plugin as Flotilla's clients (training.optimizer = "sgd").
  flotilla::PluginRegistry registry({}, device);
  const auto sgd = registry.load("sgd", FLOTILLA_KIND_OPTIMIZER).value();
  auto global_model = Model::create(model_spec, device, o.seed).value();
  auto worker = Model::create(model_spec, device, o.seed).value();
  TensorList global = global_model->state();
  std::printf("baseline model=%s hidden=%lld params=%lld clients=%d alpha=%.2f local_steps=%u "
              "batch=%u lr=%.3f momentum=%.2f threads=%d seed=%llu load=%.1fs\n",
              o.model.c_str(), static_cast<long long>(o.hidden),
              static_cast<long long>(global_model->num_parameters()), o.clients, o.alpha,
              o.local_steps, o.batch_size, o.lr, o.momentum, o.threads,
              static_cast<unsigned long long>(o.seed), load_seconds);

  const double cpu_start = cpu_seconds();
  const auto start = Clock::now();
  int round = 1;
  bool reached = false;
  double produced = 0;  // when the latest model existed (before its evaluation)
  for (; round <= o.rounds; ++round) {
    double total_examples = 0;
    for (const auto& d : client_data) total_examples += static_cast<double>(d.size());
    // One in-place accumulator: the fold costs one extra model copy, not one per client.
    TensorList sum;
    for (const auto& t : global) sum.push_back({t.name, torch::zeros_like(t.tensor)});
    double train_loss = 0;
    for (std::size_t c = 0; c < client_data.size(); ++c) {
      worker->load_state(global).value();
      TrainingConfig task;
      task.local_steps = o.local_steps;
      task.batch_size = o.batch_size;
      task.learning_rate = o.lr;
      task.momentum = o.momentum;
      // The seed the aggregator gives client c's task in this round (runtime/server/sync_rounds.cpp).
      task.seed = o.seed * 1000003ULL + static_cast<std::uint64_t>(round) * 7919ULL + c;
      auto optimizer = make_optimizer(sgd, {}, task, *worker).value();
      const auto stats = train_local(*worker, client_data[c], task, *optimizer);
      const double weight = static_cast<double>(stats.num_examples) / total_examples;
      train_loss += weight * stats.loss;
      const auto state = worker->state();
      for (std::size_t i = 0; i < sum.size(); ++i) sum[i].tensor.add_(state[i].tensor, weight);
    }
    global = std::move(sum);
    global_model->load_state(global).value();
    produced = std::chrono::duration<double>(Clock::now() - start).count();
    const auto eval = evaluate(*global_model, test);
    const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    std::printf("round=%d acc=%.4f loss=%.4f train_loss=%.4f eval=%.2fs elapsed=%.1fs\n", round,
                eval.accuracy, eval.loss, train_loss, eval.seconds, elapsed);
    std::fflush(stdout);
    if (eval.accuracy >= o.target) {
      reached = true;
      break;
    }
  }
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  if (reached) {
    std::printf("baseline seconds_to_80=%.1f train_seconds_to_80=%.1f rounds=%d cpu=%.1fs\n",
                elapsed, produced, round, cpu_seconds() - cpu_start);
  } else {
    std::printf("baseline seconds_to_80=inf rounds=%d (target %.2f not reached, %.1fs)\n",
                o.rounds, o.target, elapsed);
  }
  return reached ? 0 : 1;
} catch (const flotilla::Failure& e) {
  std::fprintf(stderr, "baseline_bench: %s: %s\n", flotilla::to_string(e.error().code), e.what());
  return 1;
}
