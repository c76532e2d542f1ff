//! Who may see, message and call an endpoint, and why.
//!
//! The model mirrors the provisioning steps UC admins know: edge access
//! switches, allowed and blocked domains, public providers, and external
//! access policies (global, per site, named and granted to endpoints).
//! [`decide`] is the one decision function: pure, and it returns every step
//! it took, so the same call answers a request and `porchlight explain`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod names;

pub use names::{domain_name, NameError, ProxyAddress, ProxyHost};

/// Edge access switches (`[edge]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EdgeAccess {
    /// Let users of allowed partner domains in at all.
    #[serde(default = "yes")]
    pub allow_federated_users: bool,
    /// Let domains found through DNS (not listed as allowed) in.
    #[serde(default)]
    pub enable_partner_discovery: bool,
    /// Let users of enabled public providers in.
    #[serde(default)]
    pub allow_public_providers: bool,
    /// Internal networks (CIDR): requests from them are the inside of the
    /// edge and are not subject to federation policy.
    #[serde(default = "loopback")]
    pub trusted_networks: Vec<String>,
    /// Requests per second one discovered partner domain may make.
    #[serde(default = "discovered_rate")]
    pub discovered_partner_rate: u32,
    /// Distinct local endpoints one discovered partner domain may reach
    /// (anti-enumeration); 0 means no limit.
    #[serde(default = "discovered_contacts")]
    pub discovered_partner_max_contacts: u32,
    /// Answer 403, not 404, for endpoints that do not exist, so outsiders
    /// cannot learn which exist.
    #[serde(default)]
    pub hide_missing_endpoints: bool,
}

fn discovered_rate() -> u32 {
    20
}

fn discovered_contacts() -> u32 {
    1000
}

fn loopback() -> Vec<String> {
    vec!["127.0.0.0/8".into(), "::1/128".into()]
}

fn yes() -> bool {
    true
}

impl Default for EdgeAccess {
    fn default() -> Self {
        EdgeAccess {
            allow_federated_users: true,
            enable_partner_discovery: false,
            allow_public_providers: false,
            trusted_networks: loopback(),
            discovered_partner_rate: discovered_rate(),
            discovered_partner_max_contacts: discovered_contacts(),
            hide_missing_endpoints: false,
        }
    }
}

/// Why a discovered partner was held back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LimitExceeded {
    /// More requests per second than `discovered_partner_rate`.
    Rate(u32),
    /// More distinct endpoints than `discovered_partner_max_contacts`.
    Contacts(u32),
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitExceeded::Rate(r) => {
                write!(f, "discovered partner exceeds {r} requests per second")
            }
            LimitExceeded::Contacts(c) => {
                write!(
                    f,
                    "discovered partner would reach more than {c} distinct endpoints"
                )
            }
        }
    }
}

/// The state behind the discovered-partner limits: a token bucket and the
/// set of endpoints reached, per partner domain. Time comes in as seconds.
#[derive(Debug, Default)]
pub struct DiscoveredLimits {
    partners: std::collections::HashMap<String, (f64, f64, std::collections::HashSet<u32>)>,
}

impl DiscoveredLimits {
    /// Counts one request from `domain` to `endpoint` at `now_secs`.
    pub fn admit(
        &mut self,
        edge: &EdgeAccess,
        domain: &str,
        endpoint: u32,
        now_secs: f64,
    ) -> Result<(), LimitExceeded> {
        let rate = f64::from(edge.discovered_partner_rate);
        let (tokens, at, reached) = self
            .partners
            .entry(domain.to_ascii_lowercase())
            .or_insert_with(|| (rate, now_secs, Default::default()));
        *tokens = (*tokens + (now_secs - *at).max(0.0) * rate).min(rate.max(1.0));
        *at = now_secs;
        if *tokens < 1.0 {
            return Err(LimitExceeded::Rate(edge.discovered_partner_rate));
        }
        let max = edge.discovered_partner_max_contacts;
        if max > 0 && !reached.contains(&endpoint) && reached.len() as u32 >= max {
            return Err(LimitExceeded::Contacts(max));
        }
        *tokens -= 1.0;
        reached.insert(endpoint);
        Ok(())
    }
}

