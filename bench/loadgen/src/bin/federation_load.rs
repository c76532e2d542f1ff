//! `federation-load`: new presence subscriptions through one mutual-TLS
//! federation connection, for the policy-overhead benchmark
//! (`bench/federation-bench.sh`).
//!
//! `setup` issues the certificates (a CA, the edge's certificate for
//! contoso.com, a partner's for fabrikam.com) and writes two configuration
//! tails for the same 1k endpoints: `policy-on.toml`, a realistic policy
//! (100 allowed domains, 1k blocked, 5 providers, every endpoint with a
//! named grant) that decides every request; and `policy-off.toml`, where
//! loopback is a trusted network so no decision is made. `run` keeps a
//! window of SUBSCRIBEs outstanding on one TLS connection, answers every
//! NOTIFY, and reports subscriptions per second and, with `--pid`, the
//! server's CPU time per subscription.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use porchlight_sip::{response_to, MessageWriter};
use porchlight_transport::pki::{AltName, CertificateAuthority};
use porchlight_transport::{
    ClientAuth, Protocol, Received, Target, TlsSettings, Transport, TransportConfig,
};

#[derive(Parser)]
#[command(about = "Presence subscriptions through a mutual-TLS federation connection")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes certificates and the two configuration tails into DIR.
    Setup {
        #[arg(long)]
        dir: PathBuf,
        /// Endpoints, `sip:ep<N>@contoso.com`.
        #[arg(long, default_value_t = 1000)]
        endpoints: u32,
    },
    /// Subscribes COUNT watchers from fabrikam.com over one TLS connection.
    Run {
        /// The edge's TLS address.
        #[arg(long)]
        target: SocketAddr,
        /// The directory `setup` wrote.
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 1000)]
        endpoints: u32,
        /// Subscriptions to make.
        #[arg(long, default_value_t = 100_000)]
        count: u32,
        /// SUBSCRIBEs outstanding at once.
        #[arg(long, default_value_t = 256)]
        window: u32,
        /// The server's process id, to report its CPU time.
        #[arg(long)]
        pid: Option<u32>,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
}

const EDGE: &str = "contoso.com";
const PARTNER: &str = "fabrikam.com";

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Setup { dir, endpoints } => setup(&dir, endpoints),
        Command::Run {
            target,
            dir,
            endpoints,
            count,
            window,
            pid,
            timeout_secs,
        } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(run(
                target,
                &dir,
                endpoints,
                count,
                window,
                pid,
                Duration::from_secs(timeout_secs),
            )),
    }
}

fn setup(dir: &Path, endpoints: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ca = CertificateAuthority::new("federation benchmark CA")?;
    std::fs::write(dir.join("ca.pem"), &ca.cert_pem)?;
    for (stem, domain) in [("edge", EDGE), ("partner", PARTNER)] {
        let uri = format!("sip:{domain}");
        let leaf = ca.issue(domain, &[AltName::Uri(&uri), AltName::Dns(domain)])?;
        std::fs::write(dir.join(format!("{stem}.crt")), &leaf.chain_pem)?;
        std::fs::write(dir.join(format!("{stem}.key")), &leaf.key_pem)?;
    }
    let tls = format!(
        "[tls]\ncertificate = \"{0}/edge.crt\"\nprivate_key = \"{0}/edge.key\"\ntrusted_cas = \"{0}/ca.pem\"\n\n",
        dir.canonicalize()?.display()
    );

    // Realistic: the partner is one of 100 allowed domains, 1k others are
    // blocked, 5 providers are listed, and each endpoint has a named grant.
    let mut on = String::from("[policy]\nallowed_domains = [\n");
    for i in 0..99 {
        writeln!(on, "  {{ domain = \"partner{i}.example\" }},")?;
    }
    writeln!(
        on,
        "  {{ domain = \"{PARTNER}\" }},\n]\nblocked_domains = ["
    )?;
    for i in 0..1000 {
        writeln!(on, "  \"blocked{i}.example\",")?;
    }
    on.push_str("]\n\n[policy.edge]\nallow_federated_users = true\nallow_public_providers = true\ntrusted_networks = []\n\n");
    on.push_str("[policy.global_policy]\nfederation = false\n\n");
    for i in 0..10 {
        writeln!(on, "[policy.policies.grant{i}]\nfederation = true\n")?;
    }
    for i in 0..5 {
        writeln!(
            on,
            "[[policy.provider]]\nname = \"Provider{i}\"\nproxy_fqdn = \"edge.provider{i}.example\"\ndomains = [\"provider{i}.example\"]\n"
        )?;
    }
    let off = "[policy.edge]\ntrusted_networks = [\"127.0.0.0/8\"]\n\n";
    let endpoint = |i: u32, grant: bool| {
        let mut e = format!(
            "[[endpoint]]\nuri = \"sip:ep{i}@{EDGE}\"\ndisplay_name = \"Endpoint {i}\"\ncapabilities = [\"im\"]\navailability = \"online\"\n"
        );
        if grant {
            let _ = writeln!(e, "policy = \"grant{}\"", i % 10);
        }
        e.push('\n');
        e
    };
    for (name, policy, grants) in [
        ("policy-on.toml", on.as_str(), true),
        ("policy-off.toml", off, false),
    ] {
        let mut text = format!("{tls}{policy}");
        for i in 0..endpoints {
            text.push_str(&endpoint(i, grants));
        }
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}

/// CPU time (user + system) a process has used.
fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // The kernel reports clock ticks; USER_HZ is 100 on Linux.
    Ok(Duration::from_millis(ticks * 10))
}

