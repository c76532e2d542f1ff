#!/usr/bin/env bash
# Several Porchlight nodes on a real Redis Cluster (six redis-server
# processes on loopback: three masters, three replicas), measured with
# bench/loadgen:
#   1. CPU per new subscription: one node with its embedded store, a
#      cluster node without a store (its dialogs in Redis only) and a
#      cluster node with both, in alternating rounds; and Redis's own CPU;
#   2. cross-node fan-out: FANOUT watchers held by nodes 2 and 3, one
#      PUBLISH on node 1, time to the last NOTIFY;
#   3. node loss: TAKEOVER watchers held by node 2, kill -9, time from the
#      kill to the first and last re-NOTIFY from the survivors, watchers
#      lost and NOTIFYs repeated; Redis memory per saved subscription;
#   4. drain: TAKEOVER watchers held by node 2, `porchlight cluster drain 2`
#      asked of node 1, time from the command to the first and last
#      re-NOTIFY, watchers lost and NOTIFYs repeated.
# On a 2-core machine six Redis servers, three nodes and the load tool
# share the cores, so throughput is not meaningful here (see RESULTS.md).
# Loopback only; every phase is bounded in count and time.
# Usage: bench/cluster-bench.sh   Env: ROUNDS (3), SUBSCRIPTIONS (20000),
#   FANOUT (10000), TAKEOVER (100000), WINDOW_SECS (30), PHASES (1234)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
subscriptions=${SUBSCRIPTIONS:-20000}
fanout=${FANOUT:-10000}
takeover=${TAKEOVER:-100000}
window=${WINDOW_SECS:-30}
phases=${PHASES:-1234}
out=$PWD/bench/out/cluster; rm -rf "$out"; mkdir -p "$out"
source bench/lib.sh
need=()
command -v redis-server >/dev/null || need+=(redis-server)
install_missing "${need[@]}"
cargo build --release -j2 -q -p porchlight -p porchlight-loadgen
bin=$PWD/target/release/porchlight
loadgen=$PWD/target/release/porchlight-loadgen

redis_ports=(7401 7402 7403 7404 7405 7406)
nodes=()
stop_nodes() {
  for p in "${nodes[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  nodes=()
}
stop_all() {
  stop_nodes
  for p in "${redis_ports[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
}
trap stop_all EXIT

start_redis() {
  for p in "${redis_ports[@]}"; do redis-cli -p "$p" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$out/redis"
  for p in "${redis_ports[@]}"; do
    mkdir -p "$out/redis/$p"
    redis-server --port "$p" --bind 127.0.0.1 --dir "$out/redis/$p" --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 3000 --save '' --appendonly no \
      --daemonize yes --logfile "$out/redis/$p/log"
  done
  for p in "${redis_ports[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$p" ping 2>/dev/null | grep -q PONG && break; sleep 0.1; done
  done
  redis-cli --cluster create $(printf '127.0.0.1:%s ' "${redis_ports[@]}") --cluster-replicas 1 --cluster-yes >/dev/null
  for p in "${redis_ports[@]}"; do
    for _ in $(seq 200); do redis-cli -p "$p" cluster info | grep -q cluster_state:ok && break; sleep 0.1; done
  done
}
redis_pids() { for p in "${redis_ports[@]}"; do redis-cli -p "$p" info server | awk -F: '/^process_id/{printf "%s,", $2}' | tr -d '\r'; done | sed 's/,$//'; }
redis_memory() { local t=0; for p in "${redis_ports[@]}"; do
  if redis-cli -p "$p" role | head -1 | grep -q master; then
    t=$((t + $(redis-cli -p "$p" info memory | awk -F: '/^used_memory:/{print $2}' | tr -d '\r')))
  fi; done; echo "$t"; }

# node N [cluster|alone] [store|nostore] [name]: a node's configuration, UDP 251N0 (and TCP,
# where the other nodes reach it, in a cluster), admin 251N9.
node_config() {
  local n=$1 mode=$2 store=$3 name=${4:-bench} dir="$out/node$1-$2-$3"
  rm -rf "$dir"; mkdir -p "$dir"
  presence_config "$bin" "251${n}0" "$dir/porchlight.toml"
  sed -i -e "s|listen = \"127.0.0.1:8088\"|listen = \"127.0.0.1:251${n}9\"|" \
    -e "s|renotify_window_secs = 30|renotify_window_secs = $window|" "$dir/porchlight.toml"
  if [ "$store" = store ]; then sed -i 's|^path = ""|path = "porchlight-data"|' "$dir/porchlight.toml"; fi
  if [ "$mode" = cluster ]; then
    sed -i "s|^tcp = \[\]|tcp = [\"127.0.0.1:251${n}0\"]|" "$dir/porchlight.toml"
    printf '\n[cluster]\nredis = ["redis://127.0.0.1:%s"]\nnode_id = %s\ninternal = "127.0.0.1:251%s0"\nname = "%s"\n' \
      "${redis_ports[0]}" "$n" "$n" "$name" >> "$dir/porchlight.toml"
  fi
  echo "$dir/porchlight.toml"
}
start_node() {
  RUST_LOG=warn "$bin" serve --config "$1" >"${1%.toml}.log" 2>&1 &
  nodes+=($!)
  for _ in $(seq 200); do grep -q "listening on UDP" "${1%.toml}.log" 2>/dev/null && break
    ss -lun | grep -q ":251${2}0 " && break; sleep 0.05; done
}
median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

