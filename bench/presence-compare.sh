#!/usr/bin/env bash
# Presence figures of this checkout against an earlier commit, in one run:
# both binaries are built in release, then take turns, round after round,
# under the same load from the same tools (this checkout's SIPp scenario
# and HEAD_REV's loadgen), so drift on a shared machine falls on both alike:
#   1. new subscriptions per second at RATE offered for SECONDS (SIPp
#      bench/sipp/subscribe-rate-uac.xml), with server CPU per subscription;
#   2. fan-out: N watchers of one endpoint, one PUBLISH, time to the last
#      NOTIFY (bench/loadgen), for each of FANOUT_SIZES.
# Each binary runs with its own embedded defaults and the same edits as
# bench/presence-bench.sh (one runtime thread, no per-watcher interval,
# memory only). Everything is on loopback; every loop is bounded.
# Usage: bench/presence-compare.sh BASE_REV [HEAD_REV (default HEAD)]
# Env: ROUNDS (3), RATE (20000), SECONDS_PER_STEP (10), FANOUT_SIZES ("10000 100000").
set -euo pipefail
cd "$(dirname "$0")/.."
base_rev=${1:?usage: bench/presence-compare.sh BASE_REV [HEAD_REV]}
head_rev=$(git rev-parse --short "${2:-HEAD}")
base_rev=$(git rev-parse --short "$base_rev")
rounds=${ROUNDS:-3}
rate=${RATE:-20000}
seconds=${SECONDS_PER_STEP:-10}
fanout_sizes=${FANOUT_SIZES:-10000 100000}
out=bench/out/compare; mkdir -p "$out"
port=25070

need=()
command -v sipp >/dev/null || need+=(sip-tester)
source bench/lib.sh
install_missing "${need[@]}"

# Both builds come from worktrees of fixed commits, so the checkout can
# change while this runs.
declare -A rev=([head]="$head_rev" [base]="$base_rev")
git worktree prune
cleanup() { for name in head base; do git worktree remove --force "$out/$name-tree" 2>/dev/null || true; done; }
trap cleanup EXIT
for name in head base; do
  rm -rf "$out/$name-tree"
  git worktree add -q --detach "$out/$name-tree" "${rev[$name]}"
  (cd "$out/$name-tree" && CARGO_TARGET_DIR="$PWD/../$name-target" cargo build --release -j2 -q -p porchlight)
done
(cd "$out/head-tree" && CARGO_TARGET_DIR="$PWD/../head-target" cargo build --release -j2 -q -p porchlight-loadgen)
declare -A binary=([head]="$out/head-target/release/porchlight" [base]="$out/base-target/release/porchlight")
loadgen="$out/head-target/release/porchlight-loadgen"

for name in head base; do
  presence_config "${binary[$name]}" "$port" "$out/$name.toml"
done

server=""
stop() { if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; fi; sleep 1; }
trap 'stop; cleanup' EXIT
start() {
  RUST_LOG=warn "${binary[$1]}" serve --config "$out/$1.toml" >"$out/$1.log" 2>&1 &
  server=$!; sleep 1
}

results="$out/results.txt"; : > "$results"
for round in $(seq "$rounds"); do
  for name in head base; do
    start "$name"
    calls=$((rate * seconds))
    before=$(cpu "$server"); t0=$(date +%s.%N)
    sipp -sf bench/sipp/subscribe-rate-uac.xml -s helpdesk -key domain contoso.com -t u1 \
         -r "$rate" -m "$calls" -l $((rate * 3)) -buff_size 33554432 -timeout $((seconds * 4))s \
         -nostdin -i 127.0.0.1 -trace_stat -stf "$out/sub-$name.csv" \
         127.0.0.1:$port >"$out/sipp-$name.log" 2>&1 || true
    t1=$(date +%s.%N); after=$(cpu "$server")
    read -r ok failed achieved cpu_us < <(sipp_result "$out/sub-$name.csv" "$t0" "$t1" "$before" "$after")
    echo "round $round $name subscribe ok=$ok failed=$failed per_sec=$achieved cpu_us=$cpu_us" | tee -a "$results"
    stop
    for n in $fanout_sizes; do
      start "$name"
      line=$("$loadgen" --target 127.0.0.1:$port --uri sip:helpdesk@contoso.com \
        --watchers "$n" --rate 5000 --user helpdesk --password bench --timeout-secs 120 2>&1 \
        | grep '^fan-out' || echo "fan-out: failed")
      secs=$(sed -n 's/.*last NOTIFY \([0-9.]*\) s after.*/\1/p' <<< "$line")
      echo "round $round $name fanout$n secs=${secs:-nan} ($line)" | tee -a "$results"
      stop
    done
  done
done

median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
echo "## medians of $rounds rounds (head = $head_rev, base = $base_rev)"
for name in head base; do
  per_sec=$(grep " $name subscribe" "$results" | sed 's/.*per_sec=\([0-9.]*\).*/\1/' | median)
  cpu_us=$(grep " $name subscribe" "$results" | sed 's/.*cpu_us=\([0-9.]*\).*/\1/' | median)
  line="$name: subscriptions/s $per_sec, cpu us/subscription $cpu_us"
  for n in $fanout_sizes; do
    f=$(grep " $name fanout$n " "$results" | sed 's/.*secs=\([0-9.]*\).*/\1/' | median)
    line="$line, fan-out $n: $f s"
  done
  echo "$line"
done
