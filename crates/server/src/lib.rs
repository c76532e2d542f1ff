//! The Porchlight node: configuration, the rules for answering requests, and
//! the event loop that joins transport and transaction layer.

pub mod config;
mod health;
mod node;
mod presence;
pub mod uas;

pub use config::{Config, ConfigError, DEFAULT_CONFIG};
pub use node::{Node, StartError};
