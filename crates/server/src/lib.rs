//! The Porchlight node running: the driver of the I/O-free core in
//! `porchlight-node`. It binds the transports, opens the store, runs the
//! health probes, webhook deliveries and dial tasks, and carries out what
//! the core decides without ever waiting for a peer.

mod backlog;
pub mod cluster;
mod dial;
mod handle;
mod health;
mod node;
mod persistence;
mod webhook;

pub use node::{resolver, Node, StartError};
pub use porchlight_node::{check_import, ImportOptions, ImportPlan, ImportRefusal};
pub use porchlight_node::{config, import, uas};
pub use porchlight_node::{Config, ConfigError, Provisioned, DEFAULT_CONFIG};

/// What the running node shows its admin, and the handle that asks it.
pub mod status {
    pub use crate::handle::{ImportError, NodeHandle, Stopped};
    pub use porchlight_node::history::{HistorySample, HistoryView, PartnerSample};
    pub use porchlight_node::status::*;
}
pub use status::NodeHandle;

use porchlight_node::{edge, presence};

/// The policy decision the node with `config` would make, every step
/// written down: for `from` outside reaching `to` (an endpoint, or someone
/// else in our domains behind the edge, in edge mode) with a certificate proving
/// `peer_domains`, or for `from` in our domains sending out to `to` in
/// another domain. None when neither side is ours.
pub fn explain(
    config: &Config,
    from: &str,
    to: &str,
    modality: porchlight_policy::Modality,
    peer_domains: Option<&[String]>,
) -> Option<porchlight_policy::Decision> {
    use porchlight_policy::{decide, LocalParty, Remote, Request};
    let directory = config.directory().ok()?;
    let ours = |uri: &str| {
        let domain = edge::domain_of(uri);
        config
            .node
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&domain))
    };
    let anyone = |uri| LocalParty {
        uri,
        grant: None,
        site: None,
    };
    let endpoint = |uri| directory.resolve(uri).and_then(|slot| directory.get(slot));
    let (remote_domain, remote, local) = if let Some(endpoint) = endpoint(to) {
        let remote = peer_domains.map_or(Remote::Unverified, Remote::Certified);
        (
            edge::domain_of(from),
            remote,
            presence::local_party(endpoint),
        )
    } else if ours(to) && !config.edge.internal_next_hop.is_empty() {
        let remote = peer_domains.map_or(Remote::Unverified, Remote::Certified);
        (edge::domain_of(from), remote, anyone(to))
    } else if ours(from) {
        let local = endpoint(from).map_or_else(|| anyone(from), presence::local_party);
        (edge::domain_of(to), Remote::Destination, local)
    } else {
        return None;
    };
    Some(decide(
        &config.policy,
        &Request {
            remote_domain: &remote_domain,
            remote,
            local,
            modality,
        },
    ))
}
