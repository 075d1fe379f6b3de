#!/usr/bin/env bash
# Long crash runs: `scripts/crash-loop.sh N` SIGKILLs `onecard play` N times with commands in
# flight (tests/crash.rs, 256 unanswered), checking after every restart that each acknowledged
# command is there with its outcome, that no unacknowledged one is half-applied, and that
# `onecard verify` passes. Stops at the first failure and exits non-zero.
#
# The test is built once; then its binary runs again and again, each run on a fresh store with
# its own seed and at most CRASH_LOOP_ROUNDS rounds (one kill with the stream running per
# round, plus a kill during recovery every other round), until N such kills are done. (A run's
# store grows with every round and is verified from record 1 after every kill, so long runs are
# cut into runs of bounded length.)
#
#   scripts/crash-loop.sh 1000
#
# Environment:
#   CRASH_LOOP_ROUNDS   rounds (kills with commands in flight) per run; default 24
#   CRASH_LOOP_PROFILE  release (default) or debug
#   CRASH_LOOP_LOGS     where each run's output is kept; default target/crash-loop/<date-time>
#   CRASH_LOOP_SEED     the first run's seed (the next runs use seed+1, seed+2, ...); random
#                       by default
#
# A failed run prints its seed: `ONECARD_CRASH_SEED=S ONECARD_CRASH_ROUNDS=R cargo test
# --release -p onecard --test crash -- --nocapture` replays its command streams, kill delays and
# configurations (the exact kill points depend on timing). The failed run's store is kept; the
# log names its directory.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  echo "usage: $0 N   (N: kills with commands in flight, a positive integer)" >&2
  exit 2
}
[ $# -eq 1 ] || usage
[[ "$1" =~ ^[1-9][0-9]*$ ]] || usage
target=$1
per_run=${CRASH_LOOP_ROUNDS:-24}
[[ "$per_run" =~ ^[1-9][0-9]*$ ]] || { echo "CRASH_LOOP_ROUNDS must be a positive integer" >&2; exit 2; }
profile=${CRASH_LOOP_PROFILE:-release}
case "$profile" in
  release) profile_args=(--release) ;;
  debug) profile_args=() ;;
  *) echo "CRASH_LOOP_PROFILE must be release or debug" >&2; exit 2 ;;
esac
logs=${CRASH_LOOP_LOGS:-target/crash-loop/$(date +%Y%m%d-%H%M%S)}
mkdir -p "$logs"

echo "==> building the crash test ($profile)"
build_out=$(cargo test "${profile_args[@]}" -p onecard --test crash --no-run --message-format=json-render-diagnostics)
exe=$(printf '%s\n' "$build_out" \
  | sed -n 's/.*"executable":"\([^"]*\/crash-[0-9a-f]*\)".*/\1/p' | tail -n 1)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
  echo "error: cannot find the crash test's executable in cargo's output" >&2
  exit 1
fi
echo "    $exe"

if [ -n "${CRASH_LOOP_SEED:-}" ]; then
  [[ "$CRASH_LOOP_SEED" =~ ^[0-9]+$ ]] || { echo "CRASH_LOOP_SEED must be an integer" >&2; exit 2; }
  next_seed=$CRASH_LOOP_SEED
else
  # 63 random bits: an integer bash can add to.
  next_seed=$(( $(od -An -N8 -tu8 /dev/urandom | tr -d ' ') & 0x7fffffffffffffff ))
fi

started=$SECONDS
done_kills=0    # kills with the stream running
all_kills=0     # ... plus kills of a restart
runs=0
seeds=()
echo "==> $target kills with commands in flight, at most $per_run per run; logs in $logs"
while [ "$done_kills" -lt "$target" ]; do
  rounds=$(( target - done_kills < per_run ? target - done_kills : per_run ))
  seed=$next_seed
  next_seed=$(( (next_seed + 1) & 0x7fffffffffffffff ))
  runs=$(( runs + 1 ))
  seeds+=("$seed")
  log="$logs/run-$runs-seed-$seed.log"
  printf 'run %d: seed %s, %d rounds ... ' "$runs" "$seed" "$rounds"
  run_started=$SECONDS
  if ! ONECARD_CRASH_SEED=$seed ONECARD_CRASH_ROUNDS=$rounds \
      "$exe" --exact acknowledged_commands_survive_sigkill --nocapture --test-threads=1 \
      >"$log" 2>&1; then
    echo "FAILED"
    echo
    echo "---- last lines of $log ----"
    tail -n 40 "$log"
    echo "----"
    # Kills the failed run got through (its last one is the one whose check failed, if the
    # failure came after a kill).
    stream_here=$(grep -c ' into the stream' "$log" || true)
    restart_here=$(grep -c 'killed a restart' "$log" || true)
    echo "FAILED in run $runs, after $(( done_kills + stream_here )) kills with commands in flight" \
      "($(( all_kills + stream_here + restart_here )) in all; $stream_here and $restart_here in this run)"
    echo "  seed $seed (ONECARD_CRASH_SEED=$seed ONECARD_CRASH_ROUNDS=$rounds)"
    echo "  log: $log"
    echo "  seeds so far: ${seeds[*]}"
    exit 1
  fi
  summary=$(grep '^crash test: ' "$log" | tail -n 1 || true)
  stream=$(printf '%s\n' "$summary" | sed -n 's/.* kills: \([0-9]*\) with the stream running.*/\1/p')
  total=$(printf '%s\n' "$summary" | sed -n 's/^crash test: [0-9]* rounds, \([0-9]*\) kills.*/\1/p')
  if [ -z "$stream" ] || [ -z "$total" ]; then
    echo "FAILED: the test passed but printed no summary line; see $log"
    exit 1
  fi
  done_kills=$(( done_kills + stream ))
  all_kills=$(( all_kills + total ))
  echo "ok: $total kills ($stream with commands in flight) in $(( SECONDS - run_started )) s"
done

elapsed=$(( SECONDS - started ))
echo "==> crash loop passed: $done_kills kills with commands in flight, $all_kills kills in all" \
  "(with kills during recovery), $runs runs, $(( elapsed / 60 )) min $(( elapsed % 60 )) s ($profile)"
echo "    seeds: ${seeds[*]}"
echo "    logs: $logs"
