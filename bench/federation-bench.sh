#!/usr/bin/env bash
# Policy overhead on the federation path: new presence subscriptions per
# second through one mutual-TLS connection from a partner (fabrikam.com) to
# the edge (contoso.com, 1k endpoints), with a realistic policy deciding
# every request (100 allowed domains, 1k blocked, 5 providers, a named
# grant on every endpoint) against the same run with policy off (loopback
# trusted, so no decision is made). bench/loadgen's federation-load keeps a
# window of SUBSCRIBEs outstanding and answers every NOTIFY; each run
# subscribes COUNT watchers on a fresh server. Runs alternate on/off ROUNDS
# times; report the medians. Loopback only; every run is bounded in count
# and time.
# Usage: bench/federation-bench.sh   Env: COUNT (100000), ROUNDS (5), WINDOW (256)
set -euo pipefail
cd "$(dirname "$0")/.."
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
  printf '%s\n%s\n' "$base" "$(cat "$out/policy-$mode.toml")" > "$out/porchlight-$mode.toml"
  target/release/porchlight config check "$out/porchlight-$mode.toml" >/dev/null
done

server=""
stop() { if [ -n "$server" ]; then kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; server=""; fi; }
trap stop EXIT
: > "$out/results.txt"
for round in $(seq "$rounds"); do
  for mode in on off; do
    RUST_LOG=warn target/release/porchlight serve --config "$out/porchlight-$mode.toml" >"$out/porchlight-$mode.log" 2>&1 &
    server=$!; sleep 1
    line=$(timeout 300 target/release/federation-load run --target "127.0.0.1:$port" --dir "$out" \
      --count "$count" --window "$window" --pid "$server")
    echo "round=$round policy=$mode $line" | tee -a "$out/results.txt"
    stop
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for mode in on off; do
  rate=$(grep "policy=$mode " "$out/results.txt" | sed 's/.*per_second=\([0-9]*\).*/\1/' | median)
  cpu=$(grep "policy=$mode " "$out/results.txt" | sed 's/.*per_subscription=\([0-9.]*\).*/\1/' | median)
  echo "policy $mode: median $rate subscriptions/s, median server CPU $cpu us/subscription"
done
