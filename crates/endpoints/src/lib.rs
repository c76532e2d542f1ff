//! Application endpoints: what an admin declares, how a request finds one,
//! and how the presence sources combine into the one state watchers see.
//!
//! Sources, weakest to strongest:
//! 1. **static** state from the configuration;
//! 2. **liveness** — registration (with keepalive OPTIONS) and the HTTP
//!    health probe. When any is configured, the endpoint shows its static
//!    state while at least one says it is up, and offline when none does;
//! 3. **schedule** — outside business hours the endpoint shows the
//!    schedule's closed availability, whatever liveness says;
//! 4. **publication** — a live PUBLISH or `SERVICE` publication wins.

pub mod digest;
pub mod guesses;
pub mod registrar;
pub mod schedule;

use std::collections::{HashMap, HashSet};

use porchlight_presence::{aor, Availability, Capabilities, Identity, PresenceState};
use serde::{Deserialize, Serialize};

pub use guesses::{Gate, GuessGuard, GuessLimits, Lockout};
pub use registrar::{
    Binding, Credentials, NotAuthenticated, Registrar, RegistrarConfig, SavedBinding,
    SavedRegistration,
};
pub use schedule::{Schedule, ScheduleConfig, ScheduleError};

/// An endpoint as written in the configuration (`[[endpoint]]`).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// The SIP URI watchers add as a contact.
    pub uri: String,
    /// The name clients show.
    pub display_name: String,
    /// `im`, `audio`.
    #[serde(default = "default_capabilities")]
    pub capabilities: Vec<String>,
    /// The static state: `online`, `away`, `busy`, `offline`, … or a number.
    #[serde(default = "default_availability")]
    pub availability: String,
    /// A static note.
    #[serde(default)]
    pub note: Option<String>,
    /// Online while registered.
    #[serde(default)]
    pub registration: Option<RegistrationConfig>,
    /// Online while the app's health URL answers 2xx.
    #[serde(default)]
    pub health: Option<HealthConfig>,
    /// Business hours.
    #[serde(default)]
    pub schedule: Option<ScheduleConfig>,
    /// Where IM and calls go when the endpoint is not registered: a SIP URI.
    #[serde(default)]
    pub sip_target: Option<String>,
    /// Where IM goes for apps that speak only HTTP.
    #[serde(default)]
    pub webhook: Option<WebhookConfig>,
    /// The named external access policy granted to this endpoint.
    #[serde(default)]
    pub policy: Option<String>,
    /// The site whose policy applies when no policy is granted.
    #[serde(default)]
    pub site: Option<String>,
}

fn default_capabilities() -> Vec<String> {
    vec!["im".into(), "audio".into()]
}

fn default_availability() -> String {
    "online".into()
}

/// How an endpoint registers.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    /// Digest user name (defaults to the URI's user part).
    #[serde(default)]
    pub username: Option<String>,
    /// Digest password.
    #[serde(default)]
    pub password: Option<String>,
    /// A mutual-TLS identity (the certificate's SIP domain) trusted without a password.
    #[serde(default)]
    pub tls_identity: Option<String>,
    /// Digest algorithms offered to this endpoint's app, preferred first
    /// (`["MD5"]` for a stack that knows only MD5, or answers only the
    /// first challenge); the `[registrar]` list otherwise, so one legacy
    /// app does not weaken the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_algorithms: Option<Vec<String>>,
}

/// The HTTP health probe of an app.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// `http://host:port/path`.
    pub url: String,
    /// Seconds between probes.
    #[serde(default = "default_health_interval")]
    pub interval_secs: u64,
    /// Milliseconds before a probe counts as failed.
    #[serde(default = "default_health_timeout")]
    pub timeout_ms: u64,
    /// Consecutive failures before the app counts as down.
    #[serde(default = "default_health_failures")]
    pub failures: u32,
}

/// IM delivery to an app that speaks only HTTP: each message is POSTed as
/// JSON, signed so the app can tell it came from this node.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://host:port/path`.
    pub url: String,
    /// The HMAC-SHA256 key of the signature header, shared with the app.
    pub secret: String,
    /// Milliseconds one attempt may take.
    #[serde(default = "default_webhook_timeout")]
    pub timeout_ms: u64,
    /// Further attempts after a failure to connect, a timeout or a 5xx.
    #[serde(default = "default_webhook_retries")]
    pub retries: u32,
}

