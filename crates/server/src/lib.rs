//! The Porchlight node: configuration, the rules for answering requests, and
//! the event loop that joins transport and transaction layer.

pub mod config;
pub mod uas;
mod node;

pub use config::{Config, ConfigError, DEFAULT_CONFIG};
pub use node::{Node, StartError};
