#!/usr/bin/env bash
# kiln's whole test suite, installing what it needs on a fresh machine:
#   - Debian packages when missing (libonnx-testdata: ONNX node test cases; qemu-user: an emulated x86 CPU
#     without VNNI for the int8-kernel tests; cmake and ninja-build: the CMake integration; chromium:
#     report.html in a headless browser; bazel-bootstrap: the Bazel rule; shellcheck: tensorrt bundles'
#     build.sh; mesa-vulkan-drivers, vulkan-validationlayers, spirv-tools: the Vulkan tier on lavapipe with
#     the Khronos validation layer, spirv-val; a C compiler for the runtime's C API test), via apt-get as root;
#   - a Python venv (.venv) with the pinned oracles from tests/requirements.txt (onnxruntime, onnx, numpy, ...);
#   - a release build of kiln (cached in target/ between runs);
# then checks formatting and lints (cargo fmt --check, cargo clippy -D warnings), runs the Rust tests
# (unit, golden, backend snapshots, hostile input) and the oracle tests (pytest, against onnxruntime).
# The corpus tier (../shared/models) reports itself skipped when the corpus is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

log() { printf '\n==> %s\n' "$*"; }

# 1. Debian packages.
need_pkgs=()
dpkg -s libonnx-testdata >/dev/null 2>&1 || need_pkgs+=(libonnx-testdata)
# qemu-user: runs onnxruntime on an emulated x86 CPU without VNNI (AVX2 only), the kernel family whose
# 16-bit pair sums saturate, so that claim is checked whatever CPU this machine has.
command -v qemu-x86_64 >/dev/null 2>&1 || need_pkgs+=(qemu-user)
# cmake + ninja: the CMake module builds its example project (tests/oracle/test_build_integration.py).
command -v cmake >/dev/null 2>&1 || need_pkgs+=(cmake)
command -v ninja >/dev/null 2>&1 || need_pkgs+=(ninja-build)
# chromium: opens report.html headless (tests/oracle/test_report_html.py).
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
# bazel-bootstrap: builds the Bazel example sandboxed and from its disk cache.
command -v bazel >/dev/null 2>&1 || need_pkgs+=(bazel-bootstrap)
# shellcheck: lints the build.sh of every tensorrt bundle (tests/oracle/test_tensorrt.py).
command -v shellcheck >/dev/null 2>&1 || need_pkgs+=(shellcheck)
# Vulkan tier: lavapipe (Mesa's CPU Vulkan driver), the loader, the Khronos validation layer, spirv-val.
[ -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || need_pkgs+=(mesa-vulkan-drivers)
ldconfig -p 2>/dev/null | grep -q 'libvulkan.so.1 ' || need_pkgs+=(libvulkan1)
[ -e /usr/share/vulkan/explicit_layer.d/VkLayer_khronos_validation.json ] || need_pkgs+=(vulkan-validationlayers)
command -v spirv-val >/dev/null 2>&1 || need_pkgs+=(spirv-tools)
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "apt-get install ${need_pkgs[*]}"
    apt-get update -qq >/dev/null || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null || echo "warning: could not install ${need_pkgs[*]}; those tests will report themselves skipped"
  else
    echo "note: ${need_pkgs[*]} not installed and not root; those tests will report themselves skipped"
  fi
fi

# 2. Python venv with pinned oracles (rebuilt when tests/requirements.txt changes).
req_hash=$(sha256sum tests/requirements.txt | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.req-hash 2>/dev/null)" != "$req_hash" ]; then
  log "creating .venv (tests/requirements.txt)"
  rm -rf .venv
  python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip >/dev/null
  .venv/bin/pip install -q -r tests/requirements.txt
  echo "$req_hash" > .venv/.req-hash
fi

# 3. Build (release; reused by every test below).
log "cargo build --release"
cargo build --release --locked --workspace 2>&1 | tail -n 3

# 4. One formatting and lint standard: rustfmt (rustfmt.toml) and clippy with warnings as errors.
log "cargo fmt --check; cargo clippy -D warnings"
cargo fmt --all --check
lint_log=$(mktemp)
if ! cargo clippy --release --locked --workspace --all-targets -- -D warnings >"$lint_log" 2>&1; then
  tail -n 80 "$lint_log"
  echo "clippy found warnings"
  exit 1
fi
rm -f "$lint_log"

# 5. Rust tests: unit, pass and golden tests of every crate, and the hostile-input suite.
log "cargo test --release"
rust_log=$(mktemp)
if ! cargo test --release --locked --workspace >"$rust_log" 2>&1; then
  tail -n 80 "$rust_log"
  echo "cargo test failed"
  exit 1
fi
grep -E "^test result" "$rust_log" | grep -v " 0 passed" || true
rm -f "$rust_log"

# 6. Oracle tests (onnxruntime on the original models).
log "pytest tests/oracle"
export KILN_BIN="$ROOT/target/release/kiln"
cd tests/oracle
# One worker per core (pytest-xdist), each test module on one worker so its module-scoped builds are shared;
# KILN_TEST_WORKERS=0 runs everything in this process.
exec "$ROOT/.venv/bin/python" -m pytest -q -rs -n "${KILN_TEST_WORKERS:-auto}" --dist loadfile "$@"
