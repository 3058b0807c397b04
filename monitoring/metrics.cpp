#include "monitoring/metrics.hpp"

#include <prometheus/collectable.h>
#include <prometheus/gauge.h>
#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <dirent.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#ifndef FLOTILLA_VERSION
#define FLOTILLA_VERSION "unknown"
#endif
#ifndef FLOTILLA_TORCH_VERSION
#define FLOTILLA_TORCH_VERSION "unknown"
#endif
#ifndef FLOTILLA_BUILD_TYPE
#define FLOTILLA_BUILD_TYPE "unknown"
#endif

namespace flotilla::monitoring {
namespace {

/// Seconds since the epoch at which the machine booted (/proc/stat's btime).
double boot_time() {
  std::ifstream in("/proc/stat");
  std::string key;
  while (in >> key) {
    if (key == "btime") {
      double t = 0;
      in >> t;
      return t;
    }
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  return 0;
}

std::size_t open_fds() {
  std::size_t n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (const dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') ++n;
    }
    ::closedir(d);
    if (n > 0) --n;  // the directory stream's own descriptor
  }
  return n;
}

/// The names every Prometheus client library exposes for its process, read on each scrape.
class ProcessCollector final : public prometheus::Collectable {
 public:
  std::vector<prometheus::MetricFamily> Collect() const override {
    using prometheus::MetricType;
    std::vector<prometheus::MetricFamily> out;
    std::ifstream in("/proc/self/stat");
    std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    // Fields after the command name (which may hold spaces) start at field 3.
    const auto close = stat.rfind(')');
    if (close != std::string::npos) {
      std::istringstream fields(stat.substr(close + 2));
      std::vector<std::string> f((std::istream_iterator<std::string>(fields)),
                                 std::istream_iterator<std::string>());
      // f[0] is field 3 (state): field N is f[N - 3].
      if (f.size() > 21) {
        const double ticks = static_cast<double>(::sysconf(_SC_CLK_TCK));
        const double page = static_cast<double>(::sysconf(_SC_PAGESIZE));
        const double cpu = (std::stod(f[14 - 3]) + std::stod(f[15 - 3])) / ticks;
        out.push_back(single("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.",
                             MetricType::Counter, cpu));
        out.push_back(single("process_start_time_seconds",
                             "Start time of the process since unix epoch in seconds.", MetricType::Gauge,
                             boot_time_ + std::stod(f[22 - 3]) / ticks));
        out.push_back(single("process_virtual_memory_bytes", "Virtual memory size in bytes.",
                             MetricType::Gauge, std::stod(f[23 - 3])));
        out.push_back(single("process_resident_memory_bytes", "Resident memory size in bytes.",
                             MetricType::Gauge, std::stod(f[24 - 3]) * page));
        out.push_back(single("flotilla_process_threads", "Threads of the process.", MetricType::Gauge,
                             std::stod(f[20 - 3])));
      }
    }
    out.push_back(single("process_open_fds", "Number of open file descriptors.", MetricType::Gauge,
                         static_cast<double>(open_fds())));
    rlimit limit{};
    if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
      out.push_back(single("process_max_fds", "Maximum number of open file descriptors.",
                           MetricType::Gauge, static_cast<double>(limit.rlim_cur)));
    }
    return out;
  }

 private:
  double boot_time_ = boot_time();
};

}  // namespace

prometheus::MetricFamily single(std::string name, std::string help, prometheus::MetricType type,
                                double value) {
  prometheus::ClientMetric m;
  if (type == prometheus::MetricType::Counter) {
    m.counter.value = value;
  } else {
    m.gauge.value = value;
  }
  return {std::move(name), std::move(help), type, {m}};
}

std::string serialize(const std::vector<prometheus::MetricFamily>& families) {
  return prometheus::TextSerializer{}.Serialize(families);
}

void Metrics::add(std::shared_ptr<const prometheus::Collectable> collectable) {
  std::lock_guard lock(sources_mutex_);
  collectables_.push_back(std::move(collectable));
}

std::vector<double> exponential_buckets(double start, double factor, int count) {
  std::vector<double> out;
  for (int i = 0; i < count; ++i, start *= factor) out.push_back(start);
  return out;
}

Metrics::Metrics()
    : registry_(std::make_shared<prometheus::Registry>()),
      process_(std::make_shared<ProcessCollector>()) {
  prometheus::BuildGauge()
      .Name("flotilla_build_info")
      .Help("Which build of Flotilla this process runs (always 1).")
      .Register(*registry_)
      .Add({{"version", FLOTILLA_VERSION},
            {"compiler", __VERSION__},
            {"build_type", FLOTILLA_BUILD_TYPE},
            {"torch", FLOTILLA_TORCH_VERSION}})
      .Set(1);
}

void Metrics::add_counter(const std::string& name, const std::string& help,
                          std::function<double()> read) {
  std::lock_guard lock(sources_mutex_);
  auto& source = sources_[name];
  source.help = help;
  source.reads.push_back(std::move(read));
}

std::string Metrics::scrape() const {
  auto families = registry_->Collect();
  {
    std::lock_guard lock(sources_mutex_);
    for (const auto& [name, source] : sources_) {
      double total = 0;
      for (const auto& read : source.reads) total += read();
      families.push_back(single(name, source.help, prometheus::MetricType::Counter, total));
    }
    for (const auto& c : collectables_) {
      auto more = c->Collect();
      families.insert(families.end(), std::make_move_iterator(more.begin()),
                      std::make_move_iterator(more.end()));
    }
  }
  auto process = process_->Collect();
  families.insert(families.end(), std::make_move_iterator(process.begin()),
                  std::make_move_iterator(process.end()));
  return serialize(families);
}

}  // namespace flotilla::monitoring
