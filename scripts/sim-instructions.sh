#!/usr/bin/env bash
# Instructions per order lifecycle of `onecard-sim load`, counted by valgrind (cachegrind, no
# cache simulation): an A/B that does not depend on how busy the host is.
#
#   scripts/sim-instructions.sh [CONSUMERS]        (default: 10000)
#
# Runs the simulator twice under cachegrind, with 5,000 and 25,000 lifecycles (10,000
# merchants, 256 in flight, each on a fresh data directory), and prints the difference divided
# by 20,000: the instructions of one lifecycle with its share of the end-of-run checks and
# `verify`. Printed without SHA-256's compression function (valgrind hides the CPU's SHA
# extensions, so SHA-256 runs in software there and would be more than half of the count) and
# without sled's `Lazy::deref` (a spin-wait that valgrind, which runs one thread at a time,
# turns into millions of instructions at random). The view's background merges also differ
# from run to run: two runs of one build differ by up to about 7,000 instructions a lifecycle.
# SIM_BIN=FILE measures another build; KEEP=DIR keeps the two cachegrind files there (for
# `cg_diff` by function). Installs valgrind with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
consumers=${1:-10000}
if ! command -v valgrind >/dev/null; then
  sudo=()
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=(sudo -E); fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq valgrind
fi
if [ -z "${SIM_BIN:-}" ]; then cargo build --release --quiet --workspace; fi
sim_bin=${SIM_BIN:-./target/release/onecard-sim}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One run: prints "<Ir without SHA-256 and sled's spin> <Ir of SHA-256>"; $1 = lifecycles
run() {
  local n=$1
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$work/cg-$n.out" \
    "$sim_bin" load --consumers "$consumers" --merchants 10000 --orders "$n" --concurrency 256 \
    --data "$work/data-$n" --json >"$work/load-$n.json" 2>"$work/load-$n.err"
  rm -rf "$work/data-$n"
  cg_annotate "$work/cg-$n.out" 2>/dev/null | python3 -c '
import re, sys
total = sha = spin = 0
for line in sys.stdin:
    m = re.match(r"\s*([\d,]+) \(.*?\)\s+(.*)$", line)
    if not m:
        continue
    ir = int(m.group(1).replace(",", ""))
    if "PROGRAM TOTALS" in m.group(2):
        total = ir
    elif "compress256" in m.group(2):
        sha += ir
    elif "sled::lazy::Lazy" in m.group(2):
        spin += ir
print(total - sha - spin, sha)'
}

small=$(run 5000)
large=$(run 25000)
if [ -n "${KEEP:-}" ]; then mkdir -p "$KEEP" && cp "$work"/cg-*.out "$KEEP"/; fi
python3 - "$small" "$large" <<'EOF'
import sys
a = [int(x) for x in sys.argv[1].split()]
b = [int(x) for x in sys.argv[2].split()]
print(f"instructions per lifecycle without SHA-256: {round((b[0] - a[0]) / 20000):,}")
print(f"SHA-256 in software under valgrind: {round((b[1] - a[1]) / 20000):,}")
EOF
