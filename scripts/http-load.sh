#!/usr/bin/env bash
# HTTP load run: order creations per second over real HTTP on loopback, and their latency.
#
#   scripts/http-load.sh [SECONDS] [CONNECTIONS]      (defaults: 20 s, 64 connections)
#
# Builds the release binary, starts `onecard serve` on a fresh data directory, registers a
# merchant over the admin API, then runs wrk (one thread, from a second process) posting
# orders, each with its own Idempotency-Key (scripts/wrk-orders.lua). Every 2xx is an order
# acknowledged only after it is on disk (durability under SIGKILL is the end-to-end tests'
# job, tests/api_durability.rs). Prints the node's own count of created orders and its batch
# sizes from /metrics, then stops it with SIGTERM. Installs wrk with apt-get when missing.
# NODE_BIN=FILE runs another build of `onecard` (an A/B against a copy of an older build);
# CONFIG=FILE runs the node with another configuration.
# PERF=1 records the node with `perf record` (PERF_ARGS, default -g) into http-load.perf.data
# during the run.
# wrk runs in Linux's SCHED_BATCH class (`chrt -b 0`), as `onecard-sim pay`'s readers do by
# default: woken by an answer, it waits for the node's thread on that core to yield instead of
# preempting it, as a client on another machine never would. CLIENT_SCHEDULING=normal runs it
# in the normal class (BENCHMARKS.md has runs both ways).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
conns=${2:-64}
if ! command -v wrk >/dev/null; then
  echo "==> installing wrk"
  sudo=()
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null; then sudo=(sudo -E); fi
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq wrk
fi
cargo build --release --quiet
work=$(mktemp -d)
trap 'kill $node 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="load-admin-token-$(date +%s)"
ONECARD_ADMIN_TOKEN=$token ${NODE_BIN:-./target/release/onecard} serve --listen 127.0.0.1:$port \
  --data "$work/data" --config "${CONFIG:-config.toml}" 2>"$work/serve.log" &
node=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
key=$(curl -sf -X POST "http://127.0.0.1:$port/v1/admin/merchants" -H "Authorization: Bearer $token" \
  -H "Content-Type: application/json" -d '{"id":"load-shop","name":"Load Shop"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["api_key"])')
echo "==> machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(uname -sr)"
recorder=
if [ "${PERF:-0}" = 1 ]; then
  (sleep 2; perf record ${PERF_ARGS:--g} -o http-load.perf.data -p $node -- sleep $((secs - 3)) >/dev/null 2>&1) &
  recorder=$!
fi
client_sched=()
if [ "${CLIENT_SCHEDULING:-batch}" = batch ] && command -v chrt >/dev/null; then
  client_sched=(chrt -b 0)
fi
echo "==> ${client_sched[*]:+${client_sched[*]} }wrk -t1 -c$conns -d${secs}s POST /v1/orders"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
node_before=$(cpu_ticks $node)
ONECARD_API_KEY=$key ONECARD_RUN="run$$" /usr/bin/time -f '%U %S' -o "$work/wrk.cpu" \
  "${client_sched[@]}" wrk -t1 -c"$conns" -d"${secs}s" --latency \
  -s scripts/wrk-orders.lua "http://127.0.0.1:$port" | tee "$work/wrk.out"
node_after=$(cpu_ticks $node)
created=$(awk '/requests in/ {print $1}' "$work/wrk.out")
# CPU per request of each side: the node's from /proc (clock ticks), wrk's from time(1).
python3 - "$node_before" "$node_after" "$(getconf CLK_TCK)" "$created" "$(cat "$work/wrk.cpu")" <<'PY'
import sys
before, after, hz, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
user, system = map(float, sys.argv[5].split())
print(f"node CPU per request: {(after - before) / hz / n * 1e6:.1f} µs; "
      f"wrk CPU per request: {(user + system) / n * 1e6:.1f} µs")
PY
if [ -n "$recorder" ]; then wait "$recorder"; fi
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^onecard_(orders_created_total|journal_batch_commits|journal_flushes_total|node_store_commits_total)' || true
kill -TERM $node
wait $node
echo "==> node stopped cleanly (exit 0)"