fn default_webhook_timeout() -> u64 {
    5000
}
fn default_webhook_retries() -> u32 {
    2
}

/// Longest a webhook delivery may take in all, attempts and pauses
/// together: the sender's MESSAGE transaction gives up after 32 s (Timer F).
pub const WEBHOOK_BUDGET_MS: u64 = 30_000;

impl WebhookConfig {
    /// The pause before retry `n` (1-based): 250 ms, doubling.
    pub fn backoff_ms(n: u32) -> u64 {
        250 << (n.saturating_sub(1)).min(6)
    }

    /// The longest all attempts and pauses can take.
    pub fn worst_case_ms(&self) -> u64 {
        let attempts = u64::from(self.retries) + 1;
        attempts * self.timeout_ms + (1..=self.retries).map(Self::backoff_ms).sum::<u64>()
    }
}

fn default_health_interval() -> u64 {
    10
}
fn default_health_timeout() -> u64 {
    2000
}
fn default_health_failures() -> u32 {
    2
}

/// Why an endpoint declaration cannot be used; the text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// The URI is not a SIP URI with a user part.
    #[error("endpoint uri {0:?} is not a SIP URI like \"sip:helpdesk@contoso.com\"")]
    Uri(String),
    /// Declared twice.
    #[error("endpoint {0:?} is declared twice; keep one [[endpoint]] entry per URI")]
    Duplicate(String),
    /// Unknown capability.
    #[error("capability {0:?} is unknown: use \"im\" and/or \"audio\"")]
    Capability(String),
    /// Unknown availability.
    #[error(
        "availability {0:?} is unknown: use online, busy, dnd, brb, away, offline, or a number"
    )]
    Availability(String),
    /// An endpoint in a domain this node does not serve.
    #[error("endpoint {uri:?} is not in this node's domains ({domains}): write it in one of them, or add its domain to [node] domains")]
    OutsideDomains {
        /// The endpoint.
        uri: String,
        /// The node's domains, for the message.
        domains: String,
    },
    /// Registration without a way to authenticate.
    #[error("endpoint {0:?}: [registration] needs a password or a tls_identity")]
    Credentials(String),
    /// Digest algorithms that are not SHA-256 or MD5.
    #[error("endpoint {0:?}: registration digest_algorithms lists one or both of \"SHA-256\" and \"MD5\", preferred first")]
    DigestAlgorithms(String),
    /// A health URL we cannot probe.
    #[error("endpoint {0:?}: health url must be http://host:port/path")]
    HealthUrl(String),
    /// A static target that is not a SIP URI.
    #[error(
        "endpoint {0:?}: sip_target must be a SIP URI like \"sip:10.0.0.7:5060;transport=tcp\""
    )]
    SipTarget(String),
    /// A webhook we cannot call.
    #[error(
        "endpoint {0:?}: webhook needs url = \"http://host:port/path\", a non-empty secret, \
         and timeout_ms × (retries + 1) plus pauses within 30 s (the sender gives up at 32 s)"
    )]
    Webhook(String),
    /// A bad schedule.
    #[error("endpoint {uri:?}: schedule: {source}")]
    Schedule {
        /// Which endpoint.
        uri: String,
        /// What is wrong.
        source: ScheduleError,
    },
}

/// A validated endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Who it is, for presence documents.
    pub identity: Identity,
    /// Its static state.
    pub static_state: PresenceState,
    /// Its address of record (`user@host`).
    pub aor: String,
    /// How it authenticates when it registers; None if it does not register.
    pub credentials: Option<Credentials>,
    /// Its health probe.
    pub health: Option<HealthConfig>,
    /// Its business hours.
    pub schedule: Option<Schedule>,
    /// The declaration it came from.
    pub config: EndpointConfig,
}

