#!/usr/bin/env bash
# The Debian package, installed on this machine as an admin would: built,
# installed with dpkg -i, its unit verified by systemd-analyze, the
# installed binary checking and serving the installed configuration as the
# porchlight user, reached by SIPp and read by `porchlight status`, then
# purged, leaving nothing of it behind. Needs root (dpkg); run by
# scripts/test.sh. SIP on the packaged defaults' ports (5060, 5061; the
# admin API on 127.0.0.1:8088), which must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "package-test.sh: run as root (it installs the package with dpkg -i)" >&2; exit 1; }
if dpkg -s porchlight >/dev/null 2>&1; then
  echo "package-test.sh: porchlight is installed already; remove it first (dpkg --purge porchlight)" >&2
  exit 1
fi

scripts/package.sh
deb=$(ls -t target/debian/porchlight_*.deb | head -1)
work=$(mktemp -d)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null
  dpkg --purge porchlight >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "package-test.sh: $*" >&2; exit 1; }

dpkg -i "$deb"
unit=$(dpkg -L porchlight | grep '/systemd/system/porchlight.service$') || fail "no unit in the package"
for f in /usr/bin/porchlight /etc/porchlight/porchlight.toml /usr/share/man/man1/porchlight.1.gz \
         /usr/share/bash-completion/completions/porchlight /usr/share/porchlight/prometheus/porchlight-rules.yml; do
  [ -e "$f" ] || fail "$f is not installed"
done
getent passwd porchlight >/dev/null || fail "no porchlight user"
[ "$(stat -c %U /var/lib/porchlight)" = porchlight ] || fail "/var/lib/porchlight is not the porchlight user's"
[ "$(stat -c %a:%G /etc/porchlight/porchlight.toml)" = 640:porchlight ] || fail "the configuration is not 0640 root:porchlight"
dpkg-query -W -f='${Conffiles}\n' porchlight | grep -q /etc/porchlight/porchlight.toml || fail "the configuration is not a conffile"
systemd-analyze verify "$unit"
# The sandbox, as systemd scores it (0 is the most locked down, 10 the
# least): 1.8 today; more than 2.0 means a protection was lost.
systemd-analyze security --offline=true --threshold=20 "$unit" >"$work/security.txt" \
  || { cat "$work/security.txt"; fail "the unit's exposure rose above 2.0"; }
man -l /usr/share/man/man1/porchlight.1.gz >/dev/null 2>&1 || zcat /usr/share/man/man1/porchlight.1.gz | grep -q '^\.TH porchlight' || fail "the manual page does not render"

runuser -u porchlight -- porchlight config check /etc/porchlight/porchlight.toml
runuser -u porchlight -- porchlight serve --config /etc/porchlight/porchlight.toml >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 200); do
  grep -q "listening on TLS" "$work/serve.log" && break
  kill -0 "$server" 2>/dev/null || { cat "$work/serve.log"; fail "the installed node stopped"; }
  sleep 0.1
done
grep -q "listening on TLS" "$work/serve.log" || { cat "$work/serve.log"; fail "the installed node did not start in 20 s"; }

# porchlight.test is the packaged domain; helpdesk its example endpoint.
(cd "$work" && sipp -sf "$OLDPWD/bench/sipp/subscribe-uac.xml" -s helpdesk -m 1 -timeout 20s -nostdin \
  -trace_msg -message_file messages.log 127.0.0.1:5060 >sipp.out 2>&1) || { cat "$work/sipp.out"; fail "SIPp's subscription failed"; }
grep -q "<basic>open</basic>" "$work/messages.log" || fail "no NOTIFY with <basic>open</basic>"
status=$(porchlight status --config /etc/porchlight/porchlight.toml)
echo "$status" | grep -q "serving porchlight.test" || fail "status: $status"
[ -s /var/lib/porchlight/admin.token ] || fail "no admin token in the state directory"
[ -d /var/lib/porchlight/store ] || fail "no store in the state directory"

kill "$server"; wait "$server" 2>/dev/null || true; server=""
dpkg --purge porchlight
for f in /usr/bin/porchlight /etc/porchlight /var/lib/porchlight "$unit"; do
  [ ! -e "$f" ] || fail "$f is left after purge"
done
echo "package-test.sh: the package installs, serves and purges cleanly ($deb)"