/// An IP network in CIDR notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Network {
    address: std::net::IpAddr,
    prefix: u8,
}

impl Network {
    /// Parses `10.0.0.0/8`, `::1/128`, or a bare address.
    pub fn parse(text: &str) -> Option<Network> {
        let (address, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse().ok()?, p.parse().ok()?),
            None => {
                let address: std::net::IpAddr = text.parse().ok()?;
                (address, if address.is_ipv4() { 32 } else { 128 })
            }
        };
        let max = if matches!(address, std::net::IpAddr::V4(_)) {
            32
        } else {
            128
        };
        (prefix <= max).then_some(Network { address, prefix })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        let bits = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V4(a) => (u128::from(u32::from(a)) << 96, 32u32),
            std::net::IpAddr::V6(a) => (u128::from(a), 128),
        };
        let ((net, width), (addr, addr_width)) = (bits(self.address), bits(ip));
        if width != addr_width {
            return false;
        }
        let mask = if self.prefix == 0 {
            0
        } else {
            u128::MAX << (128 - u32::from(self.prefix))
        };
        net & mask == addr & mask
    }
}

/// Whether a federated edge vouches for its users' identities. Its own
/// identity is always proven by its certificate; this says whether the
/// users it sends on behalf of were authenticated by it.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Verification {
    /// The edge authenticates its users: requests are passed on as verified.
    #[default]
    Verified,
    /// The edge does not vouch for its users (an open public service):
    /// requests are let in by the same policy but passed on marked
    /// unverified, for the inside to treat with care.
    Unverified,
}

/// An allowed partner domain.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AllowedDomain {
    /// The domain.
    pub domain: String,
    /// A proxy to use instead of DNS discovery.
    #[serde(default)]
    pub proxy_fqdn: Option<String>,
    /// Whether its edge vouches for its users.
    #[serde(default)]
    pub verification: Verification,
}

/// A public provider (`[[provider]]`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicProvider {
    /// Its name, for logs and explanations.
    pub name: String,
    /// Its edge.
    #[serde(default)]
    pub proxy_fqdn: Option<String>,
    /// The user domains it serves.
    pub domains: Vec<String>,
    /// Switched on.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whether its edge vouches for its users.
    #[serde(default)]
    pub verification: Verification,
}

/// An external access policy: what outsiders may do with an endpoint.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicy {
    /// Partners (allowed or discovered) may reach the endpoint.
    #[serde(default)]
    pub federation: bool,
    /// Public-provider users may reach the endpoint.
    #[serde(default)]
    pub public_providers: bool,
    /// Public-provider users may call it (audio is its own switch).
    #[serde(default)]
    pub public_provider_audio: bool,
    /// Presence may be shown.
    #[serde(default = "yes")]
    pub presence: bool,
    /// IM may be delivered.
    #[serde(default = "yes")]
    pub im: bool,
    /// Calls may be put through.
    #[serde(default = "yes")]
    pub audio: bool,
}

/// The whole policy configuration. Lookups go through an index built on
/// first use, so a configuration is read-only once decisions are made:
/// change policy by building a new one.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Edge switches.
    #[serde(default)]
    pub edge: EdgeAccess,
    /// Allowed partner domains.
    #[serde(default)]
    pub allowed_domains: Vec<AllowedDomain>,
    /// Blocked domains (a suffix match: `example.com` blocks `sub.example.com`).
    #[serde(default)]
    pub blocked_domains: Vec<String>,
    /// Public providers.
    #[serde(default, rename = "provider")]
    pub providers: Vec<PublicProvider>,
    /// The global external access policy.
    #[serde(default)]
    pub global_policy: AccessPolicy,
    /// Per-site policies, by site name.
    #[serde(default)]
    pub site_policies: BTreeMap<String, AccessPolicy>,
    /// Named policies, granted to endpoints by name.
    #[serde(default)]
    pub policies: BTreeMap<String, AccessPolicy>,
    #[serde(skip)]
    index: std::sync::OnceLock<Index>,
}

