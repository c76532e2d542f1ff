#!/usr/bin/env bash
# Overload: the node's sustainable rate of new SUBSCRIBEs (the highest
# step answered in full with no 503), then a flood at 5x that for 30 s
# (bench/loadgen overload: new SUBSCRIBEs whose NOTIFYs nobody answers)
# with 100 watchers held through it, and an admin change 15 s in: the
# share answered 503, the server's peak RSS against its memory budget, and
# the delay of the change's NOTIFY to the held watchers.
# Then the same flood from an address outside the trusted networks, all
# refused by policy: the share refused, memory and log growth.
# Porchlight runs with one runtime thread, as in presence-bench.sh.
# Loopback only; every loop is bounded in count and time.
# Usage: bench/overload-bench.sh [rates...]  (default: 5000 10000 20000)
# Env: SECONDS_PER_STEP (10), FLOOD_SECS (30), MEMORY_BUDGET_MIB (1024).
set -euo pipefail
cd "$(dirname "$0")/.."
rates=("${@:-5000 10000 20000}")
read -r -a rates <<< "${rates[*]}"
seconds=${SECONDS_PER_STEP:-10}
flood_secs=${FLOOD_SECS:-30}
budget=${MEMORY_BUDGET_MIB:-1024}
out=bench/out; mkdir -p "$out"
port=25080
source bench/lib.sh

cargo build --release -j2 -q -p porchlight -p porchlight-loadgen

config="$out/overload-bench.toml"
target/release/porchlight config defaults | sed \
  -e "s|udp = \[\"0.0.0.0:5060\"\]|udp = [\"127.0.0.1:$port\"]|" \
  -e "s|tcp = \[\"0.0.0.0:5060\"\]|tcp = []|; s|tls = \[\"0.0.0.0:5061\"\]|tls = []|" \
  -e 's|listen = "127.0.0.1:8088"|listen = "127.0.0.1:25088"|' \
  -e 's|porchlight.test|contoso.com|g' \
  -e 's|^worker_threads = .*|worker_threads = 1|' \
  -e 's|^min_notify_interval_ms = .*|min_notify_interval_ms = 0|' \
  -e "s|^memory_budget_mib = [0-9]*|memory_budget_mib = $budget|" \
  -e 's|^path = "porchlight-data".*|path = ""|' \
  -e 's|^trusted_networks = .*|trusted_networks = ["127.0.0.1/32"]|' > "$config"

server=""
stop() { if [ -n "$server" ]; then kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; server=""; fi; }
trap stop EXIT
# start [log level]: warn unless told, so logging does not load the steps.
start() {
  (cd "$out" && RUST_LOG=${1:-warn} exec ../../target/release/porchlight serve --config overload-bench.toml) \
    >"$out/overload-porchlight.log" 2>&1 &
  server=$!; sleep 1
}
flood() {
  target/release/overload --target 127.0.0.1:$port --admin 127.0.0.1:25088 \
    --token-file "$out/porchlight-admin.token" --uri sip:helpdesk@contoso.com --pid "$server" "$@"
}

echo "## sustainable rate (${seconds} s per step, no admin change)"
sustainable=0
for rate in "${rates[@]}"; do
  start
  line=$(flood --rate "$rate" --secs "$seconds" --change-after-secs 0 | head -1)
  echo "$rate/s: $line"
  stop
  # Sustainable: every request answered 2xx.
  if echo "$line" | grep -q "503 0 (0.0 %), other 0, unanswered 0"; then sustainable=$rate; fi
done
[ "$sustainable" -gt 0 ] || { echo "no step was sustained" >&2; exit 1; }
flood_rate=$((sustainable * 5))
log_growth() {
  echo "log: $(wc -l < "$out/overload-porchlight.log") lines, $(du -k "$out/overload-porchlight.log" | cut -f1) KiB"
}
echo "## flood: ${flood_rate}/s (5 x ${sustainable}) for ${flood_secs} s, 100 held watchers, admin change at 15 s"
start
flood --rate "$flood_rate" --secs "$flood_secs" --change-after-secs 15
grep -E "overloaded|load back" "$out/overload-porchlight.log" | head -4 || true
log_growth
stop
echo "## outside flood: ${flood_rate}/s for ${flood_secs} s from 127.0.0.99 (not trusted), 100 held watchers, log at info"
start info
flood --rate "$flood_rate" --secs "$flood_secs" --change-after-secs 15 --flood-from 127.0.0.99
grep -E "refused" "$out/overload-porchlight.log" | head -4 || true
log_growth
stop
