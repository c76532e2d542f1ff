#!/usr/bin/env bash
# The cost of a feature on the federation path: new presence subscriptions
# per second through one mutual-TLS connection from a partner
# (fabrikam.com) to the edge (contoso.com, 1k endpoints), with the feature
# on against the same run with it off. bench/loadgen's federation-load
# keeps a window of SUBSCRIBEs outstanding and answers every NOTIFY; each
# run subscribes COUNT watchers on a fresh server. Runs alternate on/off
# ROUNDS times; report the medians. Loopback only; every run is bounded in
# count and time. Which side runs first alternates by round.
#   COMPARE=policy: a realistic policy deciding every request (100 allowed
#     domains, 1k blocked, 5 providers, a named grant on every endpoint)
#     against policy off (loopback trusted, so no decision is made).
#   COMPARE=store: write-behind to the embedded store (a fresh store each
#     run, 100 ms flushes) against memory only, both with the policy on.
# Usage: bench/federation-bench.sh   Env: COMPARE (policy), COUNT (100000), ROUNDS (5), WINDOW (256)
set -euo pipefail
cd "$(dirname "$0")/.."
compare=${COMPARE:-policy}
count=${COUNT:-100000}
rounds=${ROUNDS:-5}
window=${WINDOW:-256}
out=bench/out/federation; mkdir -p "$out"
port=25071

cargo build --release -j2 -q -p porchlight -p porchlight-loadgen
target/release/federation-load setup --dir "$out"

# The embedded defaults without their [policy] and demo endpoint, then each tail.
base=$(target/release/porchlight config defaults | sed \
  -e "s|udp = \[\"0.0.0.0:5060\"\]|udp = []|; s|tcp = \[\"0.0.0.0:5060\"\]|tcp = []|" \
  -e "s|tls = \[\"0.0.0.0:5061\"\]|tls = [\"127.0.0.1:$port\"]|" \
  -e 's|porchlight.test|contoso.com|g' \
  -e 's|^worker_threads = .*|worker_threads = 1|' |
  awk '/^\[policy\]/{skip=1} /^# Without a \[tls\]/{skip=0} !skip')
for mode in on off; do
  case "$compare" in
    policy) policy=$mode; store="";;
    store) policy=on; store=$([ "$mode" = on ] && echo "$PWD/$out/data" || echo "");;
    *) echo "COMPARE is policy or store" >&2; exit 2;;
  esac
  printf '%s\n%s\n\n[store]\npath = "%s"\n' "$base" "$(cat "$out/policy-$policy.toml")" "$store" \
    > "$out/porchlight-$mode.toml"
  target/release/porchlight config check "$out/porchlight-$mode.toml" >/dev/null
done

server=""
stop() { if [ -n "$server" ]; then kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; server=""; fi; }
trap stop EXIT
: > "$out/results.txt"
for round in $(seq "$rounds"); do
  # Alternate which goes first, so a machine speeding up or slowing down
  # over the runs does not favour one side.
  order="on off"; [ $((round % 2)) -eq 0 ] && order="off on"
  for mode in $order; do
    rm -rf "$out/data"
    RUST_LOG=warn target/release/porchlight serve --config "$out/porchlight-$mode.toml" >"$out/porchlight-$mode.log" 2>&1 &
    server=$!; sleep 1
    line=$(timeout 300 target/release/federation-load run --target "127.0.0.1:$port" --dir "$out" \
      --count "$count" --window "$window" --pid "$server")
    echo "round=$round $compare=$mode $line" | tee -a "$out/results.txt"
    stop
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { grep "$compare=$1 " "$out/results.txt" | sed "s/.*$2=\([0-9.]*\).*/\1/"; }
for mode in on off; do
  echo "$compare $mode: median $(field $mode per_second | median) subscriptions/s, median server CPU $(field $mode per_subscription | median) us/subscription"
done
slower=$(paste <(field on per_second) <(field off per_second) | awk '{printf "%.2f\n", ($2/$1-1)*100}' | median)
more_cpu=$(paste <(field on per_subscription) <(field off per_subscription) | awk '{printf "%.2f\n", ($1/$2-1)*100}' | median)
echo "$compare on against off, median of per-round ratios: ${slower} % slower, ${more_cpu} % more CPU per subscription"
