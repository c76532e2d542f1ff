# Shared by the SIPp benchmarks (sourced, not run).

# Installs the Debian packages named, when any of the checks before them
# found something missing: `install_missing "${need[@]}"`.
install_missing() {
  if [ $# -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
  fi
}

# The servers and the load tools ask for large UDP buffers; let them have them.
sysctl -q -w net.core.rmem_max=33554432 net.core.wmem_max=33554432 || true

ticks=$(getconf CLK_TCK)
# CPU ticks (user + system) of a comma-separated list of processes.
cpu() { local t=0; for p in ${1//,/ }; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo "$t"; }

# From a SIPp statistics file and a step's wall-clock start and end (date
# +%s.%N) and CPU ticks before and after: "ok failed per-second cpu-us-each".
sipp_result() {
  local csv=$1 start=$2 end=$3 before=$4 after=$5 ok failed
  ok=$(tail -1 "$csv" | awk -F';' '{print $16}')
  failed=$(tail -1 "$csv" | awk -F';' '{print $18}')
  awk -v ok="$ok" -v failed="$failed" -v s="$start" -v e="$end" -v b="$before" -v a="$after" -v t="$ticks" \
    'BEGIN { printf "%s %s %.0f %.1f\n", ok, failed, ok / (e - s), (a - b) * 1000000 / t / (ok + 0.0001) }'
}

# The presence benchmarks' configuration, from the embedded defaults of the
# porchlight binary $1: UDP only on 127.0.0.1:$2, one runtime thread, no
# per-watcher notification interval, no store, MD5 digest for the load
# tools, the demo endpoint registrable. Written to $3.
presence_config() {
  "$1" config defaults | sed \
    -e "s|udp = \[\"0.0.0.0:5060\"\]|udp = [\"127.0.0.1:$2\"]|" \
    -e "s|tcp = \[\"0.0.0.0:5060\"\]|tcp = []|; s|tls = \[\"0.0.0.0:5061\"\]|tls = []|" \
    -e 's|porchlight.test|contoso.com|g' \
    -e 's|^worker_threads = .*|worker_threads = 1|' \
    -e 's|^min_notify_interval_ms = .*|min_notify_interval_ms = 0|' \
    -e 's|^max_subscriptions_per_watcher = .*|max_subscriptions_per_watcher = 100000000|' \
    -e 's|^digest_algorithms = .*|digest_algorithms = ["MD5"]|' \
    -e 's|^path = "porchlight-data".*|path = ""|' > "$3"
  printf '[endpoint.registration]\npassword = "bench"\n' >> "$3"
}
