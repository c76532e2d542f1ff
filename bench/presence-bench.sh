#!/usr/bin/env bash
# Presence benchmarks, Porchlight and Kamailio 5.6 (memory-only presence,
# bench/kamailio/presence.cfg) in the same run with the same load tools:
#   1. new subscriptions per second (SIPp bench/sipp/subscribe-rate-uac.xml:
#      SUBSCRIBE -> 2xx, NOTIFY -> 200), stepping the offered rate;
#   2. fan-out: N watchers of one endpoint, one PUBLISH, time to the last
#      NOTIFY (bench/loadgen), for 10k and 100k watchers;
#   3. memory per subscription (PSS delta) at MEMORY_WATCHERS (default 1M)
#      watchers of one endpoint, which are then all notified of one change.
# Everything runs on loopback; every loop is bounded in count and time.
# Both servers get the machine's two cores' worth of configuration: Kamailio
# two UDP workers, Porchlight one runtime thread (its event loop is single;
# the load tools need the other core). Porchlight's per-watcher notification
# interval is 0 here (as Kamailio has none) so a change right after the
# build-up is sent at once; everything else is the embedded default.
# Usage: bench/presence-bench.sh [rates...]  (default: 5000 10000 15000 20000 25000)
# Env: SECONDS_PER_STEP (10), FANOUT_SIZES ("10000 100000"),
#      MEMORY_WATCHERS (1000000), MEMORY_RATE (10000), SKIP_KAMAILIO_MEMORY.
set -euo pipefail
cd "$(dirname "$0")/.."
rates=("${@:-5000 10000 15000 20000 25000}")
read -r -a rates <<< "${rates[*]}"
seconds=${SECONDS_PER_STEP:-10}
fanout_sizes=${FANOUT_SIZES:-10000 100000}
memory_watchers=${MEMORY_WATCHERS:-1000000}
memory_rate=${MEMORY_RATE:-10000}
out=bench/out; mkdir -p "$out"
pl_port=25070
km_port=25060

need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v kamailio >/dev/null || need+=(kamailio)
[ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/presence.so ] || need+=(kamailio-presence-modules)
source bench/lib.sh
install_missing "${need[@]}"

cargo build --release -j2 -q -p porchlight -p porchlight-loadgen

pl_config="$out/presence-bench.toml"
presence_config target/release/porchlight "$pl_port" "$pl_config"

server=""
stop() { if [ -n "$server" ]; then kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; server=""; fi; pkill -f "kamailio -f $PWD/bench/kamailio" 2>/dev/null || true; sleep 1; }
trap stop EXIT
start_porchlight() {
  RUST_LOG=warn target/release/porchlight serve --config "$pl_config" >"$out/porchlight.log" 2>&1 &
  server=$!; sleep 1; pids=$server; port=$pl_port
}
start_kamailio() {
  kamailio -f "$PWD/bench/kamailio/presence.cfg" -DD -E -m 4096 -M 1024 \
    >"$out/kamailio.log" 2>&1 &
  server=$!; sleep 2; pids=$(pgrep -d, -f "kamailio -f $PWD/bench/kamailio"); port=$km_port
}

echo "## new subscriptions per second (SIPp, ${seconds} s per step)"
printf "%-10s %-8s %-8s %-8s %-8s %-10s %-12s\n" server offered sent ok failed achieved "cpu_us/sub"
for name in porchlight kamailio; do
  for rate in "${rates[@]}"; do
    "start_$name"
    calls=$((rate * seconds))
    before=$(cpu "$pids")
    start=$(date +%s.%N)
    sipp -sf bench/sipp/subscribe-rate-uac.xml -s helpdesk -key domain contoso.com -t u1 \
         -r "$rate" -m "$calls" -l $((rate * 3)) -buff_size 33554432 -timeout $((seconds * 4))s \
         -nostdin -i 127.0.0.1 -trace_stat -stf "$out/sub-$name-$rate.csv" \
         127.0.0.1:$port >"$out/sipp-$name-$rate.log" 2>&1 || true
    end=$(date +%s.%N)
    after=$(cpu "$pids")
    read -r ok failed achieved cpu_us < <(sipp_result "$out/sub-$name-$rate.csv" "$start" "$end" "$before" "$after")
    printf "%-10s %-8s %-8s %-8s %-8s %-10s %-12s\n" "$name" "$rate" "$calls" "$ok" "$failed" "$achieved" "$cpu_us"
    stop
  done
done

echo "## fan-out: one PUBLISH, time to the last NOTIFY (loadgen)"
for n in $fanout_sizes; do
  for name in porchlight kamailio; do
    "start_$name"
    echo "### $name, $n watchers"
    target/release/porchlight-loadgen --target 127.0.0.1:$port --uri sip:helpdesk@contoso.com \
      --watchers "$n" --rate 5000 --user helpdesk --password bench --timeout-secs 120 2>&1 | grep -v '^ ' || true
    stop
  done
done

echo "## memory: $memory_watchers watchers of one endpoint, then one change to all of them"
names=porchlight
[ -n "${SKIP_KAMAILIO_MEMORY:-}" ] || names="porchlight kamailio"
for name in $names; do
  "start_$name"
  echo "### $name"
  target/release/porchlight-loadgen --target 127.0.0.1:$port --uri sip:helpdesk@contoso.com \
    --watchers "$memory_watchers" --rate "$memory_rate" --user helpdesk --password bench \
    --pid "$pids" --settle-secs 40 --timeout-secs 300 2>&1 | grep -v '^ ' || true
  stop
done
