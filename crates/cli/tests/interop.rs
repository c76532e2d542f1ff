//! Interoperability with programs we did not write: SIPp pings the node
//! over UDP and TCP, and mutual TLS is exercised with certificates issued in
//! the test.

mod common;

use std::process::Command;

use common::*;

fn sipp(server: std::net::SocketAddr, transport: &str, calls: u32) -> std::process::Output {
    Command::new("sipp")
        .arg("-sf")
        .arg(repo_path("bench/sipp/options-uac.xml"))
        .args([
            "-t",
            transport,
            "-m",
            &calls.to_string(),
            "-r",
            "200",
            "-l",
            "50",
        ])
        .args([
            "-timeout",
            "30s",
            "-timeout_error",
            "-nostdin",
            "-i",
            "127.0.0.1",
        ])
        .arg(server.to_string())
        .output()
        .expect("sipp is installed (scripts/test.sh installs sip-tester)")
}

#[test]
fn sipp_options_pings_succeed_over_udp_and_tcp() {
    let server = start("sipp", &config(&[], ""));
    for (transport, addr) in [("u1", server.udp), ("t1", server.tcp)] {
        let out = sipp(addr, transport, 300);
        assert!(
            out.status.success(),
            "sipp over {transport} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
