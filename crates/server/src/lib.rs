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

pub use node::{resolver, Listening, Node, StartError};
pub use porchlight_node::{check_import, ImportOptions, ImportPlan, ImportRefusal};
pub use porchlight_node::{config, import, uas};
pub use porchlight_node::{explain, Config, ConfigError, Provisioned, DEFAULT_CONFIG};

/// What the running node shows its admin, and the handle that asks it.
pub mod status {
    pub use crate::handle::{ImportError, NodeHandle, Stopped};
    pub use porchlight_node::history::{HistorySample, HistoryView, PartnerSample};
    pub use porchlight_node::status::*;
}
pub use status::NodeHandle;

/// Reads and validates a configuration file. The node's crate reads no
/// file, so the reading is done here, by the crate that does I/O.
pub fn load_config(path: &std::path::Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Config::from_file_text(&text, path)
}
