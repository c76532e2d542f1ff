//! The CLI side of the admin API: find the running node from its
//! configuration, ask with its token, and print the answers for people.

use std::fmt::Write;
use std::path::Path;

use anyhow::Context as _;
use porchlight_server::Config;
use serde_json::Value;

use crate::AdminTarget;

/// The node's configuration file named by `--config` (or
/// `PORCHLIGHT_CONFIG`), else the embedded defaults, whose relative paths
/// are taken from the current directory.
pub fn config_of(target: &AdminTarget) -> anyhow::Result<Config> {
    Ok(match &target.config {
        Some(path) => porchlight_server::load_config(path)?,
        None => Config::embedded(),
    })
}

/// How to point the CLI at a node, for messages that could not find one.
pub const POINT_AT_THE_NODE: &str = "run this where the node was started, or name its \
     configuration with --config FILE (or PORCHLIGHT_CONFIG=FILE), or give --admin URL and \
     --token-file FILE";

/// Where the node's admin API is: `--admin`, else the address the running
/// node left beside its token, else `[admin] listen`.
fn base_of(target: &AdminTarget, config: &Config, token_file: &Path) -> anyhow::Result<String> {
    if let Some(url) = &target.admin {
        return Ok(url.trim_end_matches('/').to_owned());
    }
    if let Ok(text) = std::fs::read_to_string(porchlight_admin::address_file(token_file)) {
        let url = text.trim();
        if url.starts_with("http://") {
            return Ok(url.trim_end_matches('/').to_owned());
        }
    }
    let addr = config.admin.address().with_context(|| {
        format!("the admin API is off in this configuration ([admin] listen); {POINT_AT_THE_NODE}")
    })?;
    Ok(format!("http://{addr}"))
}

/// Whether something accepts connections at an admin base URL.
fn answers(base: &str) -> bool {
    use std::net::ToSocketAddrs as _;
    base.trim_start_matches("http://")
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)).is_ok()
        })
}

/// What the CLI found of the node.
pub enum Located {
    /// The admin API's base URL and token: ask it.
    Node {
        /// Base URL.
        base: String,
        /// Bearer token.
        token: String,
    },
    /// Nothing answers where the node would be.
    NotRunning {
        /// Where it was looked for.
        base: String,
    },
}

/// Finds the node named by `target` (its configuration already read).
/// A node that answers while its token cannot be read is an error that
/// says so, never taken for a stopped node.
pub fn locate_in(target: &AdminTarget, config: &Config) -> anyhow::Result<Located> {
    let token_file = target
        .token_file
        .clone()
        .unwrap_or_else(|| config.resolve(&config.admin.token_file));
    let base = base_of(target, config, &token_file)?;
    match std::fs::read_to_string(&token_file) {
        Ok(token) => Ok(Located::Node {
            base,
            token: token.trim().to_owned(),
        }),
        Err(e) if answers(&base) => anyhow::bail!(
            "a node answers at {base}, but its admin token could not be read from {}: {e}; \
             {POINT_AT_THE_NODE}",
            token_file.display()
        ),
        Err(_) => Ok(Located::NotRunning { base }),
    }
}

/// The running node's admin API base URL and token; an error that says
/// how to point at the node when none answers.
pub fn locate(target: &AdminTarget) -> anyhow::Result<(String, String)> {
    match locate_in(target, &config_of(target)?)? {
        Located::Node { base, token } if answers(&base) => Ok((base, token)),
        Located::Node { base, .. } | Located::NotRunning { base } => {
            anyhow::bail!("no node answers at {base}; {POINT_AT_THE_NODE}")
        }
    }
}