/// Domain lookups in constant time per label, whatever the list sizes.
#[derive(Clone, Debug, Default)]
struct Index {
    /// Blocked entries, lower case, without a trailing dot.
    blocked: std::collections::HashSet<String>,
    /// Allowed domain -> its position in `allowed_domains`.
    allowed: std::collections::HashMap<String, usize>,
    /// User domain -> provider position.
    provider_of: std::collections::HashMap<String, usize>,
    /// A provider's edge (proxy FQDN) -> provider position.
    provider_edge: std::collections::HashMap<String, usize>,
    /// Parsed once: the check runs for every request.
    trusted: Vec<Network>,
}

/// The entry of `blocked` that `domain` falls under: itself or a parent.
fn blocked_entry(blocked: &std::collections::HashSet<String>, domain: &str) -> Option<String> {
    let domain = normalized(domain);
    let mut rest = domain.as_str();
    loop {
        if blocked.contains(rest) {
            return Some(rest.to_owned());
        }
        rest = rest.split_once('.')?.1;
    }
}

fn normalized(domain: &str) -> String {
    domain.trim_end_matches('.').to_ascii_lowercase()
}

/// The name a provider's edge proves: its pinned proxy's host.
fn proxy_host(proxy: &str) -> String {
    ProxyAddress::parse(proxy).map_or_else(|_| normalized(proxy), |p| p.host_text())
}

/// One change to the federation lists, as the CLI, the admin API and the
/// console make it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FederationChange {
    /// Allow a partner domain, optionally pinned to its edge. Allowing a
    /// domain already allowed changes only what the change names.
    Allow {
        /// The domain.
        domain: String,
        /// Its edge, instead of DNS discovery; `Some("")` goes back to
        /// DNS, None keeps what the entry has.
        proxy: Option<String>,
        /// Whether its edge does not vouch for its users; None keeps what
        /// the entry has (verified for a new one).
        unverified: Option<bool>,
    },
    /// Block a domain (and its subdomains).
    Block(String),
    /// Take a domain off either list.
    Remove(String),
}

/// Why a federation change was refused; the text says what to do.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FederationChangeError {
    /// Allowing a blocked domain.
    #[error("{0} is blocked; remove it from the blocked domains first")]
    Blocked(String),
    /// Blocking an allowed domain.
    #[error("{0} is allowed; remove it from the allowed domains first")]
    Allowed(String),
    /// Removing a domain on neither list.
    #[error("{0} is neither allowed nor blocked")]
    Unknown(String),
    /// Not a domain, or not a proxy.
    #[error(transparent)]
    Name(#[from] NameError),
}

/// Why a policy configuration cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A domain is both allowed and blocked.
    #[error("{0} is both allowed and blocked: remove it from one of allowed_domains and blocked_domains")]
    AllowedAndBlocked(String),
    /// A trusted network that is not CIDR.
    #[error("trusted network {0:?} is not an address or CIDR network like \"10.0.0.0/8\"")]
    Network(String),
    /// A domain or proxy that is not one.
    #[error("{list}: {problem}")]
    Name {
        /// Which list it is in.
        list: &'static str,
        /// What is wrong, with what to write.
        problem: NameError,
    },
    /// The same domain twice in one list.
    #[error("{list}: {domain} is listed twice; keep one entry")]
    Duplicate {
        /// Which list.
        list: &'static str,
        /// The domain, canonical.
        domain: String,
    },
    /// A grant names no policy.
    #[error("endpoint {endpoint} is granted policy {policy:?}, which is not defined: add [policy.policies.{policy}] (or run `porchlight policy new {policy}`), or fix the name")]
    UnknownGrant {
        /// The endpoint.
        endpoint: String,
        /// The missing policy.
        policy: String,
    },
}

