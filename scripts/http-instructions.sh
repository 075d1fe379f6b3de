#!/usr/bin/env bash
# Instructions the node executes per order creation or per card payment over HTTP, counted by
# valgrind (cachegrind, no cache simulation): an A/B that does not depend on how busy the host
# is (wall-clock A/Bs on a shared 2-core VM vary by 20 % and more).
#
#   scripts/http-instructions.sh orders|payments [SECONDS]        (default: 20 s)
#
# Runs `onecard serve` under cachegrind twice on a fresh data directory: once idle (start, set
# up, stop) and once under load for SECONDS (`wrk` posting orders with 16 connections, as in
# scripts/http-load.sh, or `onecard-sim pay` with 16 readers and no warm-up). Prints
# (Ir(load) - Ir(idle)) / (orders or payments), in all and without SHA-256's compression
# function (valgrind hides the CPU's SHA extensions, so SHA-256 runs in software there and
# would be about half of the count) and without sled's `Lazy::deref` (a spin-wait that
# valgrind, which runs one thread at a time, turns into billions of instructions at random).
# NODE_BIN=FILE and SIM_BIN=FILE measure other builds; KEEP=DIR keeps the two runs' cachegrind
# files there (idle.cg.out, load.cg.out: `cg_annotate --diff` or `cg_diff` them by function). Installs valgrind and wrk with apt-get
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: scripts/http-instructions.sh orders|payments [SECONDS]}
secs=${2:-20}
for tool in valgrind wrk; do
  if ! command -v $tool >/dev/null; then
    sudo=()
    if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=(sudo -E); fi
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq $tool
  fi
done
cargo build --release --quiet --workspace
node_bin=${NODE_BIN:-./target/release/onecard}
sim_bin=${SIM_BIN:-./target/release/onecard-sim}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export ONECARD_ADMIN_TOKEN="count-admin-token-$(date +%s)"
export ONECARD_ISSUER_KEY=$(python3 -c 'import os; print(os.urandom(32).hex())')
export ONECARD_DATA_KEY=$(python3 -c 'import os; print(os.urandom(32).hex())')

# One run: prints "<count> <Ir without SHA-256 and sled's spin>" ; $1 = seconds of load (0: idle)
run() {
  local load=$1 dir port node count
  dir=$(mktemp -d "$work/run-XXXX")
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file="$dir/cg.out" \
    "$node_bin" serve --listen 127.0.0.1:$port --data "$dir/data" --config config.toml 2>"$dir/serve.log" &
  node=$!
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
  count=0
  if [ "$what" = orders ]; then
    key=$(curl -sf -X POST "http://127.0.0.1:$port/v1/admin/merchants" -H "Authorization: Bearer $ONECARD_ADMIN_TOKEN" \
      -H "Content-Type: application/json" -d '{"id":"load-shop","name":"Load Shop"}' \
      | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
    if [ "$load" != 0 ]; then
      ONECARD_API_KEY=$key ONECARD_RUN="run$$" wrk -t1 -c16 -d"${load}s" -s scripts/wrk-orders.lua \
        "http://127.0.0.1:$port" >/dev/null
    fi
    count=$(curl -s "http://127.0.0.1:$port/metrics" | awk '/^onecard_orders_created_total/ {print $2}')
  elif [ "$load" != 0 ]; then
    "$sim_bin" pay --node "http://127.0.0.1:$port" --readers 16 --duration "$load" --warmup 0 --json \
      >"$dir/pay.json" 2>"$dir/pay.err" || true
    count=$(tail -n 1 "$dir/pay.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["totals"]["payments"])')
  fi
  kill -TERM $node
  wait $node || true
  if [ -n "${KEEP:-}" ]; then
    mkdir -p "$KEEP"
    cp "$dir/cg.out" "$KEEP/$([ "$load" = 0 ] && echo idle || echo load).cg.out"
  fi
  echo "$count $(cg_annotate --auto=no --threshold=0 "$dir/cg.out" | python3 -c '
import re, sys
total = left_out = 0
for line in sys.stdin:
    m = re.match(r"^\s*([\d,]+)\s+\([^)]*\)\s+(\S.*)$", line)
    if not m:
        continue
    n, name = int(m.group(1).replace(",", "")), m.group(2)
    if "PROGRAM TOTALS" in name:
        total = n
    elif "compress256" in name or "sled::lazy::Lazy" in name:
        left_out += n
print(total - left_out)')"
}

read -r _ idle < <(run 0)
read -r count loaded < <(run "$secs")
echo "==> $what: $count in ${secs}s under valgrind; $(( (loaded - idle) / count )) instructions each (without SHA-256 and sled's spin)"
