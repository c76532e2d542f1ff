//! Partner discovery against a real DNS server: dnsmasq on loopback serves
//! the federation SRV records, RFC 3263 NAPTR and `_sips._tcp` records and
//! plain addresses, and `porchlight resolve` must find the edge each rule gives,
//! in RFC 2782 order, with a pinned proxy overriding DNS.

use std::process::Command;

use crate::common::*;

/// The records every resolution case below reads.
const RECORDS: [&str; 15] = [
    "--srv-host=_sipfederationtls._tcp.fabrikam.test,edge1.fabrikam.test,5061,10,100",
    "--srv-host=_sipfederationtls._tcp.fabrikam.test,edge2.fabrikam.test,5071,20,100",
    "--host-record=edge1.fabrikam.test,127.0.0.11",
    "--host-record=edge2.fabrikam.test,127.0.0.12",
    "--srv-host=_sips._tcp.rfc3263.test,sip.rfc3263.test,5062,1,1",
    "--host-record=sip.rfc3263.test,127.0.0.13",
    "--host-record=plain.test,127.0.0.14",
    "--host-record=proxy.partner.test,127.0.0.15",
    "--host-record=partner.test,127.0.0.16",
    "--srv-host=_sipfederationtls._tcp.partner.test,edge.partner.test,5061,1,1",
    "--host-record=edge.partner.test,127.0.0.17",
    // NAPTR: a UDP record first in order (not for federation), then TLS
    // pointing at an SRV name no fixed rule would guess.
    "--naptr-record=naptr.test,5,10,S,SIP+D2U,,_sip._udp.naptr.test",
    "--naptr-record=naptr.test,10,10,S,SIPS+D2T,,_sips._tcp.pool.naptr.test",
    "--srv-host=_sips._tcp.pool.naptr.test,sip.naptr.test,5063,1,1",
    "--host-record=sip.naptr.test,127.0.0.18",
];

fn resolve(port: u16, domain: &str, config: Option<&std::path::Path>) -> (bool, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_porchlight"));
    command.args([
        "resolve",
        domain,
        "--nameserver",
        &format!("127.0.0.1:{port}"),
    ]);
    match config {
        Some(path) => {
            command.arg("--config").arg(path);
        }
        // The embedded defaults with no node: whatever else listens on
        // this machine's 8088 is not asked (nothing listens on port 1),
        // and no store or token is picked up from the crate's folder.
        None => {
            command
                .env("PORCHLIGHT_ADMIN", "http://127.0.0.1:1")
                .env_remove("PORCHLIGHT_CONFIG")
                .current_dir(temp_dir("resolve-defaults"));
        }
    }
    let out = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The first line says what is configured; the hops follow.
    let (said, hops) = stdout.split_once('\n').unwrap_or((&stdout, ""));
    assert!(
        said.starts_with(&format!("{domain}: ")),
        "no line saying what is configured: {stdout}"
    );
    (
        out.status.success(),
        format!("{hops}{}", String::from_utf8_lossy(&out.stderr)),
    )
}

/// What `porchlight resolve` says is configured for `domain`.
fn configured(port: u16, domain: &str, config: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args([
            "resolve",
            domain,
            "--nameserver",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn partners_are_found_through_a_real_dns_server() {
    // Outside the ephemeral range, which the flood tests' connections fill.
    let port = free_port();
    let _dns = Dnsmasq::start(port, &RECORDS);
    let (ok, text) = resolve(port, "fabrikam.test", None);
    assert!(ok, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0]
            .starts_with("127.0.0.11:5061 (edge1.fabrikam.test) via SRV _sipfederationtls._tcp"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("127.0.0.12:5071 (edge2.fabrikam.test)"),
        "priority 20 after 10: {text}"
    );
    assert!(
        lines[0].ends_with("TLS identity checked: fabrikam.test"),
        "{text}"
    );

    let (ok, text) = resolve(port, "rfc3263.test", None);
    assert!(
        ok && text.starts_with("127.0.0.13:5062 (sip.rfc3263.test) via SRV _sips._tcp"),
        "{text}"
    );

    let (ok, text) = resolve(port, "naptr.test", None);
    assert!(
        ok && text.starts_with("127.0.0.18:5063 (sip.naptr.test) via NAPTR SIPS+D2T"),
        "{text}"
    );

    let (ok, text) = resolve(port, "plain.test", None);
    assert!(
        ok && text.starts_with("127.0.0.14:5061 (plain.test) via A/AAAA of the domain"),
        "{text}"
    );

    let (ok, text) = resolve(port, "nowhere.test", None);
    assert!(
        !ok && text.contains("no SIP federation edge found for nowhere.test"),
        "{text}"
    );

    // A pinned proxy FQDN overrides the partner's SRV record.
    let dir = temp_dir("resolve-pinned");
    let path = dir.join("porchlight.toml");
    std::fs::write(
        &path,
        config(
            &[("allowed_domains = []                 # e.g.", "allowed_domains = [{ domain = \"partner.test\", proxy_fqdn = \"proxy.partner.test\" }] #")],
            "",
        ),
    )
    .unwrap();
    let (ok, text) = resolve(port, "partner.test", None);
    assert!(
        ok && text.starts_with("127.0.0.17:5061 (edge.partner.test)"),
        "{text}"
    );
    let (ok, text) = resolve(port, "partner.test", Some(&path));
    assert!(
        ok && text.starts_with("127.0.0.15:5061 (proxy.partner.test) via pinned proxy"),
        "{text}"
    );
    assert!(
        configured(port, "partner.test", &path)
            .starts_with("partner.test: pinned to proxy.partner.test ("),
        "{}",
        configured(port, "partner.test", &path)
    );

    // A pinned proxy as admins write one: with a port, as an address, as
    // a URI; and one whose name DNS does not know says so.
    for (proxy, first) in [
        (
            "proxy.partner.test:16071",
            "127.0.0.15:16071 (proxy.partner.test) via pinned proxy",
        ),
        ("127.0.0.1", "127.0.0.1:5061 (127.0.0.1) via pinned proxy"),
        (
            "127.0.0.1:5062",
            "127.0.0.1:5062 (127.0.0.1) via pinned proxy",
        ),
        (
            "sips:proxy.partner.test:5063;transport=tls",
            "127.0.0.15:5063 (proxy.partner.test) via pinned proxy",
        ),
    ] {
        std::fs::write(
            &path,
            config(
                &[("allowed_domains = []                 # e.g.", &format!("allowed_domains = [{{ domain = \"partner.test\", proxy_fqdn = \"{proxy}\" }}] #"))],
                "",
            ),
        )
        .unwrap();
        let (ok, text) = resolve(port, "partner.test", Some(&path));
        assert!(ok && text.starts_with(first), "{proxy}: {text}");
    }
    std::fs::write(
        &path,
        config(
            &[("allowed_domains = []                 # e.g.", "allowed_domains = [{ domain = \"partner.test\", proxy_fqdn = \"gone.partner.test\" }] #")],
            "",
        ),
    )
    .unwrap();
    let (ok, text) = resolve(port, "partner.test", Some(&path));
    assert!(
        !ok && text.contains("pinned to the proxy gone.partner.test, which has no address in DNS"),
        "{text}"
    );
}
