#!/usr/bin/env bash
# SIPp OPTIONS load over UDP on loopback against `porchlight serve`.
# Steps the offered rate up; at each step runs a bounded number of pings
# and records failures and the server's CPU time per request.
# Usage: bench/options-load.sh [rates...]   (default: 5000 10000 20000 30000 40000)
set -euo pipefail
cd "$(dirname "$0")/.."
rates=("${@:-5000 10000 20000 30000 40000}")
read -r -a rates <<< "${rates[*]}"
port=${PORT:-25060}
seconds=${SECONDS_PER_STEP:-10}
out=bench/out; mkdir -p "$out"

cargo build --release -j2 -q -p porchlight
config="$out/options-load.toml"
target/release/porchlight config defaults \
  | sed "s|udp = \[\"0.0.0.0:5060\"\]|udp = [\"127.0.0.1:$port\"]|; s|tcp = \[\"0.0.0.0:5060\"\]|tcp = []|; s|tls = \[\"0.0.0.0:5061\"\]|tls = []|" > "$config"
RUST_LOG=warn target/release/porchlight serve --config "$config" >"$out/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1
ticks=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$server/stat"; }

printf "%-8s %-8s %-8s %-9s %-10s %-12s\n" rate sent ok failed achieved "cpu_us/req"
for rate in "${rates[@]}"; do
  calls=$((rate * seconds))
  before=$(cpu)
  start=$(date +%s.%N)
  sipp -sf bench/sipp/options-uac.xml -t u1 -r "$rate" -m "$calls" -l $((rate / 2 + 100)) \
       -timeout $((seconds * 3))s -nostdin -i 127.0.0.1 -trace_stat -stf "$out/stat-$rate.csv" \
       -max_socket 1 127.0.0.1:$port >"$out/sipp-$rate.log" 2>&1 || true
  end=$(date +%s.%N)
  after=$(cpu)
  ok=$(tail -1 "$out/stat-$rate.csv" | awk -F';' '{print $16}')
  failed=$(tail -1 "$out/stat-$rate.csv" | awk -F';' '{print $18}')
  achieved=$(echo "$ok / ($end - $start)" | bc -l)
  cpu_us=$(echo "($after - $before) * 1000000 / $ticks / ($ok + 0.0001)" | bc -l)
  printf "%-8s %-8s %-8s %-9s %-10.0f %-12.1f\n" "$rate" "$calls" "$ok" "$failed" "$achieved" "$cpu_us"
done