impl PolicyConfig {
    /// Checks the configuration as a whole; `grants` are (endpoint, policy name).
    pub fn validate<'a>(
        &self,
        grants: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<(), PolicyError> {
        for network in &self.edge.trusted_networks {
            if Network::parse(network).is_none() {
                return Err(PolicyError::Network(network.clone()));
            }
        }
        self.validate_names()?;
        // Not through the index: validation comes before the configuration is final.
        let blocked = self.blocked_domains.iter().map(|d| normalized(d)).collect();
        for allowed in &self.allowed_domains {
            if blocked_entry(&blocked, &allowed.domain).is_some() {
                return Err(PolicyError::AllowedAndBlocked(allowed.domain.clone()));
            }
        }
        for (endpoint, policy) in grants {
            if !self.policies.contains_key(policy) {
                return Err(PolicyError::UnknownGrant {
                    endpoint: endpoint.to_owned(),
                    policy: policy.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Every domain a DNS name, once per list; every proxy one a dial
    /// can reach.
    fn validate_names(&self) -> Result<(), PolicyError> {
        fn each<'a>(
            list: &'static str,
            domains: impl IntoIterator<Item = &'a String>,
        ) -> Result<(), PolicyError> {
            let mut seen = std::collections::HashSet::new();
            for domain in domains {
                let name =
                    domain_name(domain).map_err(|problem| PolicyError::Name { list, problem })?;
                if !seen.insert(name.clone()) {
                    return Err(PolicyError::Duplicate { list, domain: name });
                }
            }
            Ok(())
        }
        each(
            "allowed_domains",
            self.allowed_domains.iter().map(|d| &d.domain),
        )?;
        each("blocked_domains", &self.blocked_domains)?;
        for provider in &self.providers {
            each("provider domains", &provider.domains)?;
        }
        let proxies = self
            .allowed_domains
            .iter()
            .map(|d| ("allowed_domains proxy_fqdn", &d.proxy_fqdn))
            .chain(
                self.providers
                    .iter()
                    .map(|p| ("provider proxy_fqdn", &p.proxy_fqdn)),
            );
        for (list, proxy) in proxies {
            if let Some(proxy) = proxy {
                ProxyAddress::parse(proxy)
                    .map_err(|problem| PolicyError::Name { list, problem })?;
            }
        }
        Ok(())
    }

    /// Whether a source address is on the trusted inside of the edge.
    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        self.index().trusted.iter().any(|n| n.contains(ip))
    }

    fn index(&self) -> &Index {
        self.index.get_or_init(|| Index {
            trusted: self
                .edge
                .trusted_networks
                .iter()
                .filter_map(|n| Network::parse(n))
                .collect(),
            blocked: self.blocked_domains.iter().map(|d| normalized(d)).collect(),
            allowed: self
                .allowed_domains
                .iter()
                .enumerate()
                .map(|(i, a)| (normalized(&a.domain), i))
                .collect(),
            provider_edge: self
                .providers
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((proxy_host(p.proxy_fqdn.as_deref()?), i)))
                .collect(),
            provider_of: self
                .providers
                .iter()
                .enumerate()
                .flat_map(|(i, p)| p.domains.iter().map(move |d| (normalized(d), i)))
                .collect(),
        })
    }

    /// Changes the federation lists as an admin asks: a domain is on at
    /// most one of them, and allowing one that is blocked (or the other
    /// way round) is refused rather than guessed.
    pub fn change_federation(
        &mut self,
        change: FederationChange,
    ) -> Result<(), FederationChangeError> {
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
                let domain = domain_name(&domain)?;
                if self.blocked_domains.iter().any(|b| same(b, &domain)) {
                    return Err(FederationChangeError::Blocked(domain));
                }
                let proxy = match proxy {
                    Some(p) if p.is_empty() => Some(None),
                    Some(p) => Some(Some(ProxyAddress::parse(&p)?.to_string())),
                    None => None,
                };
                let entry = match self
                    .allowed_domains
                    .iter()
                    .position(|d| same(&d.domain, &domain))
                {
                    Some(i) => &mut self.allowed_domains[i],
                    None => {
                        self.allowed_domains.push(AllowedDomain {
                            domain: domain.clone(),
                            proxy_fqdn: None,
                            verification: Verification::Verified,
                        });
                        self.allowed_domains.last_mut().expect("just pushed")
                    }
                };
                entry.domain = domain;
                if let Some(proxy) = proxy {
                    entry.proxy_fqdn = proxy;
                }
                if let Some(unverified) = unverified {
                    entry.verification = if unverified {
                        Verification::Unverified
                    } else {
                        Verification::Verified
                    };
                }
            }
            FederationChange::Block(domain) => {
                let domain = domain_name(&domain)?;
                if self
                    .allowed_domains
                    .iter()
                    .any(|d| same(&d.domain, &domain))
                {
                    return Err(FederationChangeError::Allowed(domain));
                }
                if !self.blocked_domains.iter().any(|b| same(b, &domain)) {
                    self.blocked_domains.push(domain);
                }
            }
            FederationChange::Remove(domain) => {
                let domain = domain_name(&domain)?;
                let before = self.allowed_domains.len() + self.blocked_domains.len();
                self.allowed_domains.retain(|d| !same(&d.domain, &domain));
                self.blocked_domains.retain(|b| !same(b, &domain));
                if before == self.allowed_domains.len() + self.blocked_domains.len() {
                    return Err(FederationChangeError::Unknown(domain));
                }
            }
        }
        Ok(())
    }

