#!/usr/bin/env bash
# Card payment load over HTTP: `onecard-sim pay` against a fresh `onecard serve` on loopback.
#
#   scripts/pay-load.sh [SECONDS] [READERS] [extra onecard-sim pay options…]
#                                                      (defaults: 20 s, 64 readers)
#
# Builds the release binaries, starts `onecard serve` on a fresh data directory with its keys in
# the environment, runs `onecard-sim pay` (each reader its own card, consumer and registration
# on 127.0.0.0/8; every payment: order created by the merchant, checkout, swipe, card
# cryptogram and encrypted PIN, address answer when asked, the placed order checked, then the
# consumer's receipt), prints its report (the last line is JSON, with the node's CPU per
# payment), then stops the node with SIGTERM. PERF=1 records the node with `perf record -g`
# into pay-load.perf.data during the run. CONFIG=FILE runs the node with another configuration;
# NODE_BIN=FILE another build of `onecard`, SIM_BIN=FILE another build of `onecard-sim` (an A/B
# against copies of an older build). The readers run in Linux's SCHED_BATCH class, the
# simulator's default (`--client-scheduling normal` for the normal class).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
readers=${2:-64}
shift $(( $# > 2 ? 2 : $# ))
cargo build --release --quiet --workspace
work=$(mktemp -d)
trap 'kill $node 2>/dev/null || true; rm -rf "$work"' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
export ONECARD_ADMIN_TOKEN="pay-admin-token-$(date +%s)"
export ONECARD_ISSUER_KEY=$(python3 -c 'import os; print(os.urandom(32).hex())')
export ONECARD_DATA_KEY=$(python3 -c 'import os; print(os.urandom(32).hex())')
${NODE_BIN:-./target/release/onecard} serve --listen 127.0.0.1:$port --data "$work/data" --config ${CONFIG:-config.toml} \
  2>"$work/serve.log" &
node=$!
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.1; done
echo "==> machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); $(uname -sr)"
recorder=
if [ "${PERF:-0}" = 1 ]; then
  (sleep 3; perf record ${PERF_ARGS:--g} -o pay-load.perf.data -p $node -- sleep $((secs - 4)) >/dev/null 2>&1) &
  recorder=$!
fi
python3 - "$port" "$secs" >"$work/healthz.txt" <<'PY' &
import http.client, sys, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
time.sleep(2.0)  # past the simulator's set-up and warm-up
lat, end = [], time.monotonic() + secs - 2.5
while time.monotonic() < end:
    t = time.monotonic()
    conn.request("GET", "/healthz")
    r = conn.getresponse(); r.read()
    lat.append((time.monotonic() - t) * 1000)
    time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))
lat.sort()
q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))]
print(f"healthz during the run: {len(lat)} requests, p50 {q(0.5):.2f} ms, p99 {q(0.99):.2f} ms, max {lat[-1]:.2f} ms")
PY
probe=$!
echo "==> onecard-sim pay --readers $readers --duration $secs $*"
${SIM_BIN:-./target/release/onecard-sim} pay --node "http://127.0.0.1:$port" --readers "$readers" \
  --duration "$secs" --node-pid "$node" --json "$@"
if [ -n "$recorder" ]; then wait "$recorder"; fi
wait "$probe"
curl -s "http://127.0.0.1:$port/metrics" | grep -E '^onecard_(journal_records_total|journal_batch_commits|journal_flushes_total|journal_feed_from_(memory|log)_total|node_store_commits_total)' || true
echo "==> $(cat "$work/healthz.txt")"
kill -TERM $node
wait $node
echo "==> node stopped cleanly (exit 0)"
