//! Interoperability with programs we did not write: SIPp pings the node
//! over UDP and TCP, and mutual TLS is exercised with certificates issued in
//! the test.

use std::process::Command;

use crate::common::*;

fn sipp(server: std::net::SocketAddr, transport: &str, calls: u32) -> std::process::Output {
    sipp_scenario(
        "options-uac.xml",
        server,
        transport,
        calls,
        &["-r", "200", "-l", "50"],
    )
}

/// Runs a scenario from `bench/sipp` against the node; `extra` are more
/// SIPp arguments (rate, limits, service, credentials).
fn sipp_scenario(
    scenario: &str,
    server: std::net::SocketAddr,
    transport: &str,
    calls: u32,
    extra: &[&str],
) -> std::process::Output {
    let errors = temp_dir(&format!("sipp-{scenario}-{transport}")).join("errors.log");
    let mut out = Command::new("sipp")
        .arg("-sf")
        .arg(repo_path(&format!("bench/sipp/{scenario}")))
        .args(["-t", transport, "-m", &calls.to_string()])
        // Loopback bursts must not be lost in SIPp's own socket buffer.
        .args(["-buff_size", "4194304", "-trace_err", "-error_file"])
        .arg(&errors)
        .args(extra)
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
        .expect("sipp is installed (scripts/test.sh installs sip-tester)");
    // Keep what SIPp says about failed calls for the assertion message.
    if let Ok(log) = std::fs::read_to_string(&errors) {
        out.stderr
            .extend_from_slice(log.chars().take(4000).collect::<String>().as_bytes());
    }
    out
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

fn assert_success(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A node serving `sip:helpdesk@contoso.com` (static, online) and
/// `sip:bot@contoso.com` (registers with a password, so offline until it
/// registers or publishes), notifying without the per-watcher interval.
fn presence_node(name: &str) -> Server {
    let text = config(
        &[
            ("min_notify_interval_ms = 5000", "min_notify_interval_ms = 0"),
            // SIPp answers only the first digest challenge, and knows only MD5.
            ("digest_algorithms = [\"SHA-256\", \"MD5\"]", "digest_algorithms = [\"MD5\"]"),
        ],
        "\n[[endpoint]]\nuri = \"sip:bot@contoso.com\"\ndisplay_name = \"Bot\"\n[endpoint.registration]\npassword = \"s3cret\"\n",
    );
    start(name, &text)
}

#[test]
fn sipp_subscribe_refresh_unsubscribe_and_fetch() {
    let server = presence_node("sipp-subscribe");
    for (transport, addr) in [("u1", server.udp), ("t1", server.tcp)] {
        let out = sipp_scenario(
            "subscribe-uac.xml",
            addr,
            transport,
            200,
            &["-s", "helpdesk", "-r", "100", "-l", "50"],
        );
        assert_success(&format!("subscribe over {transport}"), &out);
        let out = sipp_scenario(
            "fetch-uac.xml",
            addr,
            transport,
            100,
            &["-s", "helpdesk", "-r", "100"],
        );
        assert_success(&format!("fetch over {transport}"), &out);
    }
}

#[test]
fn sipp_publish_drives_notify() {
    let server = presence_node("sipp-publish");
    // One call at a time: every call's watcher also hears the others' publications.
    let out = sipp_scenario(
        "publish-notify-uac.xml",
        server.udp,
        "u1",
        10,
        &[
            "-s", "bot", "-au", "bot", "-ap", "s3cret", "-l", "1", "-r", "20",
        ],
    );
    assert_success("PUBLISH to NOTIFY", &out);
}