    /// How to reach `domain`'s edge. A public provider's users are reached
    /// through the provider's edge, whose certificate names that edge; an
    /// allowed partner's pinned proxy replaces DNS discovery, but the
    /// connection must still prove the partner's domain (RFC 5922).
    pub fn route_to(&self, domain: &str) -> PartnerRoute {
        let domain = normalized(domain);
        let index = self.index();
        let provider_edge = index
            .provider_edge
            .get(&domain)
            .or_else(|| index.provider_of.get(&domain))
            .and_then(|&i| self.providers[i].proxy_fqdn.as_deref());
        if let Some(edge) = provider_edge {
            return PartnerRoute {
                verify: proxy_host(edge),
                pinned: ProxyAddress::parse(edge).ok(),
            };
        }
        let pinned = index
            .allowed
            .get(&domain)
            .and_then(|&i| self.allowed_domains[i].proxy_fqdn.as_deref())
            .and_then(|p| ProxyAddress::parse(p).ok());
        PartnerRoute {
            verify: domain,
            pinned,
        }
    }

    /// Whether the edge sending for `class` vouches for its users (see
    /// [`Verification`]); discovered partners' edges are taken at their
    /// certificate's word.
    pub fn verification(&self, class: &Class, domain: &str) -> Verification {
        let index = self.index();
        match class {
            Class::AllowedPartner => index
                .allowed
                .get(&normalized(domain))
                .map_or(Verification::Verified, |&i| {
                    self.allowed_domains[i].verification
                }),
            Class::PublicProvider(_) => self
                .provider_serving(domain)
                .map_or(Verification::Verified, |p| p.verification),
            Class::DiscoveredPartner | Class::Blocked(_) => Verification::Verified,
        }
    }

    fn blocked_by(&self, domain: &str) -> Option<String> {
        blocked_entry(&self.index().blocked, domain)
    }

    fn is_allowed(&self, domain: &str) -> bool {
        self.index().allowed.contains_key(&normalized(domain))
    }

    fn provider_serving(&self, domain: &str) -> Option<&PublicProvider> {
        self.index()
            .provider_of
            .get(&normalized(domain))
            .map(|&i| &self.providers[i])
    }
}

/// Where a remote domain's edge is, as configuration says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartnerRoute {
    /// The name the edge's certificate must prove, and under which a
    /// verified connection is reused (RFC 5923).
    pub verify: String,
    /// Where to connect instead of discovering the edge in DNS.
    pub pinned: Option<ProxyAddress>,
}

/// What the request wants to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Modality {
    /// Subscribe to presence.
    Presence,
    /// Send IM.
    Im,
    /// Call.
    Audio,
}

impl Modality {
    /// Parses `presence`, `im`, `audio`.
    pub fn from_name(name: &str) -> Option<Modality> {
        match name.to_ascii_lowercase().as_str() {
            "presence" => Some(Modality::Presence),
            "im" | "message" => Some(Modality::Im),
            "audio" | "call" => Some(Modality::Audio),
            _ => None,
        }
    }
}

/// The local party's place in the policy: the endpoint (or person behind
/// the edge) a request from outside reaches, or the one sending out.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalParty<'a> {
    /// Its URI, for explanations.
    pub uri: &'a str,
    /// The policy granted to it, if any.
    pub grant: Option<&'a str>,
    /// Its site, if any.
    pub site: Option<&'a str>,
}

/// What is known of the other side's identity.
#[derive(Clone, Copy, Debug)]
pub enum Remote<'a> {
    /// An inbound request over mutual TLS: the domains the peer's
    /// certificate proves (RFC 5922).
    Certified(&'a [String]),
    /// An inbound request that did not come over mutual TLS.
    Unverified,
    /// An outbound request: nothing is sent until the connection has
    /// verified the remote domain, so its identity is not in question.
    Destination,
}

