#!/usr/bin/env bash
# Installs everything Flotilla's build, tests, benchmarks and examples need, from
# Debian 12's packages only. Idempotent: packages already present are skipped, and
# nothing is fetched when all of them are.
set -euo pipefail

PACKAGES=(
  # toolchain
  build-essential cmake pkg-config ccache git
  # actors, tensors, wire, transport, metrics
  libcaf-dev libtorch-dev capnproto libcapnp-dev libzmq3-dev cppzmq-dev prometheus-cpp-dev
  # config, CLI, logging, JSON, HTTP (metrics endpoint), DLPack (plugin ABI)
  libtomlplusplus-dev libcli11-dev libspdlog-dev nlohmann-json3-dev libcpp-httplib-dev libdlpack-dev
  # tests and benchmarks (spm_train/spm_encode: the reference the SentencePiece reader is tested against)
  googletest libgtest-dev libgmock-dev libbenchmark-dev iperf3 sentencepiece
  # libFuzzer, linked into the fuzz targets by scripts/fuzz.sh (binutils' objcopy prepares it)
  libclang-rt-14-dev binutils
  # the slow test across network namespaces (ip netns, tc tbf)
  iproute2
  # the end-to-end tests and bench.sh check results with a few lines of Python
  python3
  # a fast BLAS for LibTorch's CPU kernels (Debian's default reference BLAS is ~25x slower)
  libopenblas0-openmp
  # plots (scripts/compare-schedules.sh)
  gnuplot-nox
  # the monitoring test scrapes a federation with a real Prometheus server (promtool checks the rules)
  prometheus
  # the quick start's data
  dataset-fashion-mnist
  # the text study's offline corpus (scripts/demo-corpus.py): WordNet, KJV verses, fortunes
  wordnet-base bible-kjv-text fortunes
)

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1
  fi
fi

echo "install-deps: installing ${#missing[@]} packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