async fn run(
    target: SocketAddr,
    dir: &Path,
    endpoints: u32,
    count: u32,
    window: u32,
    pid: Option<u32>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let read = |name: &str| std::fs::read(dir.join(name)).with_context(|| name.to_owned());
    let tls = TlsSettings::from_pem(
        &read("partner.crt")?,
        &read("partner.key")?,
        &read("ca.pem")?,
        ClientAuth::Required,
    )?;
    let (transport, mut received) = Transport::bind(TransportConfig {
        tls_settings: Some(tls),
        ..TransportConfig::default()
    })
    .await?;
    let edge = Target::Address {
        protocol: Protocol::Tls,
        addr: target,
        domain: Some(EDGE.into()),
    };
    let subscribe = |n: u32| {
        let to = format!("sip:ep{}@{EDGE}", n % endpoints);
        let mut w = MessageWriter::request("SUBSCRIBE", &to);
        w.header_fmt(
            "Via",
            format_args!("SIP/2.0/TLS edge.{PARTNER};branch=z9hG4bKfl{n}"),
        )
        .header("Max-Forwards", "70")
        .header_fmt("From", format_args!("<sip:u{n}@{PARTNER}>;tag=t{n}"))
        .header_fmt("To", format_args!("<{to}>"))
        .header_fmt("Call-ID", format_args!("fl{n}@edge.{PARTNER}"))
        .header("CSeq", "1 SUBSCRIBE")
        .header_fmt(
            "Contact",
            format_args!("<sip:u{n}@edge.{PARTNER};transport=tls>"),
        )
        .header("Event", "presence")
        .header("Accept", "application/pidf+xml")
        .header("Expires", "3600");
        w.finish(b"")
    };

    // Per subscription: bit 0 = 2xx seen, bit 1 = NOTIFY seen.
    let mut progress: HashMap<u32, u8> = HashMap::new();
    let (mut sent, mut done, mut refused) = (0u32, 0u32, 0u32);
    let cpu_before = pid.map(cpu_time).transpose()?;
    let start = Instant::now();
    while done + refused < count {
        while sent < count && sent - done - refused < window {
            transport.send(&edge, subscribe(sent)).await?;
            progress.insert(sent, 0);
            sent += 1;
        }
        let left = timeout.checked_sub(start.elapsed()).context("timed out")?;
        let Some(message) = tokio::time::timeout(left, received.recv()).await? else {
            bail!("transport closed");
        };
        let Received::Message(message, origin) = message else {
            continue;
        };
        let call_id = message.call_id().unwrap_or("");
        let Some(n) = call_id
            .strip_prefix("fl")
            .and_then(|s| s.split('@').next())
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let bit = if message.is_request() {
            let ok = response_to(&message, 200, "OK", None, None).finish(b"");
            if let Some(id) = origin.connection {
                transport.send(&Target::Connection(id), ok).await?;
            }
            2
        } else {
            match message.status() {
                Some(200..=299) => 1,
                Some(100..=199) => 0,
                _ => {
                    if progress.remove(&n).is_some() {
                        refused += 1;
                    }
                    0
                }
            }
        };
        if let Some(state) = progress.get_mut(&n) {
            *state |= bit;
            if *state == 3 {
                progress.remove(&n);
                done += 1;
            }
        }
    }
    let elapsed = start.elapsed();
    let rate = f64::from(done) / elapsed.as_secs_f64();
    print!(
        "subscriptions={done} refused={refused} seconds={:.3} per_second={rate:.0}",
        elapsed.as_secs_f64()
    );
    if let (Some(pid), Some(before)) = (pid, cpu_before) {
        let cpu = cpu_time(pid)? - before;
        print!(
            " server_cpu_us_per_subscription={:.1}",
            cpu.as_secs_f64() * 1e6 / f64::from(done.max(1))
        );
    }
    println!();
    Ok(())
}