/// One request crossing the boundary, in either direction.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// The other side's domain: the From domain of an inbound request, the
    /// Request-URI domain of an outbound one.
    pub remote_domain: &'a str,
    /// How that domain is vouched for.
    pub remote: Remote<'a>,
    /// Our side: the target of an inbound request, the sender of an outbound one.
    pub local: LocalParty<'a>,
    /// What it wants.
    pub modality: Modality,
}

/// How the sender's domain is classified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    /// Listed in allowed_domains.
    AllowedPartner,
    /// Not listed, reached through discovery.
    DiscoveredPartner,
    /// A user of this public provider.
    PublicProvider(String),
    /// Matched this blocked entry.
    Blocked(String),
}

/// The outcome, with every step that led to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Let in or not.
    pub allowed: bool,
    /// The classification, when one was reached.
    pub class: Option<Class>,
    /// Each check in order, as a sentence an admin can read.
    pub steps: Vec<String>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, step) in self.steps.iter().enumerate() {
            writeln!(f, "{}. {step}", i + 1)?;
        }
        write!(f, "=> {}", if self.allowed { "ALLOW" } else { "DENY" })
    }
}

/// Decides whether `request` may cross the edge, either way. A request is
/// allowed only when an inbound sender's identity holds, the remote
/// domain's classification and the edge switch for that class allow it,
/// and the local party's effective policy (endpoint grant, else site, else
/// global) allows that class and modality.
pub fn decide(config: &PolicyConfig, request: &Request<'_>) -> Decision {
    decide_with(config, request, Steps::recording())
}

/// [`decide`] without the explanation: the same verdict and class, with no
/// steps written, for the hot path where only the outcome is needed (run
/// [`decide`] again to log why a request was refused).
pub fn verdict(config: &PolicyConfig, request: &Request<'_>) -> Decision {
    decide_with(config, request, Steps::quiet())
}

/// The explanation being written, or not.
struct Steps {
    record: bool,
    list: Vec<String>,
}

impl Steps {
    fn recording() -> Steps {
        Steps {
            record: true,
            list: Vec::new(),
        }
    }

    fn quiet() -> Steps {
        Steps {
            record: false,
            list: Vec::new(),
        }
    }

    /// Adds a step; the sentence is only formatted when recording.
    fn note(&mut self, sentence: impl FnOnce() -> String) {
        if self.record {
            self.list.push(sentence());
        }
    }
}