impl Endpoint {
    /// Validates one declaration.
    pub fn new(config: EndpointConfig) -> Result<Endpoint, EndpointError> {
        let aor = aor(&config.uri)
            .filter(|a| a.contains('@'))
            .ok_or_else(|| EndpointError::Uri(config.uri.clone()))?;
        let mut capabilities = Capabilities::default();
        for c in &config.capabilities {
            match c.to_ascii_lowercase().as_str() {
                "im" | "text" => capabilities.text = true,
                "audio" | "voice" => capabilities.voice = true,
                _ => return Err(EndpointError::Capability(c.clone())),
            }
        }
        let availability = Availability::from_name(&config.availability)
            .ok_or_else(|| EndpointError::Availability(config.availability.clone()))?;
        let credentials = match &config.registration {
            None => None,
            Some(r) => {
                if r.password.is_none() && r.tls_identity.is_none() {
                    return Err(EndpointError::Credentials(config.uri.clone()));
                }
                let user = r
                    .username
                    .clone()
                    .unwrap_or_else(|| aor.split('@').next().unwrap_or_default().to_owned());
                let algorithms = match &r.digest_algorithms {
                    None => None,
                    Some(names) => {
                        let parsed: Vec<_> = names
                            .iter()
                            .filter_map(|n| crate::digest::Algorithm::from_name(n))
                            .collect();
                        if parsed.is_empty() || parsed.len() != names.len() {
                            return Err(EndpointError::DigestAlgorithms(config.uri.clone()));
                        }
                        Some(parsed)
                    }
                };
                Some(Credentials {
                    digest: r.password.clone().map(|p| (user, p)),
                    tls_identity: r.tls_identity.clone(),
                    algorithms,
                })
            }
        };
        if let Some(h) = &config.health {
            if !h.url.starts_with("http://") || h.interval_secs == 0 || h.failures == 0 {
                return Err(EndpointError::HealthUrl(config.uri.clone()));
            }
        }
        if let Some(target) = &config.sip_target {
            if !matches!(
                porchlight_sip::Uri::parse(target),
                Ok(porchlight_sip::Uri::Sip(..))
            ) {
                return Err(EndpointError::SipTarget(config.uri.clone()));
            }
        }
        if let Some(w) = &config.webhook {
            if !w.url.starts_with("http://")
                || w.secret.is_empty()
                || w.timeout_ms == 0
                || w.worst_case_ms() > WEBHOOK_BUDGET_MS
            {
                return Err(EndpointError::Webhook(config.uri.clone()));
            }
        }
        let schedule = match &config.schedule {
            None => None,
            Some(s) => Some(Schedule::new(s).map_err(|source| EndpointError::Schedule {
                uri: config.uri.clone(),
                source,
            })?),
        };
        Ok(Endpoint {
            identity: Identity {
                uri: config.uri.clone(),
                display_name: config.display_name.clone(),
                capabilities,
            },
            static_state: PresenceState {
                availability,
                activity: None,
                note: config.note.clone(),
            },
            aor,
            credentials,
            health: config.health.clone(),
            schedule,
            config,
        })
    }
}

/// What the dynamic sources say about an endpoint right now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sources {
    /// Registered (None when the endpoint does not register).
    pub registered: Option<bool>,
    /// Health probe verdict (None when not configured or not yet known).
    pub healthy: Option<bool>,
    /// The newest live publication.
    pub published: Option<PresenceState>,
}

impl Endpoint {
    /// The state watchers see, by the precedence in the crate docs.
    pub fn effective_state(&self, sources: &Sources, at: jiff::Timestamp) -> PresenceState {
        if let Some(published) = &sources.published {
            return published.clone();
        }
        if let Some(schedule) = &self.schedule {
            if !schedule.is_open(at) {
                let mut closed = PresenceState::new(schedule.closed_availability);
                closed.note = Some("Outside business hours".into());
                return closed;
            }
        }
        let opinions = [sources.registered, sources.healthy];
        let configured = self.credentials.is_some() || self.health.is_some();
        if configured && !opinions.iter().flatten().any(|up| *up) {
            return PresenceState::new(Availability::OFFLINE);
        }
        self.static_state.clone()
    }
}

/// All endpoints of a node, found by address of record.
///
/// Every part of the node refers to an endpoint by its slot, a small
/// number that indexes plain vectors on the hot path. Slots are stable for
/// the life of the process: endpoints added at run time take new slots, and
/// a removed endpoint's slot stays vacant (so a reference still in flight,
/// such as a webhook delivery, can never land on another endpoint) until
/// the same address of record is added again and takes it back.
#[derive(Debug, Default)]
pub struct Directory {
    slots: Vec<Option<Box<Endpoint>>>,
    by_aor: HashMap<String, usize>,
    /// Slots of removed endpoints, by address of record.
    vacated: HashMap<String, usize>,
    domains: Vec<String>,
    local_hosts: Vec<String>,
}

