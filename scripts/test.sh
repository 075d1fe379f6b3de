#!/usr/bin/env bash
# The whole test suite, with its own set-up. This is the README's test command and what CI runs.
#
#  1. installs the Debian packages the tests need when they are missing (apt-get, as root);
#  2. checks formatting and lints (cargo fmt, cargo clippy -D warnings);
#  3. builds once and runs every test of the workspace in one cargo-nextest invocation
#     (falls back to `cargo test` where nextest is not installed).
#
# Tests start and stop every server they need themselves. Long load and soak runs are not
# here: they are benchmarks (`cargo bench`) and simulator runs (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the suite needs: the PC/SC library to build the reader program's `pcsc`
# feature, the PC/SC daemon and the vsmartcard reader driver (vpcd) the tests plug their virtual
# card into (the tests start and stop pcscd themselves); Chromium and its WebDriver for the web
# pages' browser test (tests/web_browser.rs starts and stops chromedriver itself).
packages=(libpcsclite-dev pcscd vsmartcard-vpcd chromium chromium-driver)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing missing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo=()
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=(sudo -E); fi
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -d ../shared/scenarios ]; then
  echo "error: ../shared/scenarios is missing: the executable spec must sit beside the project root" >&2
  exit 1
fi

# The vpcd reader driver listens on fixed ports (35963, 35964). The HTTP tests open thousands
# of loopback connections, and a client socket given one of those ports as its ephemeral port
# (or still in TIME_WAIT on it) would stop pcscd's vpcd from listening there. Keep them out of
# the ephemeral range for the run, then put the setting back. Best effort: without the right
# to change it, the tests still run.
reserved=/proc/sys/net/ipv4/ip_local_reserved_ports
if [ -w "$reserved" ]; then
  previous=$(cat "$reserved")
  trap 'echo "$previous" > "$reserved" 2>/dev/null || true' EXIT
  if [ -n "$previous" ]; then
    echo "$previous,35963-35964" > "$reserved"
  else
    echo "35963-35964" > "$reserved"
  fi
else
  echo "note: cannot reserve the vpcd ports 35963-35964 ($reserved not writable)"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --all-features --locked --profile ci
else
  cargo test --workspace --all-targets --all-features --locked
fi
