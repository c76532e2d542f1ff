//! The CLI side of the admin API: find the running node from its
//! configuration, ask with its token, and print the answers for people.

use std::fmt::Write;

use anyhow::Context as _;
use porchlight_server::Config;
use serde_json::Value;

use crate::AdminTarget;

/// The node's configuration file named by `--config`, else the embedded defaults.
pub fn config_of(target: &AdminTarget) -> anyhow::Result<Config> {
    Ok(match &target.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded(),
    })
}

/// The node's admin API base URL and its token.
pub fn locate(target: &AdminTarget) -> anyhow::Result<(String, String)> {
    locate_in(target, &config_of(target)?)
}

/// [`locate`] with the node's configuration already read.
pub fn locate_in(target: &AdminTarget, config: &Config) -> anyhow::Result<(String, String)> {
    let base = match &target.admin {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => {
            let addr = config
                .admin
                .address()
                .context("the admin API is off in this configuration ([admin] listen)")?;
            format!("http://{addr}")
        }
    };
    let token_file = target
        .token_file
        .clone()
        .unwrap_or_else(|| config.resolve(&config.admin.token_file));
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the admin token from {}", token_file.display()))?;
    Ok((base, token.trim().to_owned()))
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
    for p in s["partners"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "partner {}: {} requests in, {} out",
            p["partner"].as_str().unwrap_or("?"),
            p["requests_in"],
            p["requests_out"]
        );
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
