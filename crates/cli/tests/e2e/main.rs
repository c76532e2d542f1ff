//! Porchlight end to end: the real `porchlight` binary on ephemeral
//! loopback ports, talked to over real sockets by the tests and by programs
//! we did not write (SIPp, baresip, Kamailio, dnsmasq, Chromium, SIPVicious,
//! sngrep, promtool), which `scripts/test.sh` installs. One test binary, so the shared support
//! in `common` is compiled once; each module is one capability.

mod common;

mod admin;
mod baresip;
mod calls_and_im;
mod capture;
mod cluster;
mod console;
mod deploy;
mod edge_holding;
mod federation;
mod interop;
mod kamailio_federation;
mod live_endpoints;
mod persistence;
mod presence;
mod provisioning;
mod resolve;
mod serve;