fn decide_with(config: &PolicyConfig, request: &Request<'_>, mut steps: Steps) -> Decision {
    let deny = |steps: Steps, class| Decision {
        allowed: false,
        class,
        steps: steps.list,
    };
    let from = request.remote_domain;

    // 1. Identity: an inbound From domain must be one the TLS peer speaks for.
    let provider_of_peer = |peer: &[String]| {
        config.provider_serving(from).filter(|p| {
            peer.iter().any(|pd| {
                p.proxy_fqdn
                    .as_deref()
                    .is_some_and(|fqdn| pd.eq_ignore_ascii_case(fqdn))
                    || p.domains.iter().any(|d| d.eq_ignore_ascii_case(pd))
            })
        })
    };
    match request.remote {
        Remote::Destination => {
            steps.note(|| {
                format!("outbound to {from}: the connection must verify {from}'s certificate")
            });
        }
        Remote::Certified(peer) if peer.iter().any(|d| d.eq_ignore_ascii_case(from)) => {
            steps.note(|| format!("peer certificate proves {from}: identity verified"));
        }
        Remote::Certified(peer) if provider_of_peer(peer).is_some() => {
            let p = provider_of_peer(peer).expect("checked");
            steps.note(|| format!(
                "peer certificate ({}) is public provider {}, which serves {from}: identity verified",
                peer.join(", "),
                p.name
            ));
        }
        Remote::Certified(peer) => {
            steps.note(|| {
                format!(
                "From domain {from} does not match the peer certificate ({}): refused as spoofed",
                peer.join(", ")
            )
            });
            return deny(steps, None);
        }
        Remote::Unverified => {
            steps.note(|| format!(
                "no mutual-TLS identity: {from} is not verified, so it cannot be a partner or provider"
            ));
            return deny(steps, None);
        }
    }

    // 2. Classification, blocked first.
    let class = if let Some(entry) = config.blocked_by(from) {
        steps.note(|| format!("{from} matches blocked domain {entry}"));
        return deny(steps, Some(Class::Blocked(entry)));
    } else if config.is_allowed(from) {
        steps.note(|| format!("{from} is an allowed partner domain"));
        Class::AllowedPartner
    } else if let Some(p) = config.provider_serving(from) {
        if !p.enabled {
            steps.note(|| {
                format!(
                    "{from} belongs to public provider {}, which is disabled",
                    p.name
                )
            });
            return deny(steps, Some(Class::PublicProvider(p.name.clone())));
        }
        steps.note(|| format!("{from} belongs to public provider {}", p.name));
        Class::PublicProvider(p.name.clone())
    } else {
        steps.note(|| {
            format!("{from} is neither allowed, blocked nor a provider: a discovered partner")
        });
        Class::DiscoveredPartner
    };

    // 3. The edge switch for that class.
    let (switch, on) = match class {
        Class::AllowedPartner => ("allow_federated_users", config.edge.allow_federated_users),
        Class::DiscoveredPartner => (
            "enable_partner_discovery",
            config.edge.allow_federated_users && config.edge.enable_partner_discovery,
        ),
        Class::PublicProvider(_) => ("allow_public_providers", config.edge.allow_public_providers),
        Class::Blocked(_) => unreachable!("returned above"),
    };
    steps.note(|| format!("edge: {switch} is {}", if on { "on" } else { "off" }));
    if !on {
        return deny(steps, Some(class));
    }
    if matches!(request.remote, Remote::Certified(_))
        && config.verification(&class, from) == Verification::Unverified
    {
        steps.note(|| {
            format!("{from}'s edge does not vouch for its users: passed on marked verified=no")
        });
    }

    // 4. The local party's effective policy.
    let t = request.local;
    let grant = t.grant.and_then(|g| config.policies.get(g).map(|p| (g, p)));
    let site = t
        .site
        .and_then(|s| config.site_policies.get(s).map(|p| (s, p)));
    let policy = match (grant, site) {
        (Some((_, p)), _) | (None, Some((_, p))) => p,
        (None, None) => &config.global_policy,
    };
    let scope = || match (grant, site) {
        (Some((name, _)), _) => format!("policy {name} granted to {}", t.uri),
        (None, Some((site, _))) => format!("site policy {site}"),
        (None, None) => "the global policy".to_owned(),
    };
    let (access, access_name) = match class {
        Class::PublicProvider(_) => (policy.public_providers, "public_providers"),
        _ => (policy.federation, "federation"),
    };
    steps.note(|| {
        format!(
            "{} applies: {access_name} access is {}",
            scope(),
            if access { "on" } else { "off" }
        )
    });
    if !access {
        return deny(steps, Some(class));
    }
    let (modality_on, modality_name) = match request.modality {
        Modality::Presence => (policy.presence, "presence"),
        Modality::Im => (policy.im, "im"),
        Modality::Audio if matches!(class, Class::PublicProvider(_)) => (
            policy.audio && policy.public_provider_audio,
            "audio (public_provider_audio)",
        ),
        Modality::Audio => (policy.audio, "audio"),
    };
    steps.note(|| {
        format!(
            "{modality_name} is {}",
            if modality_on { "on" } else { "off" }
        )
    });
    Decision {
        allowed: modality_on,
        class: Some(class),
        steps: steps.list,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_domain_is_on_one_federation_list_at_most() {
        let mut policy = PolicyConfig::default();
        let allow = |domain: &str| FederationChange::Allow {
            domain: domain.into(),
            proxy: Some("sip.fabrikam.com".into()),
            unverified: Some(true),
        };
        policy.change_federation(allow("fabrikam.com")).unwrap();
        // Again, in other case and with a trailing dot: replaced, not doubled.
        policy.change_federation(allow("Fabrikam.com.")).unwrap();
        assert_eq!(policy.allowed_domains.len(), 1);
        assert_eq!(
            policy.allowed_domains[0].verification,
            Verification::Unverified
        );
        assert_eq!(
            policy.change_federation(FederationChange::Block("fabrikam.com".into())),
            Err(FederationChangeError::Allowed("fabrikam.com".into()))
        );
        policy
            .change_federation(FederationChange::Block("spam.example".into()))
            .unwrap();
        policy
            .change_federation(FederationChange::Block("SPAM.example".into()))
            .unwrap();
        assert_eq!(policy.blocked_domains, ["spam.example"]);
        assert_eq!(
            policy.change_federation(allow("spam.example")),
            Err(FederationChangeError::Blocked("spam.example".into()))
        );
        for domain in ["fabrikam.com", "spam.example"] {
            policy
                .change_federation(FederationChange::Remove(domain.into()))
                .unwrap();
        }
        assert!(policy.allowed_domains.is_empty() && policy.blocked_domains.is_empty());
        assert_eq!(
            policy.change_federation(FederationChange::Remove("nowhere.example".into())),
            Err(FederationChangeError::Unknown("nowhere.example".into()))
        );
    }

    #[test]
    fn allowing_again_changes_only_what_it_names_and_names_are_checked() {
        let mut policy = PolicyConfig::default();
        let allow = |domain: &str, proxy: Option<&str>, unverified| FederationChange::Allow {
            domain: domain.into(),
            proxy: proxy.map(Into::into),
            unverified,
        };
        policy
            .change_federation(allow(
                "FABRIKAM.COM",
                Some("SIP.fabrikam.com:16071"),
                Some(true),
            ))
            .unwrap();
        policy
            .change_federation(allow("fabrikam.com", None, None))
            .unwrap();
        assert_eq!(
            policy.allowed_domains,
            [AllowedDomain {
                domain: "fabrikam.com".into(),
                proxy_fqdn: Some("sip.fabrikam.com:16071".into()),
                verification: Verification::Unverified,
            }]
        );
        assert_eq!(
            policy
                .route_to("fabrikam.com")
                .pinned
                .map(|p| p.to_string()),
            Some("sip.fabrikam.com:16071".into())
        );
        policy
            .change_federation(allow("fabrikam.com", Some(""), Some(false)))
            .unwrap();
        assert_eq!(policy.allowed_domains[0].proxy_fqdn, None);
        assert_eq!(
            policy.allowed_domains[0].verification,
            Verification::Verified
        );
        for bad in [
            "",
            "https://fabrikam.com",
            "a@b.com",
            "127.0.0.1",
            "*",
            "fab rikam.com",
        ] {
            assert!(
                matches!(
                    policy.change_federation(allow(bad, None, None)),
                    Err(FederationChangeError::Name(_))
                ),
                "{bad:?}"
            );
            assert!(
                matches!(
                    policy.change_federation(FederationChange::Block(bad.into())),
                    Err(FederationChangeError::Name(_))
                ),
                "{bad:?}"
            );
        }
        assert!(matches!(
            policy.change_federation(allow("northwind.example", Some("host:port"), None)),
            Err(FederationChangeError::Name(_))
        ));
        assert_eq!(policy.allowed_domains.len(), 1, "nothing bad was added");
    }

    #[test]
    fn validation_refuses_what_is_not_a_domain_and_doubles() {
        let parse = |text: &str| toml::from_str::<PolicyConfig>(text).unwrap().validate([]);
        assert!(parse("blocked_domains = [\"spam.example\"]").is_ok());
        let error = parse("blocked_domains = [\"../../etc/passwd\"]")
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("blocked_domains: ") && error.contains("path"),
            "{error}"
        );
        let error = parse("blocked_domains = [\"spam.example\", \"SPAM.example.\"]")
            .unwrap_err()
            .to_string();
        assert!(error.contains("listed twice"), "{error}");
        let error = parse("allowed_domains = [{ domain = \"fabrikam.com\", proxy_fqdn = \"sip.fabrikam.com:x\" }]")
            .unwrap_err()
            .to_string();
        assert!(error.contains("port"), "{error}");
        assert!(parse(
            "allowed_domains = [{ domain = \"fabrikam.com\", proxy_fqdn = \"127.0.0.1:5061\" }]"
        )
        .is_ok());
    }
}
