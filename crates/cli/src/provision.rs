//! The provisioning commands: the policy and endpoints as one declarative
//! document, read and written through the running node's admin API, or,
//! when no node answers, in its store directly. Every change is a whole
//! document checked like a configuration file, so a command cannot leave
//! the node half-changed.

use std::path::Path;

use anyhow::{bail, Context as _};
use porchlight_policy::{FederationChange, Verification};
use porchlight_server::{
    check_import, Config, ConfigError, ImportOptions, ImportPlan, Provisioned,
};
use porchlight_store::{Durability, EmbeddedStore, Store};

use crate::admin::{self, Located};
use crate::AdminTarget;

/// Where the document lives for this command, found once.
enum Place {
    /// A running node, through its API.
    Node { base: String, token: String },
    /// The node is not running: its store, or none (memory only).
    Offline(Option<EmbeddedStore>),
    /// No node answers at `base` and no store is where its configuration
    /// puts one: reads see the configuration file, changes are refused.
    Nowhere {
        /// Where the node was looked for.
        base: String,
    },
}

/// One command's view: the node's configuration, where the document
/// lives, and the document as it is now.
struct Session {
    config: Config,
    place: Place,
    document: String,
}

/// Asks the node named by `target` for its document; when none answers,
/// opens its store instead — one that exists: a command never creates a
/// store where no node keeps one.
fn open(target: &AdminTarget) -> anyhow::Result<Session> {
    let config = admin::config_of(target)?;
    let base = match admin::locate_in(target, &config)? {
        Located::Node { base, token } => {
            let probe = ureq::get(&format!("{base}/api/v1/config"))
                .set("Authorization", &format!("Bearer {token}"))
                .timeout(std::time::Duration::from_secs(5))
                .call();
            match probe {
                Ok(r) => {
                    let document = r.into_string().with_context(|| base.clone())?;
                    let place = Place::Node { base, token };
                    return Ok(Session {
                        config,
                        place,
                        document,
                    });
                }
                Err(ureq::Error::Status(code, r)) => {
                    bail!(
                        "{base}: {code} {}",
                        r.into_string().unwrap_or_default().trim()
                    )
                }
                Err(ureq::Error::Transport(_)) => base,
            }
        }
        Located::NotRunning { base } => base,
    };
    let place = if config.store.path.as_os_str().is_empty() {
        Place::Offline(None)
    } else {
        let path = config.resolve(&config.store.path);
        if path.is_dir() {
            Place::Offline(Some(
                EmbeddedStore::open(&path, Durability::Process).with_context(|| {
                    format!("no node answers at {base}, so its store was opened directly")
                })?,
            ))
        } else {
            Place::Nowhere { base }
        }
    };
    let stored = match &place {
        Place::Offline(Some(store)) => store.provisioned()?,
        _ => None,
    };
    let document = stored.unwrap_or_else(|| config.provisioned().to_toml());
    Ok(Session {
        config,
        place,
        document,
    })
}

/// The configuration in force: the node's file (or the embedded
/// defaults) with the policy and endpoints the running node holds, or,
/// when it is stopped, the ones its store will start with — what
/// `explain` and `resolve` must judge by.
/// Returns it with a line saying where it came from.
pub fn config_in_force(target: &AdminTarget) -> anyhow::Result<(Config, String)> {
    let session = open(target)?;
    let file = target
        .config
        .as_ref()
        .map_or("the embedded defaults".to_owned(), |f| {
            f.display().to_string()
        });
    let (origin, said) = match &session.place {
        Place::Node { base, .. } => (
            format!("{base}/api/v1/config"),
            format!("as in force on the node at {base}"),
        ),
        Place::Offline(Some(_)) => (
            "the store".to_owned(),
            format!("no node answers: as its store and {file} will start it"),
        ),
        Place::Offline(None) | Place::Nowhere { .. } => {
            return Ok((
                session.config,
                format!("no node answers and no store is kept: as configured in {file}"),
            ))
        }
    };
    Ok((
        session
            .config
            .with_provisioned(&session.document, &origin)?,
        said,
    ))
}

