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