/// A whole set of endpoints, each validated and no address of record
/// twice: what [`Directory::apply`] takes.
#[derive(Debug, Default)]
pub struct EndpointSet {
    /// None once [`Directory::apply`] has taken it.
    endpoints: Vec<Option<Endpoint>>,
    wanted: HashSet<String>,
}

impl EndpointSet {
    /// Validates the declarations as one set.
    pub fn new(configs: Vec<EndpointConfig>) -> Result<EndpointSet, EndpointError> {
        let mut set = EndpointSet {
            endpoints: Vec::with_capacity(configs.len()),
            wanted: HashSet::with_capacity(configs.len()),
        };
        for config in configs {
            let endpoint = Endpoint::new(config)?;
            if !set.wanted.insert(endpoint.aor.clone()) {
                return Err(EndpointError::Duplicate(endpoint.identity.uri));
            }
            set.endpoints.push(Some(endpoint));
        }
        Ok(set)
    }
}

/// One difference [`Directory::apply`] made.
#[derive(Debug)]
pub enum Change {
    /// A new endpoint in this slot.
    Added(usize),
    /// The endpoint in this slot has a new declaration; `before` is the old one.
    Changed {
        /// Its slot.
        slot: usize,
        /// What it was.
        before: Box<Endpoint>,
    },
    /// The endpoint in this slot is gone.
    Removed {
        /// Its (now vacant) slot.
        slot: usize,
        /// What it was.
        endpoint: Box<Endpoint>,
    },
}

impl Directory {
    /// Validates the declarations. `domains` are the node's SIP domains and
    /// `aliases` other names for it: `sip:helpdesk@<alias>` finds
    /// `sip:helpdesk@<domain>`.
    pub fn new(
        configs: Vec<EndpointConfig>,
        domains: &[String],
        aliases: &[String],
    ) -> Result<Directory, EndpointError> {
        let mut directory = Directory {
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            local_hosts: aliases.iter().map(|a| a.to_ascii_lowercase()).collect(),
            ..Directory::default()
        };
        for config in &configs {
            let host = config
                .uri
                .rsplit_once('@')
                .and_then(|(_, rest)| rest.split([';', ':', '>', '?']).next())
                .unwrap_or_default();
            if !directory
                .domains
                .iter()
                .any(|d| d.eq_ignore_ascii_case(host))
            {
                return Err(EndpointError::OutsideDomains {
                    uri: config.uri.clone(),
                    domains: domains.join(", "),
                });
            }
        }
        directory.apply(&mut EndpointSet::new(configs)?);
        Ok(directory)
    }

    /// Makes the directory hold exactly `set`: endpoints not in it are
    /// removed, new ones added, and those whose declaration differs
    /// replaced in their slot. Only comparisons and moves: the validation
    /// was done when the set was made, and the unchanged endpoints stay in
    /// `set` to be freed by the caller, both away from whoever waits for
    /// this.
    pub fn apply(&mut self, set: &mut EndpointSet) -> Vec<Change> {
        let EndpointSet { endpoints, wanted } = set;
        let mut changes = Vec::new();
        let mut gone: Vec<(String, usize)> = self
            .by_aor
            .iter()
            .filter(|(aor, _)| !wanted.contains(*aor))
            .map(|(aor, &slot)| (aor.clone(), slot))
            .collect();
        gone.sort_unstable_by_key(|&(_, slot)| slot);
        for (aor, slot) in gone {
            self.by_aor.remove(&aor);
            self.vacated.insert(aor, slot);
            let endpoint = self.slots[slot].take().expect("a listed slot is held");
            changes.push(Change::Removed { slot, endpoint });
        }
        for taken in endpoints.iter_mut() {
            let Some(endpoint) = taken else { continue };
            match self.by_aor.get(&endpoint.aor) {
                Some(&slot) => {
                    let held = self.slots[slot].as_mut().expect("a listed slot is held");
                    if held.config != endpoint.config {
                        let endpoint = taken.take().expect("just matched");
                        let before = std::mem::replace(held, Box::new(endpoint));
                        changes.push(Change::Changed { slot, before });
                    }
                }
                None => {
                    let endpoint = taken.take().expect("just matched");
                    let slot = self.vacated.remove(&endpoint.aor).unwrap_or_else(|| {
                        self.slots.push(None);
                        self.slots.len() - 1
                    });
                    self.by_aor.insert(endpoint.aor.clone(), slot);
                    self.slots[slot] = Some(Box::new(endpoint));
                    changes.push(Change::Added(slot));
                }
            }
        }
        changes
    }

