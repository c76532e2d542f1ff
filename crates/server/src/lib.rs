//! The Porchlight node: configuration, the rules for answering requests, and
//! the event loop that joins transport and transaction layer.

pub mod config;
mod edge;
mod health;
mod node;
mod presence;
pub mod uas;

pub use config::{Config, ConfigError, DEFAULT_CONFIG};
pub use node::{Node, StartError};

/// The policy decision for `from` reaching the endpoint `to`, as the node
/// with `config` would make it for a request from outside its trusted
/// networks; None when `to` is not an endpoint.
pub fn explain(
    config: &Config,
    from: &str,
    to: &str,
    modality: porchlight_policy::Modality,
    peer_domains: Option<&[String]>,
) -> Option<porchlight_policy::Decision> {
    let directory = config.directory().ok()?;
    let endpoint = directory.resolve(to)?;
    Some(presence::explain(
        &config.policy,
        &directory,
        peer_domains,
        from,
        endpoint,
        modality,
    ))
}
