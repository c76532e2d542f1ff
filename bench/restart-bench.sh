#!/usr/bin/env bash
# Restart under load: COUNT watchers (bench/loadgen, UDP, 16 sockets) hold
# subscriptions to the demo endpoint with write-behind on; the server is
# killed with SIGKILL a second after the last one was acknowledged (ten
# flush intervals) and started again on the same store. Reports the time
# from the restart until the node answers SIP again (an OPTIONS probe
# every 20 ms), the subscriptions restored and lost, and how the
# watchers' re-notifies arrive (spread over renotify_window_secs).
# Loopback only; every phase is bounded in time.
# Usage: bench/restart-bench.sh   Env: COUNT (1000000), RATE (25000), WINDOW_SECS (30)
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-1000000}
rate=${RATE:-25000}
window=${WINDOW_SECS:-30}
out=bench/out/restart; rm -rf "$out"; mkdir -p "$out"
port=25081
admin=25082

cargo build --release -j2 -q -p porchlight -p porchlight-loadgen
target/release/porchlight config defaults | sed \
  -e "s|udp = \[\"0.0.0.0:5060\"\]|udp = [\"127.0.0.1:$port\"]|; s|tcp = \[\"0.0.0.0:5060\"\]|tcp = []|; s|tls = \[\"0.0.0.0:5061\"\]|tls = []|" \
  -e "s|^worker_threads = .*|worker_threads = 1|" \
  -e "s|listen = \"127.0.0.1:8088\"|listen = \"127.0.0.1:$admin\"|" \
  -e "s|renotify_window_secs = 30|renotify_window_secs = $window|" > "$out/porchlight.toml"
target/release/porchlight config check "$out/porchlight.toml" >/dev/null

server=""; loadgen=""
stop() {
  for p in $server $loadgen; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  server=""; loadgen=""
}
trap stop EXIT
status() {
  python3 - "$admin" "$out/porchlight-admin.token" <<'PY'
import json, sys, urllib.request
token = open(sys.argv[2]).read().strip()
req = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/api/v1/status", headers={"Authorization": f"Bearer {token}"})
s = json.load(urllib.request.urlopen(req, timeout=30))
print(s["subscriptions_active"], (s.get("store") or {}).get("restored", 0))
PY
}
serving() {
  # Seconds from $1 (Unix time) until an OPTIONS gets an answer (20 ms
  # probes, 60 s at most).
  python3 - "$port" "$1" <<'PY'
import socket, sys, time
since = float(sys.argv[2])
start = time.monotonic()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1", 0)); s.settimeout(0.02)
local = "127.0.0.1:%d" % s.getsockname()[1]
n = 0
while time.monotonic() - start < 60:
    n += 1
    msg = (f"OPTIONS sip:127.0.0.1:{sys.argv[1]} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-probe{n}\r\n"
           f"Max-Forwards: 70\r\nFrom: <sip:probe@bench.invalid>;tag=p\r\nTo: <sip:127.0.0.1>\r\n"
           f"Call-ID: probe-{n}\r\nCSeq: {n} OPTIONS\r\nContent-Length: 0\r\n\r\n")
    s.sendto(msg.encode(), ("127.0.0.1", int(sys.argv[1])))
    try:
        while True:
            data = s.recv(65536)
            if data.startswith(b"SIP/2.0 200") and b"probe-" in data:
                print("%.3f" % (time.time() - since)); sys.exit(0)
    except socket.timeout:
        pass
print("never"); sys.exit(1)
PY
}

RUST_LOG=info target/release/porchlight serve --config "$out/porchlight.toml" >"$out/first.log" 2>&1 &
server=$!
serving "$(date +%s.%N)" >/dev/null
timeout 600 target/release/porchlight-loadgen --target "127.0.0.1:$port" --uri sip:helpdesk@porchlight.test \
  --watchers "$count" --rate "$rate" --then restart --timeout-secs 300 --settle-secs 0 >"$out/loadgen.txt" 2>&1 &
loadgen=$!
for _ in $(seq 600); do grep -q "ready for restart" "$out/loadgen.txt" && break; sleep 1; done
grep -q "ready for restart" "$out/loadgen.txt" || { cat "$out/loadgen.txt"; exit 1; }
sleep 1
read -r before _ < <(status)
rss=$(awk '/VmRSS/{print $2}' "/proc/$server/status")
kill -9 "$server"; wait "$server" 2>/dev/null || true
du_store=$(du -sk "$out/porchlight-data" | cut -f1)
restart_at=$(date +%s.%N)
RUST_LOG=info target/release/porchlight serve --config "$out/porchlight.toml" >"$out/second.log" 2>&1 &
server=$!
to_serve=$(serving "$restart_at")
wait "$loadgen" || true; loadgen=""
read -r after restored < <(status)
echo "subscriptions before the kill: $before (server RSS ${rss} KiB, store on disk ${du_store} KiB)"
echo "serving again after: ${to_serve} s"
grep -o "restored [0-9]* of [0-9]* saved subscriptions in [^;]*" "$out/second.log" || true
echo "restored: $restored, active after: $after, lost: $((before - restored))"
grep -E "^(subscribed|re-notified)" "$out/loadgen.txt"