    /// The endpoint in a slot; None when the slot is vacant.
    pub fn get(&self, slot: usize) -> Option<&Endpoint> {
        self.slots.get(slot).and_then(|e| e.as_deref())
    }

    /// Every endpoint with its slot, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (usize, &Endpoint)> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(slot, e)| Some((slot, e.as_deref()?)))
    }

    /// How many slots there are, held or vacant: the length of every
    /// per-endpoint vector.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// The slot of the endpoint a URI names, if any.
    pub fn resolve(&self, uri: &str) -> Option<usize> {
        let aor = aor(uri)?;
        if let Some(&i) = self.by_aor.get(&aor) {
            return Some(i);
        }
        let (user, host) = aor.split_once('@')?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !self
            .local_hosts
            .iter()
            .any(|h| h.trim_start_matches('[').trim_end_matches(']') == host)
        {
            return None;
        }
        self.domains
            .iter()
            .find_map(|d| self.by_aor.get(&format!("{user}@{d}")).copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(uri: &str) -> EndpointConfig {
        toml::from_str(&format!("uri = \"{uri}\"\ndisplay_name = \"Help\"\n")).unwrap()
    }

    #[test]
    fn directory_resolves_aliases() {
        let d = Directory::new(
            vec![config("sip:helpdesk@contoso.com")],
            &["contoso.com".into()],
            &["127.0.0.1".into(), "edge.local".into()],
        )
        .unwrap();
        assert_eq!(d.resolve("sip:helpdesk@CONTOSO.com;transport=tls"), Some(0));
        assert_eq!(d.resolve("sip:helpdesk@127.0.0.1:5060"), Some(0));
        assert_eq!(d.resolve("sip:helpdesk@edge.local"), Some(0));
        assert_eq!(d.resolve("sip:helpdesk@fabrikam.com"), None);
        assert_eq!(d.resolve("sip:other@contoso.com"), None);
        let dup = Directory::new(
            vec![config("sip:a@x.com"), config("sip:a@X.com")],
            &["x.com".into()],
            &[],
        );
        assert!(matches!(dup, Err(EndpointError::Duplicate(_))));
        let outside = Directory::new(
            vec![config("sip:a@fabrikam.com")],
            &["contoso.com".into()],
            &["127.0.0.1".into()],
        )
        .unwrap_err();
        assert!(
            outside
                .to_string()
                .contains("not in this node's domains (contoso.com)"),
            "{outside}"
        );
    }

    #[test]
    fn apply_keeps_slots_stable_and_gives_a_removed_uri_its_slot_back() {
        let domains = ["contoso.com".to_owned()];
        let mut d = Directory::new(
            vec![config("sip:a@contoso.com"), config("sip:b@contoso.com")],
            &domains,
            &[],
        )
        .unwrap();
        let mut b = config("sip:b@contoso.com");
        b.availability = "busy".into();
        let set = |configs: Vec<EndpointConfig>| EndpointSet::new(configs).unwrap();
        let changes = d.apply(&mut set(vec![b.clone(), config("sip:c@contoso.com")]));
        let summary: Vec<String> = changes
            .iter()
            .map(|c| match c {
                Change::Added(slot) => format!("+{slot}"),
                Change::Changed { slot, before } => {
                    format!("~{slot} was {}", before.config.availability)
                }
                Change::Removed { slot, endpoint } => format!("-{slot} {}", endpoint.aor),
            })
            .collect();
        assert_eq!(summary, ["-0 a@contoso.com", "~1 was online", "+2"]);
        assert_eq!(d.resolve("sip:a@contoso.com"), None);
        assert!(d.get(0).is_none());
        assert_eq!(d.resolve("sip:c@contoso.com"), Some(2));
        assert_eq!(
            d.iter().map(|(slot, _)| slot).collect::<Vec<_>>(),
            [1, 2],
            "vacant slots are skipped"
        );
        // Applying the same set again changes nothing.
        assert!(d
            .apply(&mut set(vec![b.clone(), config("sip:c@contoso.com")]))
            .is_empty());
        // a comes back in its own slot; nothing else moves.
        let changes = d.apply(&mut set(vec![
            config("sip:a@contoso.com"),
            b.clone(),
            config("sip:c@contoso.com"),
        ]));
        assert!(matches!(changes[..], [Change::Added(0)]), "{changes:?}");
        assert_eq!(d.slots(), 3);
        // An invalid set is refused whole.
        let refused = EndpointSet::new(vec![config("sip:d@contoso.com"), config("tel:+1")]);
        assert!(matches!(refused, Err(EndpointError::Uri(_))));
        let twice = EndpointSet::new(vec![
            config("sip:d@contoso.com"),
            config("sip:d@Contoso.com"),
        ]);
        assert!(matches!(twice, Err(EndpointError::Duplicate(_))));
    }

    #[test]
    fn validation_says_what_to_fix() {
        let mut c = config("tel:+1");
        assert!(Endpoint::new(c.clone())
            .unwrap_err()
            .to_string()
            .contains("sip:helpdesk@"));
        c = config("sip:a@b.c");
        c.capabilities = vec!["video".into()];
        assert!(Endpoint::new(c).unwrap_err().to_string().contains("\"im\""));
        let mut c = config("sip:a@b.c");
        c.registration = Some(RegistrationConfig {
            username: None,
            password: None,
            tls_identity: None,
            digest_algorithms: None,
        });
        assert!(Endpoint::new(c)
            .unwrap_err()
            .to_string()
            .contains("password or a tls_identity"));
        let mut c = config("sip:a@b.c");
        c.registration = Some(RegistrationConfig {
            username: None,
            password: Some("pw".into()),
            tls_identity: None,
            digest_algorithms: Some(vec!["MD5".into(), "SHA-1".into()]),
        });
        assert!(Endpoint::new(c)
            .unwrap_err()
            .to_string()
            .contains("digest_algorithms lists one or both"));
    }

    #[test]
    fn sources_combine_by_precedence() {
        let mut c = config("sip:bot@contoso.com");
        c.registration = Some(RegistrationConfig {
            username: None,
            password: Some("pw".into()),
            tls_identity: None,
            digest_algorithms: None,
        });
        c.health = Some(HealthConfig {
            url: "http://127.0.0.1:9/health".into(),
            interval_secs: 5,
            timeout_ms: 500,
            failures: 1,
        });
        let e = Endpoint::new(c.clone()).unwrap();
        let now = jiff::Timestamp::now();
        let state = |registered, healthy| {
            e.effective_state(
                &Sources {
                    registered,
                    healthy,
                    published: None,
                },
                now,
            )
            .availability
        };
        assert_eq!(state(Some(true), Some(false)), Availability::ONLINE);
        assert_eq!(state(Some(false), Some(false)), Availability::OFFLINE);
        assert_eq!(state(Some(false), Some(true)), Availability::ONLINE);
        assert_eq!(state(Some(false), None), Availability::OFFLINE);
        let published = Sources {
            registered: Some(false),
            healthy: None,
            published: Some(PresenceState::new(Availability::BUSY)),
        };
        assert_eq!(
            e.effective_state(&published, now).availability,
            Availability::BUSY
        );
        c.registration = None;
        c.health = None;
        c.schedule = Some(ScheduleConfig {
            timezone: "UTC".into(),
            days: vec!["sat".into()],
            open: "00:00".into(),
            close: "00:01".into(),
            closed_availability: Some("away".into()),
        });
        let e = Endpoint::new(c).unwrap();
        let tuesday = "2026-11-24T12:00:00Z".parse().unwrap();
        let s = e.effective_state(&Sources::default(), tuesday);
        assert_eq!(s.availability, Availability::AWAY);
        assert_eq!(s.note.as_deref(), Some("Outside business hours"));
    }
}