/// GETs `path` from the admin API at `base` with `token`.
pub fn get_at(base: &str, token: &str, path: &str) -> anyhow::Result<Value> {
    let url = format!("{base}{path}");
    let response = ureq::get(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(std::time::Duration::from_secs(10))
        .call();
    match response {
        Ok(r) => r.into_json().with_context(|| format!("{url}: not JSON")),
        Err(ureq::Error::Status(code, r)) => {
            let text = r.into_string().unwrap_or_default();
            anyhow::bail!("{url}: {code} {}", text.trim())
        }
        Err(e) => Err(e).with_context(|| format!("is the node running? {url}")),
    }
}

/// Asks the node `target` names to drain cluster member `node`; what
/// happens next, for the admin.
pub fn drain(target: &AdminTarget, node: u16) -> anyhow::Result<String> {
    let (base, token) = locate(target)?;
    let url = format!("{base}/api/v1/cluster/members/{node}/drain");
    let response = ureq::post(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(std::time::Duration::from_secs(10))
        .call();
    let answer: Value = match response {
        Ok(r) => r.into_json().with_context(|| format!("{url}: not JSON"))?,
        Err(ureq::Error::Status(_, r)) => {
            anyhow::bail!(
                "cluster drain: {}",
                r.into_string().unwrap_or_default().trim()
            )
        }
        Err(e) => return Err(e).with_context(|| format!("is the node running? {url}")),
    };
    Ok(format!(
        "node {node} drains: at its next renewal it stops notifying, saves its {} subscriptions \
         and gives up its lease; another node takes them over and re-notifies them paced over its \
         renotify_window_secs. It takes no new watchers until restarted; `porchlight status` \
         shows it holding none when it may be stopped.",
        answer["subscriptions"]
    ))
}

/// One endpoint on one line: URI, availability, watchers, liveness.
pub fn endpoint_line(e: &Value) -> String {
    let mut line = format!(
        "{}  {} ({})  watchers {}",
        e["uri"].as_str().unwrap_or("?"),
        e["availability"].as_str().unwrap_or("?"),
        e["availability_value"],
        e["watchers"]
    );
    for (key, label) in [("registered", "registered"), ("healthy", "healthy")] {
        if let Some(v) = e[key].as_bool() {
            let _ = write!(line, "  {label} {}", if v { "yes" } else { "no" });
        }
    }
    line
}

/// A Unix time as the UTC instant an admin reads, e.g. `2027-03-01T12:00:00Z`.
fn unix_date(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| seconds.to_string())
}

/// The status summary.
pub fn status_text(s: &Value) -> String {
    let domains: Vec<&str> = s["domains"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut out = format!(
        "porchlight {} serving {}, up {} s\n\
         subscriptions: {} active ({} created, {} refreshed, {} expired)\n\
         NOTIFY: {} sent, {} failed, {} in flight\n\
         connections: {}; transactions: {} server, {} client; proxied: {}; waiting for a destination: {}\n",
        s["version"].as_str().unwrap_or("?"),
        domains.join(", "),
        s["uptime_secs"],
        s["subscriptions_active"],
        s["subscriptions_created"],
        s["subscriptions_refreshed"],
        s["subscriptions_expired"],
        s["notifies_sent"],
        s["notifies_failed"],
        s["notifies_in_flight"],
        s["connections"],
        s["server_transactions"],
        s["client_transactions"],
        s["proxied_in_progress"],
        s["parked"],
    );
    if let Some(expires) = s["certificate_not_after"].as_i64() {
        let _ = writeln!(out, "TLS certificate expires {}", unix_date(expires));
    }
    for p in s["partners"].as_array().into_iter().flatten() {
        let certificate = match p["certificate_not_after"].as_i64() {
            Some(expires) => format!("; certificate expires {}", unix_date(expires)),
            None => String::new(),
        };
        let _ = writeln!(
            out,
            "partner {}: {} requests in ({} refused), {} out{certificate}",
            p["partner"].as_str().unwrap_or("?"),
            p["requests_in"],
            p["requests_refused"],
            p["requests_out"]
        );
    }
    if let Some(cluster) = s["cluster"].as_object() {
        let _ = writeln!(
            out,
            "cluster: node {}; {} changes shared, {} applied from other nodes, {} not shared at once, {} endpoints read again",
            cluster["node"], cluster["shared"], cluster["applied"], cluster["share_failures"], cluster["reloads"]
        );
        for m in cluster["members"].as_array().into_iter().flatten() {
            let lease = match m["lease_left_ms"].as_u64() {
                Some(ms) => format!("lease {ms} ms left"),
                None => "lease lapsed".into(),
            };
            let this = if m["this_node"] == true {
                " (this node)"
            } else {
                ""
            };
            let draining = if m["draining"] == true {
                ", draining"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  member {} at {}: {lease}, {} subscriptions{draining}{this}",
                m["node"],
                m["internal"].as_str().unwrap_or("?"),
                m["subscriptions"]
            );
        }
    }
    out.push_str("endpoints:\n");
    for e in s["endpoints"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  {}", endpoint_line(e));
    }
    out
}

/// One endpoint with its watchers.
pub fn endpoint_text(e: &Value) -> String {
    let mut out = format!("{}\n", endpoint_line(e));
    if let Some(note) = e["note"].as_str() {
        let _ = writeln!(out, "note: {note}");
    }
    for w in e["watcher_uris"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "  watched by {}", w.as_str().unwrap_or("?"));
    }
    out
}
