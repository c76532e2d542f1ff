#!/usr/bin/env bash
# Installs what the tests need (when missing) and runs every check CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
[ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
dpkg -s kamailio-tls-modules >/dev/null 2>&1 || need+=(kamailio-tls-modules)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
command -v chromedriver >/dev/null 2>&1 || need+=(chromium-driver)
# The cluster tests start their own Redis Cluster (six servers on loopback).
{ command -v redis-server && command -v redis-cli; } >/dev/null 2>&1 || need+=(redis-server)
# The capture tests send HEP to sngrep; the alerting rules are checked by promtool.
command -v sngrep >/dev/null 2>&1 || need+=(sngrep)
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# The package test installs the .deb (adduser in its postinst) and verifies
# its unit with systemd-analyze.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v adduser >/dev/null 2>&1 || need+=(adduser)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing ${need[*]}: run as root or install them with apt-get" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"
fi

# SIPVicious (PyPI) scans for endpoints in the enumeration tests.
if ! command -v sipvicious_svwar >/dev/null 2>&1; then
  command -v pip3 >/dev/null 2>&1 || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip
  }
  pip3 install --quiet sipvicious 2>/dev/null || pip3 install --quiet --break-system-packages sipvicious
fi

# The connection-flood tests hold 10,000 connections each side; root may
# raise the hard limit, anyone the soft one up to it.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# The node's core (crates/node) does no I/O: none of its dependencies is
# an async runtime, a socket or HTTP library, a DNS resolver, a store's
# engine or OS randomness, so the compiler refuses them; its clippy.toml
# disallows reading a clock (the driver passes the time in); and no file
# of it touches a file, thread, socket, process or the environment.
io_crates='tokio|mio|async-std|smol|hyper|axum|ureq|reqwest|socket2|hickory-[a-z]+|rustls|tokio-rustls|redis|fjall|lsm-tree|getrandom|rand|rand_core'
if cargo tree -p porchlight-node -e normal --prefix none | grep -qE "^($io_crates) "; then
  echo "porchlight-node depends on an I/O crate:" >&2
  cargo tree -p porchlight-node -e normal --prefix none | grep -E "^($io_crates) " >&2
  exit 1
fi
if grep -rnE 'std::(fs|thread|process|env|net::(Udp|Tcp))|File::(open|create)' crates/node/src; then
  echo "crates/node does I/O; do it in the driver (crates/server)" >&2
  exit 1
fi

cargo fmt --all -- --check
cargo clippy -j2 --workspace --all-targets -- -D warnings
cargo test -j2 --workspace

# The Debian package, installed here, served from and purged (as root).
if [ "$(id -u)" -ne 0 ]; then
  echo "the package test installs the .deb with dpkg: run as root" >&2
  exit 1
fi
bash scripts/package-test.sh