start_redis
if [[ $phases == *1* ]]; then
echo "## 1. CPU per new subscription ($subscriptions watchers at 5000/s, $rounds alternating rounds)"
printf "%-22s %-6s %-12s %-14s\n" setup round "node_us/sub" "redis_us/sub"
for round in $(seq "$rounds"); do
  for setup in alone-store cluster-nostore cluster-store; do
    mode=${setup%-*}; store=${setup#*-}
    config=$(node_config 1 "$mode" "$store" "cpu$round$store")
    start_node "$config" 1
    pid=${nodes[-1]}; rpids=$(redis_pids)
    before=$(cpu "$pid"); rbefore=$(cpu "$rpids")
    result=$(timeout 120 "$loadgen" --target 127.0.0.1:25110 --uri sip:helpdesk@contoso.com \
      --watchers "$subscriptions" --rate 5000 --settle-secs 1 --timeout-secs 60 --then restart 2>&1 | head -1 || true)
    after=$(cpu "$pid"); rafter=$(cpu "$rpids")
    ok=$(echo "$result" | awk '{print $2}')
    node_us=$(awk -v b="$before" -v a="$after" -v t="$ticks" -v n="$ok" 'BEGIN{printf "%.1f", (a-b)*1e6/t/n}')
    redis_us=$(awk -v b="$rbefore" -v a="$rafter" -v t="$ticks" -v n="$ok" 'BEGIN{printf "%.1f", (a-b)*1e6/t/n}')
    printf "%-22s %-6s %-12s %-14s\n" "$setup" "$round" "$node_us" "$redis_us" | tee -a "$out/cpu.txt"
    stop_nodes
  done
done
for setup in alone-store cluster-nostore cluster-store; do
  printf "median %-15s node %s us, redis %s us\n" "$setup" \
    "$(awk -v s="$setup" '$1==s{print $3}' "$out/cpu.txt" | median)" \
    "$(awk -v s="$setup" '$1==s{print $4}' "$out/cpu.txt" | median)"
done

fi

if [[ $phases == *2* ]]; then
echo "## 2. cross-node fan-out: $fanout watchers on nodes 2 and 3, PUBLISH on node 1 ($rounds rounds)"
for round in $(seq "$rounds"); do
  for n in 1 2 3; do start_node "$(node_config "$n" cluster nostore "fan$round")" "$n"; done
  timeout 180 "$loadgen" --target 127.0.0.1:25120,127.0.0.1:25130 --publish-to 127.0.0.1:25110 \
    --uri sip:helpdesk@contoso.com --watchers "$fanout" --rate 5000 --user helpdesk --password bench \
    --settle-secs 1 --timeout-secs 120 2>&1 | grep -v '^ ' | tee "$out/fanout-$round.txt"
  stop_nodes
done
echo "median last NOTIFY: $(grep -h 'fan-out:' "$out"/fanout-*.txt | awk '{print $(NF-4)}' | median) s"

fi

if [[ $phases == *3* ]]; then
echo "## 3. node loss: $takeover watchers on node 2, kill -9, re-NOTIFYs from the survivors"
for n in 1 2 3; do start_node "$(node_config "$n" cluster nostore loss)" "$n"; done
doomed=${nodes[1]}
memory_before=$(redis_memory)
timeout 600 "$loadgen" --target 127.0.0.1:25120 --uri sip:helpdesk@contoso.com --watchers "$takeover" \
  --rate 10000 --then restart --settle-secs 2 --timeout-secs 300 >"$out/loss.txt" 2>&1 &
lg=$!
for _ in $(seq 300); do grep -q "ready for restart" "$out/loss.txt" && break; sleep 1; done
grep -q "ready for restart" "$out/loss.txt" || { cat "$out/loss.txt"; exit 1; }
sleep 1 # ten write-behind flushes: every dialog is in Redis
memory_after=$(redis_memory)
killed=$(date +%s.%N)
kill -9 "$doomed"
wait "$lg" || true
grep -v '^ ' "$out/loss.txt"
read -r first last < <(awk '/first re-notify at/{gsub(",", ""); print $4, $7}' "$out/loss.txt")
awk -v k="$killed" -v f="$first" -v l="$last" 'BEGIN{printf "from the kill: first re-NOTIFY %.2f s, last %.2f s\n", f-k, l-k}'
awk -v b="$memory_before" -v a="$memory_after" -v n="$takeover" \
  'BEGIN{printf "Redis memory (masters, used_memory): %.0f bytes per saved subscription\n", (a-b)/n}'
stop_nodes
fi

if [[ $phases == *4* ]]; then
echo "## 4. drain: $takeover watchers on node 2, \`porchlight cluster drain 2\` asked of node 1"
for n in 1 2 3; do start_node "$(node_config "$n" cluster nostore drain)" "$n"; done
timeout 600 "$loadgen" --target 127.0.0.1:25120 --uri sip:helpdesk@contoso.com --watchers "$takeover" \
  --rate 10000 --then restart --settle-secs 2 --timeout-secs 300 >"$out/drain.txt" 2>&1 &
lg=$!
for _ in $(seq 300); do grep -q "ready for restart" "$out/drain.txt" && break; sleep 1; done
grep -q "ready for restart" "$out/drain.txt" || { cat "$out/drain.txt"; exit 1; }
asked=$(date +%s.%N)
"$bin" cluster drain 2 --config "$out/node1-cluster-nostore/porchlight.toml"
wait "$lg" || true
grep -v '^ ' "$out/drain.txt"
read -r first last < <(awk '/first re-notify at/{gsub(",", ""); print $4, $7}' "$out/drain.txt")
awk -v k="$asked" -v f="$first" -v l="$last" 'BEGIN{printf "from the drain command: first re-NOTIFY %.2f s, last %.2f s\n", f-k, l-k}'
stop_nodes
fi
