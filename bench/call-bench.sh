#!/usr/bin/env bash
# Calls and IM through Porchlight, with SIPp on both sides:
#   1. call setups per second (INVITE -> 180 -> 200 -> ACK -> BYE -> 200,
#      bench/sipp/call-uac.xml against bench/sipp/bench-uas.xml), through
#      Porchlight (the caller's INVITE for sip:ivr@contoso.com goes to the
#      endpoint's sip_target) and, in the same run with the same tools,
#      through Kamailio 5.6 as a plain stateful proxy (bench/kamailio/proxy.cfg);
#      both record-route, so ACK and BYE pass through the proxy too;
#   2. IM deliveries per second (bench/sipp/message-uac.xml) to a SIP contact
#      (SIPp bench/sipp/message-uas.xml as the endpoint's sip_target) and to a
#      webhook (bench/loadgen webhook-sink, kept-alive HTTP/1.1).
# Everything runs on loopback; every step is bounded in count and time.
# Both proxies get comparable shares of the two cores: Kamailio two UDP
# workers, Porchlight one runtime thread (its event loop is single).
# Usage: bench/call-bench.sh [call rates...]   (default: 500 1000 2000 3000)
# Env: SECONDS_PER_STEP (10), IM_RATES ("2000 5000 10000"), ROUNDS (1).
set -euo pipefail
cd "$(dirname "$0")/.."
rates=("${@:-500 1000 2000 3000}")
read -r -a rates <<< "${rates[*]}"
seconds=${SECONDS_PER_STEP:-10}
im_rates=${IM_RATES:-2000 5000 10000}
rounds=${ROUNDS:-1}
out=bench/out; mkdir -p "$out"
pl_port=25070
km_port=25060
callee_port=25090
caller_port=25091
hook_port=25095

need=()
command -v sipp >/dev/null || need+=(sip-tester)
command -v kamailio >/dev/null || need+=(kamailio)
source bench/lib.sh
install_missing "${need[@]}"

cargo build --release -j2 -q -p porchlight -p porchlight-loadgen

pl_config="$out/call-bench.toml"
target/release/porchlight config defaults | sed \
  -e "s|udp = \[\"0.0.0.0:5060\"\]|udp = [\"127.0.0.1:$pl_port\"]|" \
  -e "s|tcp = \[\"0.0.0.0:5060\"\]|tcp = []|; s|tls = \[\"0.0.0.0:5061\"\]|tls = []|" \
  -e 's|porchlight.test|contoso.com|g' \
  -e 's|^worker_threads = .*|worker_threads = 1|' \
  -e 's|^path = "porchlight-data".*|path = ""|' \
  -e 's|^listen = "127.0.0.1:8088".*|listen = ""|' > "$pl_config"
cat >> "$pl_config" <<TOML

[[endpoint]]
uri = "sip:ivr@contoso.com"
display_name = "IVR"
sip_target = "sip:127.0.0.1:$callee_port"

[[endpoint]]
uri = "sip:bot@contoso.com"
display_name = "Bot"
capabilities = ["im"]
[endpoint.webhook]
url = "http://127.0.0.1:$hook_port/im"
secret = "bench"
TOML
km_config="$out/proxy.cfg"
sed -e "s|@PORT@|$km_port|; s|@CALLEE@|127.0.0.1:$callee_port|" bench/kamailio/proxy.cfg > "$km_config"

server=""; helper=""
stop_helper() { if [ -n "$helper" ]; then kill $helper 2>/dev/null || true; wait $helper 2>/dev/null || true; helper=""; fi; }
stop() {
  stop_helper
  if [ -n "$server" ]; then kill $server 2>/dev/null || true; wait $server 2>/dev/null || true; server=""; fi
  pkill -f "kamailio -f $PWD/$km_config" 2>/dev/null || true; sleep 1
}
trap stop EXIT
start_porchlight() {
  RUST_LOG=warn target/release/porchlight serve --config "$pl_config" >"$out/porchlight.log" 2>&1 &
  server=$!; sleep 1; pids=$server; port=$pl_port
}
start_kamailio() {
  kamailio -f "$PWD/$km_config" -DD -E -m 1024 -M 64 >"$out/kamailio.log" 2>&1 &
  server=$!; sleep 2; pids=$(pgrep -d, -f "kamailio -f $PWD/$km_config"); port=$km_port
}

# One SIPp step: $1 name, $2 rate, $3 scenario, $4 service; prints a row.
step() {
  local name=$1 rate=$2 scenario=$3 service=$4
  local calls=$((rate * seconds)) csv="$out/$name-$service-$rate.csv"
  rm -f "$csv"
  local before start end after ok failed achieved cpu_us
  before=$(cpu "$pids"); start=$(date +%s.%N)
  sipp -sf "bench/sipp/$scenario" -s "$service" -key domain contoso.com -key caller sip:load@127.0.0.1 \
       -t u1 -r "$rate" -m "$calls" -l $((rate * 2)) -buff_size 33554432 -timeout $((seconds * 4))s \
       -nostdin -i 127.0.0.1 -p $caller_port -trace_stat -stf "$csv" \
       127.0.0.1:$port >"$out/sipp-$name-$service-$rate.log" 2>&1 || true
  end=$(date +%s.%N); after=$(cpu "$pids")
  read -r ok failed achieved cpu_us < <(sipp_result "$csv" "$start" "$end" "$before" "$after")
  printf "%-10s %-8s %-8s %-8s %-8s %-10s %-12s\n" "$name" "$rate" "$calls" "$ok" "$failed" "$achieved" "$cpu_us"
}

callee() {
  sipp -sf "bench/sipp/$1" -t u1 -i 127.0.0.1 -p $callee_port -buff_size 33554432 -nostdin \
       -timeout $((seconds * 6))s >"$out/callee.log" 2>&1 &
  helper=$!; sleep 0.5
}

echo "## call setups per second (SIPp caller and callee, ${seconds} s per step, $rounds round(s))"
printf "%-10s %-8s %-8s %-8s %-8s %-10s %-12s\n" server offered calls ok failed "calls/s" "cpu_us/call"
for round in $(seq "$rounds"); do
  # Alternate which proxy goes first, so neither always meets a warmer machine.
  order="porchlight kamailio"; [ $((round % 2)) -eq 0 ] && order="kamailio porchlight"
  for rate in "${rates[@]}"; do
    for name in $order; do
      "start_$name"; callee bench-uas.xml
      step "$name" "$rate" call-uac.xml ivr
      stop
    done
  done
done

echo "## IM deliveries per second (Porchlight, ${seconds} s per step)"
printf "%-10s %-8s %-8s %-8s %-8s %-10s %-12s\n" to offered sent ok failed "msgs/s" "cpu_us/msg"
for rate in $im_rates; do
  start_porchlight; callee message-uas.xml
  step sip "$rate" message-uac.xml ivr
  stop
  start_porchlight
  target/release/webhook-sink --listen 127.0.0.1:$hook_port --secs $((seconds * 6)) >"$out/webhook-sink.log" 2>&1 &
  helper=$!; sleep 0.5
  step webhook "$rate" message-uac.xml bot
  stop
  echo "           (the webhook app counted $(cat "$out/webhook-sink.log"))"
done
