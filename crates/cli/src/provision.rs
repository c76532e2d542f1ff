//! The provisioning commands: the policy and endpoints as one declarative
//! document, read and written through the running node's admin API, or,
//! when no node answers, in its store directly. Every change is a whole
//! document checked like a configuration file, so a command cannot leave
//! the node half-changed.

use std::path::Path;

use anyhow::{bail, Context as _};
use porchlight_policy::{AllowedDomain, Verification};
use porchlight_server::{Config, Provisioned};
use porchlight_store::{Durability, EmbeddedStore, Store};

use crate::admin;
use crate::AdminTarget;

/// Where the document lives for this command.
enum Place {
    /// A running node, through its API.
    Node { base: String, token: String },
    /// The node is not running: its store (or, without one, its file).
    Offline(Box<Config>),
}

fn place(target: &AdminTarget) -> anyhow::Result<Place> {
    if let Ok((base, token)) = admin::locate(target) {
        let probe = ureq::get(&format!("{base}/api/v1/config"))
            .set("Authorization", &format!("Bearer {token}"))
            .timeout(std::time::Duration::from_secs(5))
            .call();
        match probe {
            Ok(_) => return Ok(Place::Node { base, token }),
            Err(ureq::Error::Status(code, r)) => {
                bail!(
                    "{base}: {code} {}",
                    r.into_string().unwrap_or_default().trim()
                )
            }
            Err(ureq::Error::Transport(_)) => {}
        }
    }
    Ok(Place::Offline(Box::new(admin::config_of(target)?)))
}

fn open_store(config: &Config) -> anyhow::Result<Option<EmbeddedStore>> {
    if config.store.path.as_os_str().is_empty() {
        return Ok(None);
    }
    let path = config.resolve(&config.store.path);
    Ok(Some(
        EmbeddedStore::open(&path, Durability::Process).with_context(|| {
            "no node answered on its admin API, so the store was opened directly"
        })?,
    ))
}

/// The policy and endpoints in force (running node), or that the node
/// will start with (offline).
pub fn export(target: &AdminTarget) -> anyhow::Result<String> {
    match place(target)? {
        Place::Node { base, token } => {
            let url = format!("{base}/api/v1/config");
            ureq::get(&url)
                .set("Authorization", &format!("Bearer {token}"))
                .call()
                .with_context(|| url.clone())?
                .into_string()
                .with_context(|| url)
        }
        Place::Offline(config) => {
            let stored = open_store(&config)?
                .map(|s| s.provisioned())
                .transpose()?
                .flatten();
            Ok(stored.unwrap_or_else(|| config.provisioned().to_toml()))
        }
    }
}

/// Replaces the policy and endpoints with `document` (named `origin` in
/// errors): checked here first, then in force on a running node, or saved
/// in the store for the next start.
pub fn import(target: &AdminTarget, document: &str, origin: &str) -> anyhow::Result<String> {
    let local = admin::config_of(target)?;
    let checked = local.with_provisioned(document, origin)?;
    let document = checked.provisioned().to_toml();
    match place(target)? {
        Place::Node { base, token } => {
            let url = format!("{base}/api/v1/config");
            let response = ureq::put(&url)
                .set("Authorization", &format!("Bearer {token}"))
                .set("Content-Type", "application/toml")
                .send_string(&document);
            match response {
                Ok(r) => {
                    let outcome: serde_json::Value = r.into_json()?;
                    Ok(if outcome["restart_needed"].as_bool() == Some(true) {
                        "saved; the policy is in force now, endpoint changes after the next start"
                    } else {
                        "saved and in force"
                    }
                    .to_owned())
                }
                Err(ureq::Error::Status(code, r)) => {
                    bail!(
                        "{url}: {code} {}",
                        r.into_string().unwrap_or_default().trim()
                    )
                }
                Err(e) => Err(e).with_context(|| url),
            }
        }
        Place::Offline(config) => {
            let Some(store) = open_store(&config)? else {
                bail!("this node has no store ([store] path = \"\"): change the configuration file instead");
            };
            store.save_provisioned(&document)?;
            Ok("saved in the store; in force when the node starts".to_owned())
        }
    }
}

/// Reads a document from a file for `config import`.
pub fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// A change to the federation lists.
pub enum FederationChange {
    /// Allow a partner domain, optionally pinned to its edge.
    Allow {
        domain: String,
        proxy: Option<String>,
        unverified: bool,
    },
    /// Block a domain (and its subdomains).
    Block(String),
    /// Take a domain off either list.
    Remove(String),
}

/// The federation lists, one domain a line.
pub fn federation_list(target: &AdminTarget) -> anyhow::Result<String> {
    let provisioned: Provisioned = toml::from_str(&export(target)?)?;
    let mut out = String::new();
    for d in &provisioned.policy.allowed_domains {
        out.push_str(&format!("allowed  {}", d.domain));
        if let Some(proxy) = &d.proxy_fqdn {
            out.push_str(&format!("  proxy {proxy}"));
        }
        if d.verification == Verification::Unverified {
            out.push_str("  unverified");
        }
        out.push('\n');
    }
    for d in &provisioned.policy.blocked_domains {
        out.push_str(&format!("blocked  {d}\n"));
    }
    Ok(out)
}

/// Applies one change to the federation lists as a whole-document import.
pub fn federation_change(target: &AdminTarget, change: FederationChange) -> anyhow::Result<String> {
    let mut provisioned: Provisioned = toml::from_str(&export(target)?)?;
    let policy = &mut provisioned.policy;
    let same = |a: &str, b: &str| {
        a.trim_end_matches('.')
            .eq_ignore_ascii_case(b.trim_end_matches('.'))
    };
    match change {
        FederationChange::Allow {
            domain,
            proxy,
            unverified,
        } => {
            if policy.blocked_domains.iter().any(|b| same(b, &domain)) {
                bail!("{domain} is blocked; `porchlight federation remove {domain}` first");
            }
            policy.allowed_domains.retain(|d| !same(&d.domain, &domain));
            policy.allowed_domains.push(AllowedDomain {
                domain,
                proxy_fqdn: proxy,
                verification: if unverified {
                    Verification::Unverified
                } else {
                    Verification::Verified
                },
            });
        }
        FederationChange::Block(domain) => {
            if policy
                .allowed_domains
                .iter()
                .any(|d| same(&d.domain, &domain))
            {
                bail!("{domain} is allowed; `porchlight federation remove {domain}` first");
            }
            if !policy.blocked_domains.iter().any(|b| same(b, &domain)) {
                policy.blocked_domains.push(domain);
            }
        }
        FederationChange::Remove(domain) => {
            let before = policy.allowed_domains.len() + policy.blocked_domains.len();
            policy.allowed_domains.retain(|d| !same(&d.domain, &domain));
            policy.blocked_domains.retain(|b| !same(b, &domain));
            if before == policy.allowed_domains.len() + policy.blocked_domains.len() {
                bail!("{domain} is neither allowed nor blocked");
            }
        }
    }
    import(
        target,
        &provisioned.to_toml(),
        "the changed federation lists",
    )
}