impl Session {
    /// Replaces the document with `document` (named `origin` in errors):
    /// checked here first, then in force on a running node, or saved in
    /// the store for the next start.
    fn save(&self, document: &str, origin: &str) -> anyhow::Result<String> {
        // The document is the command's own: a line number in it would
        // point nowhere the admin can look, so errors name the command.
        let checked = self
            .config
            .with_provisioned(document, origin)
            .map_err(|e| match e {
                ConfigError::Syntax { message, fix, .. } => {
                    anyhow::anyhow!("{origin}: {message}\n  fix: {fix}")
                }
                ConfigError::Endpoint { problem, .. } => anyhow::anyhow!("{origin}: {problem}"),
                other => other.into(),
            })?;
        let document = checked.provisioned().to_toml();
        match &self.place {
            Place::Node { base, token } => {
                // One change the admin named: emptying a list with it is meant.
                let url = format!("{base}/api/v1/config?remove_all=true");
                let response = ureq::put(&url)
                    .set("Authorization", &format!("Bearer {token}"))
                    .set("Content-Type", "application/toml")
                    .send_string(&document);
                match response {
                    Ok(r) => {
                        let outcome: serde_json::Value = r.into_json()?;
                        Ok(in_force(&outcome))
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
            Place::Offline(None) => {
                bail!("this node has no store ([store] path = \"\"): change the configuration file instead")
            }
            Place::Nowhere { base } => {
                bail!(
                    "no node answers at {base}, and no store is at {}: nothing was changed; {}",
                    self.config.resolve(&self.config.store.path).display(),
                    admin::POINT_AT_THE_NODE
                )
            }
            Place::Offline(Some(store)) => {
                store.save_provisioned(&document)?;
                Ok("saved in the store; in force when the node starts".to_owned())
            }
        }
    }

    /// The document as data.
    fn provisioned(&self) -> anyhow::Result<Provisioned> {
        Ok(toml::from_str(&self.document)?)
    }
}

/// What a running node says it did with an import, in one line per kind
/// of endpoint change.
fn in_force(outcome: &serde_json::Value) -> String {
    let mut said = "saved and in force".to_owned();
    for (key, what) in [
        ("endpoints_added", "added"),
        ("endpoints_changed", "changed"),
        ("endpoints_removed", "removed"),
    ] {
        let uris: Vec<&str> = outcome[key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str())
            .collect();
        if !uris.is_empty() {
            said.push_str(&format!("\n{what}: {}", uris.join(", ")));
        }
    }
    said
}

/// The policy and endpoints in force (running node), or that the node
/// will start with (offline).
pub fn export(target: &AdminTarget) -> anyhow::Result<String> {
    Ok(open(target)?.document)
}

/// Replaces the policy and endpoints with `document` (named `origin` in
/// errors): checked first, then in force on a running node, or saved in
/// the store for the next start.
/// An empty or cut-short document is refused; one that removes every
/// endpoint or federation entry needs `options.remove_all`; with
/// `options.dry_run` only the changes are listed.
pub fn import(
    target: &AdminTarget,
    document: &str,
    origin: &str,
    options: ImportOptions,
) -> anyhow::Result<String> {
    let session = open(target)?;
    let plan_text = |plan: &ImportPlan| {
        let lines = plan.lines("add", "change", "remove");
        if lines.is_empty() {
            "no change".to_owned()
        } else {
            lines.join("\n")
        }
    };
    enum Destination<'a> {
        Node { base: &'a str, token: &'a str },
        Store(&'a EmbeddedStore),
    }
    let destination = match &session.place {
        Place::Node { base, token } => Destination::Node { base, token },
        Place::Offline(Some(store)) => Destination::Store(store),
        Place::Offline(None) | Place::Nowhere { .. } => {
            // Checked first with the file's lines; then refused where it goes.
            session.config.with_provisioned(document, origin)?;
            return session.save(document, origin);
        }
    };
    // Checked here first, so errors name the file and its lines.
    let current = session
        .config
        .with_provisioned(&session.document, "the document in force")?;
    let (next, plan) = check_import(&current, document, origin, options)?;
    if options.dry_run {
        return Ok(format!(
            "{}\n(dry run: nothing was changed)",
            plan_text(&plan)
        ));
    }
    let (base, token) = match destination {
        Destination::Store(store) => {
            store.save_provisioned(&next.provisioned().to_toml())?;
            return Ok(format!(
                "{}\nsaved in the store; in force when the node starts",
                plan_text(&plan)
            ));
        }
        Destination::Node { base, token } => (base, token),
    };
    let url = format!("{base}/api/v1/config?remove_all={}", options.remove_all);
    let response = ureq::put(&url)
        .set("Authorization", &format!("Bearer {token}"))
        .set("Content-Type", "application/toml")
        .send_string(document);
    match response {
        Ok(r) => Ok(in_force(&r.into_json()?)),
        Err(ureq::Error::Status(_, r)) => {
            bail!("{}", r.into_string().unwrap_or_default().trim())
        }
        Err(e) => Err(e).with_context(|| url),
    }
}

/// Reads a document from a file for `config import`.
pub fn read(file: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

/// The federation lists, one domain a line.
pub fn federation_list(target: &AdminTarget) -> anyhow::Result<String> {
    let provisioned = current(target)?;
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

/// The document in force, as data.
pub fn current(target: &AdminTarget) -> anyhow::Result<Provisioned> {
    open(target)?.provisioned()
}

/// Reads the document, lets `edit` change it, and saves the result
/// whole to the same place: every command is one checked replacement.
pub fn change(
    target: &AdminTarget,
    what: &str,
    edit: impl FnOnce(&mut Provisioned) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let session = open(target)?;
    let mut provisioned = session.provisioned()?;
    edit(&mut provisioned)?;
    session.save(&provisioned.to_toml(), what)
}

/// Sets fields of `value` from `key=value` words, as TOML values (a bare
/// word that is not one is taken as a string, so `proxy_fqdn=sip.x.com`
/// needs no quotes); a dotted key reaches into a table
/// (`health.url=http://…`). Unknown keys and wrong types are refused with
/// the key named.
pub fn set_fields<T: serde::Serialize + serde::de::DeserializeOwned>(
    value: &T,
    assignments: &[String],
    what: &str,
) -> anyhow::Result<T> {
    apply_fields(toml::Value::try_from(value)?, assignments, what)
}

/// [`set_fields`] starting from a table rather than a value.
fn apply_fields<T: serde::de::DeserializeOwned>(
    mut table: toml::Value,
    assignments: &[String],
    what: &str,
) -> anyhow::Result<T> {
    for assignment in assignments {
        let Some((key, raw)) = assignment.split_once('=') else {
            bail!("{what}: {assignment:?} is not key=value");
        };
        let value_of = |raw: &str| {
            toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.trim().to_owned()))
        };
        let mut parsed = value_of(raw);
        let mut slot = &mut table;
        let path: Vec<&str> = key.trim().split('.').collect();
        for (i, part) in path.iter().enumerate() {
            let map = slot
                .as_table_mut()
                .with_context(|| format!("{what}: {key} does not name a table"))?;
            if i + 1 == path.len() {
                // A list written as words: `capabilities=im,audio`.
                if matches!(map.get(*part), Some(toml::Value::Array(_))) && !parsed.is_array() {
                    parsed = toml::Value::Array(raw.split(',').map(value_of).collect());
                }
                map.insert((*part).to_owned(), parsed.clone());
                break;
            }
            slot = map
                .entry((*part).to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        }
    }
    table
        .try_into()
        .map_err(|e: toml::de::Error| anyhow::anyhow!("{what}: {}", e.message()))
}

/// Applies one change to the federation lists as a whole-document import.
pub fn federation_change(target: &AdminTarget, edit: FederationChange) -> anyhow::Result<String> {
    change(target, "the changed federation lists", |provisioned| {
        Ok(provisioned.policy.change_federation(edit)?)
    })
}

/// `porchlight edge …`: the edge access switches.
#[derive(clap::Subcommand)]
pub enum EdgeCommand {
    /// The switches and limits in force.
    Show {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Change switches: `enable_partner_discovery=true discovered_partner_rate=50`.
    Set {
        /// `key=value` pairs.
        #[arg(required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Runs an `edge` command; returns what to print.
pub fn edge(command: EdgeCommand) -> anyhow::Result<String> {
    match command {
        EdgeCommand::Show { target } => Ok(toml::to_string(&current(&target)?.policy.edge)?),
        EdgeCommand::Set {
            assignments,
            target,
        } => change(&target, "edge set", |p| {
            p.policy.edge = set_fields(&p.policy.edge, &assignments, "edge")?;
            Ok(())
        }),
    }
}

/// `porchlight provider …`: public IM providers.
#[derive(clap::Subcommand)]
pub enum ProviderCommand {
    /// The providers.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Add a provider.
    Add {
        /// Its name.
        name: String,
        /// Its edge.
        #[arg(long)]
        proxy: Option<String>,
        /// A user domain it serves (repeat for several).
        #[arg(long = "domain", required = true)]
        domains: Vec<String>,
        /// Its edge does not vouch for its users.
        #[arg(long)]
        unverified: bool,
        /// Add it switched off.
        #[arg(long)]
        disabled: bool,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Change a provider: `enabled=false`, `proxy_fqdn=…`, `domains=["a.example"]`.
    Set {
        /// Its name.
        name: String,
        /// `key=value` pairs.
        #[arg(required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Remove a provider.
    Remove {
        /// Its name.
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

fn provider_index(p: &Provisioned, name: &str) -> anyhow::Result<usize> {
    p.policy
        .providers
        .iter()
        .position(|x| x.name.eq_ignore_ascii_case(name))
        .with_context(|| {
            format!("no provider named {name:?}; `porchlight provider list` shows them")
        })
}

/// Runs a `provider` command; returns what to print.
pub fn provider(command: ProviderCommand) -> anyhow::Result<String> {
    match command {
        ProviderCommand::List { target } => {
            let mut out = String::new();
            for p in current(&target)?.policy.providers {
                out.push_str(&format!(
                    "{}  {}  proxy {}  domains {}{}\n",
                    p.name,
                    if p.enabled { "enabled" } else { "disabled" },
                    p.proxy_fqdn.as_deref().unwrap_or("(DNS)"),
                    p.domains.join(","),
                    if p.verification == Verification::Unverified {
                        "  unverified"
                    } else {
                        ""
                    }
                ));
            }
            Ok(out)
        }
        ProviderCommand::Add {
            name,
            proxy,
            domains,
            unverified,
            disabled,
            target,
        } => change(&target, "provider add", |p| {
            if provider_index(p, &name).is_ok() {
                bail!("a provider named {name:?} exists; `porchlight provider set` changes it");
            }
            p.policy.providers.push(porchlight_policy::PublicProvider {
                name,
                proxy_fqdn: proxy,
                domains,
                enabled: !disabled,
                verification: if unverified {
                    Verification::Unverified
                } else {
                    Verification::Verified
                },
            });
            Ok(())
        }),
        ProviderCommand::Set {
            name,
            assignments,
            target,
        } => change(&target, "provider set", |p| {
            let i = provider_index(p, &name)?;
            p.policy.providers[i] = set_fields(&p.policy.providers[i], &assignments, "provider")?;
            Ok(())
        }),
        ProviderCommand::Remove { name, target } => change(&target, "provider remove", |p| {
            let i = provider_index(p, &name)?;
            p.policy.providers.remove(i);
            Ok(())
        }),
    }
}

/// `porchlight policy …`: external access policies.
#[derive(clap::Subcommand)]
pub enum PolicyCommand {
    /// The global, site and named policies.
    List {
        #[command(flatten)]
        target: AdminTarget,
    },
    /// A new named policy: `partners-only federation=true audio=false`
    /// (presence, IM and audio start on, the rest off, as in a file).
    New {
        /// Its name.
        name: String,
        /// `key=value` pairs (unset switches take their defaults).
        assignments: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Change a policy: NAME is a named policy, `global`, or `site:NAME`.
    Set {
        /// Which policy.
        name: String,
        /// `key=value` pairs.
        #[arg(required = true)]
        assignments: Vec<String>,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Grant a named policy to an endpoint (`global`: none, so its site's
    /// or the global policy applies).
    Grant {
        /// The policy.
        name: String,
        /// The endpoint's URI.
        endpoint: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Remove a named policy (refused while an endpoint holds it).
    Remove {
        /// Its name.
        name: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

/// Runs a `policy` command; returns what to print.
pub fn policy(command: PolicyCommand) -> anyhow::Result<String> {
    match command {
        PolicyCommand::List { target } => {
            let p = current(&target)?.policy;
            let line = |name: &str, a: &porchlight_policy::AccessPolicy| {
                let on = |b: bool| if b { "on" } else { "off" };
                format!(
                    "{name}  federation {}  public_providers {}  public_provider_audio {}  presence {}  im {}  audio {}\n",
                    on(a.federation),
                    on(a.public_providers),
                    on(a.public_provider_audio),
                    on(a.presence),
                    on(a.im),
                    on(a.audio)
                )
            };
            let mut out = line("global", &p.global_policy);
            for (site, a) in &p.site_policies {
                out.push_str(&line(&format!("site:{site}"), a));
            }
            for (name, a) in &p.policies {
                out.push_str(&line(name, a));
            }
            Ok(out)
        }
        PolicyCommand::New {
            name,
            assignments,
            target,
        } => change(&target, "policy new", |p| {
            if name == "global"
                || name.starts_with("site:")
                || p.policy.policies.contains_key(&name)
            {
                bail!("a policy named {name:?} exists; `porchlight policy set` changes it");
            }
            let policy = apply_fields(
                toml::Value::Table(toml::Table::new()),
                &assignments,
                "policy",
            )?;
            p.policy.policies.insert(name, policy);
            Ok(())
        }),
        PolicyCommand::Set {
            name,
            assignments,
            target,
        } => change(&target, "policy set", |p| {
            let policy = match (name.as_str(), name.strip_prefix("site:")) {
                ("global", _) => &mut p.policy.global_policy,
                (_, Some(site)) => match p.policy.site_policies.entry(site.to_owned()) {
                    std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                    // A new site policy starts from the defaults a file would give it.
                    std::collections::btree_map::Entry::Vacant(e) => e.insert(toml::from_str("")?),
                },
                _ => p.policy.policies.get_mut(&name).with_context(|| {
                    format!("no policy named {name:?}; `porchlight policy new {name}` makes it")
                })?,
            };
            *policy = set_fields(&*policy, &assignments, "policy")?;
            Ok(())
        }),
        PolicyCommand::Grant {
            name,
            endpoint,
            target,
        } => change(&target, "policy grant", |p| {
            let e = endpoint_mut(p, &endpoint)?;
            e.policy = (name != "global").then_some(name);
            Ok(())
        }),
        PolicyCommand::Remove { name, target } => change(&target, "policy remove", |p| {
            if p.policy.policies.remove(&name).is_none() {
                bail!("no policy named {name:?}");
            }
            Ok(())
        }),
    }
}

fn endpoint_mut<'a>(
    p: &'a mut Provisioned,
    uri: &str,
) -> anyhow::Result<&'a mut porchlight_endpoints::EndpointConfig> {
    p.endpoints
        .iter_mut()
        .find(|e| porchlight_presence::same_aor(&e.uri, uri))
        .with_context(|| format!("no endpoint {uri}; `porchlight endpoint list` shows them"))
}

/// Adds an endpoint: its URI, display name and `key=value` fields
/// (`availability=away`, `health.url=http://…`, `registration.password=…`).
pub fn endpoint_add(
    target: &AdminTarget,
    uri: String,
    name: String,
    assignments: &[String],
) -> anyhow::Result<String> {
    change(target, "endpoint add", |p| {
        if endpoint_mut(p, &uri).is_ok() {
            bail!("{uri} exists; `porchlight endpoint set` changes it");
        }
        let mut base = toml::Table::new();
        base.insert("uri".into(), uri.into());
        base.insert("display_name".into(), name.into());
        // Every field at its default first, so `key=value` finds lists as lists.
        let fresh: porchlight_endpoints::EndpointConfig = toml::Value::Table(base).try_into()?;
        p.endpoints
            .push(set_fields(&fresh, assignments, "endpoint")?);
        Ok(())
    })
}

/// Changes an endpoint's fields.
/// Says so when an admin's presence setting outranks what the change
/// sets, and how to clear it.
pub fn endpoint_set(
    target: &AdminTarget,
    uri: &str,
    assignments: &[String],
) -> anyhow::Result<String> {
    let mut said = change(target, "endpoint set", |p| {
        let e = endpoint_mut(p, uri)?;
        *e = set_fields(&*e, assignments, "endpoint")?;
        Ok(())
    })?;
    let sets_presence = assignments
        .iter()
        .any(|a| a.starts_with("availability=") || a.starts_with("note="));
    if sets_presence {
        if let Ok((base, token)) = admin::locate(target) {
            let view = admin::get_at(&base, &token, &format!("/api/v1/endpoints/{uri}"))?;
            if view["set_by_admin"] == true {
                said.push_str(&format!(
                    "\nnote: an admin's presence setting ({}) outranks this until `porchlight endpoint presence clear {uri}`",
                    view["availability"].as_str().unwrap_or("?")
                ));
            }
        }
    }
    Ok(said)
}

/// Sets (availability, note) or clears an admin's presence for an
/// endpoint on the running node.
pub fn presence_set(
    target: &AdminTarget,
    uri: &str,
    setting: Option<(&str, Option<String>)>,
) -> anyhow::Result<String> {
    let (base, token) = admin::locate(target)?;
    let url = format!("{base}/api/v1/endpoints/{uri}/presence");
    let bearer = format!("Bearer {token}");
    let response = match &setting {
        Some((availability, note)) => ureq::put(&url)
            .set("Authorization", &bearer)
            .send_json(serde_json::json!({"availability": availability, "note": note})),
        None => ureq::delete(&url).set("Authorization", &bearer).call(),
    };
    let view: serde_json::Value = match response {
        Ok(r) => r.into_json()?,
        Err(ureq::Error::Status(_, r)) => bail!("{}", r.into_string().unwrap_or_default().trim()),
        Err(e) => return Err(e).with_context(|| url),
    };
    let line = admin::endpoint_line(&view);
    Ok(match setting {
        Some(_) => format!("{line}\nset by an admin: it outranks every source until `porchlight endpoint presence clear {uri}`"),
        None => format!("{line}\ncleared: the endpoint's own sources decide again"),
    })
}

/// Removes an endpoint.
pub fn endpoint_remove(target: &AdminTarget, uri: &str) -> anyhow::Result<String> {
    change(target, "endpoint remove", |p| {
        let before = p.endpoints.len();
        p.endpoints
            .retain(|e| !porchlight_presence::same_aor(&e.uri, uri));
        if p.endpoints.len() == before {
            bail!("no endpoint {uri}");
        }
        Ok(())
    })
}

/// The node's state: live from a running node; when it is stopped, what
/// its store holds and will restore at the next start.
pub fn status(target: &AdminTarget) -> anyhow::Result<String> {
    let session = open(target)?;
    let store = match &session.place {
        Place::Node { base, token } => {
            return Ok(admin::status_text(&admin::get_at(
                base,
                token,
                "/api/v1/status",
            )?))
        }
        Place::Offline(None) => {
            return Ok(
                "the node is not running, and keeps no store ([store] path is empty)\n".into(),
            )
        }
        Place::Nowhere { base } => bail!(
            "no node answers at {base}, and no store is at {}; {}",
            session.config.resolve(&session.config.store.path).display(),
            admin::POINT_AT_THE_NODE
        ),
        Place::Offline(Some(store)) => store,
    };
    let registrations = store.registrations()?;
    let publications = store.publications()?;
    let count = |lists: &[(String, usize)]| lists.iter().map(|(_, n)| n).sum::<usize>();
    let registrations: Vec<(String, usize)> = registrations
        .into_iter()
        .map(|(e, b)| (e, b.len()))
        .collect();
    let publications: Vec<(String, usize)> = publications
        .into_iter()
        .map(|(e, p)| (e, p.len()))
        .collect();
    Ok(format!(
        "the node is not running; its store holds, for the next start:\n\
         subscriptions            {}\n\
         registered contacts      {} (of {} endpoints)\n\
         publications             {} (of {} endpoints)\n\
         presence set by an admin {} endpoints\n",
        store.subscriptions()?.len(),
        count(&registrations),
        registrations.len(),
        count(&publications),
        publications.len(),
        store.admin_presence()?.len(),
    ))
}

/// One endpoint: live presence and watchers from a running node; when it
/// is stopped, as configured, with what its store keeps for it.
pub fn endpoint_show(target: &AdminTarget, uri: &str) -> anyhow::Result<String> {
    let session = open(target)?;
    if let Place::Node { base, token } = &session.place {
        let detail = admin::get_at(base, token, &format!("/api/v1/endpoints/{uri}"))?;
        return Ok(admin::endpoint_text(&detail));
    }
    let provisioned = session.provisioned()?;
    let Some(endpoint) = provisioned
        .endpoints
        .iter()
        .find(|e| porchlight_presence::same_aor(&e.uri, uri))
    else {
        bail!("no endpoint {uri}");
    };
    let mut out = format!(
        "{}  {}\n  {} (configured; the node is not running)\n",
        endpoint.uri, endpoint.display_name, endpoint.availability
    );
    let Place::Offline(Some(store)) = &session.place else {
        return Ok(out);
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let left = |at: u64| match at.checked_sub(now) {
        Some(s) if s > 0 => format!("{s} s left"),
        _ => "lapsed".to_owned(),
    };
    let mine = |e: &String| porchlight_presence::same_aor(e, &endpoint.uri);
    for (_, bindings) in store.registrations()?.iter().filter(|(e, _)| mine(e)) {
        for b in bindings {
            out.push_str(&format!(
                "  registered {} ({})\n",
                b.contact,
                left(b.expires_at)
            ));
        }
    }
    for (_, publications) in store.publications()?.iter().filter(|(e, _)| mine(e)) {
        for p in publications {
            let line = match p {
                porchlight_store::SavedPublication::Publish {
                    state, expires_at, ..
                } => format!(
                    "published {} ({})",
                    state.availability.band().name(),
                    left(*expires_at)
                ),
                porchlight_store::SavedPublication::Category {
                    publication,
                    version,
                    ..
                } => format!(
                    "published category {} instance {} (version {version})",
                    publication.category, publication.instance
                ),
            };
            out.push_str(&format!("  {line}\n"));
        }
    }
    for (_, set) in store.admin_presence()?.iter().filter(|(e, _)| mine(e)) {
        let availability = porchlight_presence::Availability(set.availability);
        out.push_str(&format!(
            "  set by an admin: {}{}\n",
            availability.band().name(),
            set.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ));
    }
    Ok(out)
}

/// Every endpoint: with live presence and watchers from a running node,
/// else as configured in its store (or file), marked so.
pub fn endpoint_list(target: &AdminTarget) -> anyhow::Result<String> {
    let mut out = String::new();
    let session = open(target)?;
    if let Place::Node { base, token } = &session.place {
        let list = admin::get_at(base, token, "/api/v1/endpoints")?;
        for endpoint in list.as_array().into_iter().flatten() {
            out.push_str(&admin::endpoint_line(endpoint));
            out.push('\n');
        }
        return Ok(out);
    }
    for e in session.provisioned()?.endpoints {
        out.push_str(&format!(
            "{}  {} (configured; the node is not running)\n",
            e.uri, e.availability
        ));
    }
    Ok(out)
}

/// Hands a stopped node's state, from its store at `store_dir`, to the
/// cluster its configuration names; what happened, for the admin.
pub fn cluster_init(config_path: &Path, store_dir: &Path) -> anyhow::Result<String> {
    let config = porchlight_server::load_config(config_path)?;
    let Some(cluster) = config.cluster.clone() else {
        bail!(
            "cluster init: {} has no [cluster] section: add the one this node will join with \
             (redis, node_id, internal)",
            config_path.display()
        );
    };
    let store = EmbeddedStore::open(store_dir, Durability::Process).with_context(|| {
        format!(
            "cluster init: opening the store at {} (stop the node first)",
            store_dir.display()
        )
    })?;
    let config = match store.provisioned()? {
        Some(document) => {
            config.with_provisioned(&document, "the store's provisioned configuration")?
        }
        None => config,
    };
    let wait = cluster.lease() * 3 + std::time::Duration::from_secs(5);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    let handed = runtime.block_on(porchlight_server::cluster::hand_over_store(
        &config, &cluster, &store, wait,
    ))?;
    let mut out = format!(
        "{} subscriptions of the store at {} are in the cluster as node {}'s",
        handed.subscriptions,
        store_dir.display(),
        cluster.node_id
    );
    out.push_str(&match handed.adopted_by {
        Some(node) => format!(
            "; node {node} took them over and re-notifies them paced over its renotify_window_secs"
        ),
        None => format!(
            "; no running node took them over within {} s: the first member to find node {} gone does",
            wait.as_secs(),
            cluster.node_id
        ),
    });
    out.push_str(if handed.configuration_seeded {
        ".\nThe store's policy and endpoints are the cluster's configuration."
    } else {
        ".\nThe cluster already had a configuration: it stays in force (`porchlight config import` changes it)."
    });
    if handed.untagged > 0 {
        out.push_str(&format!(
            "\n{} subscriptions saved by an older version carry no tag and could not move: they end when their watchers refresh.",
            handed.untagged
        ));
    }
    Ok(out)
}
