//! Porchlight's node core, without I/O: the configuration and its checks,
//! and everything a node decides — routing at the edge, federation
//! admission, presence, registration, IM sessions, proxying — as a state
//! machine fed messages and time ([`core::Core`]). This crate has no async
//! runtime and no sockets, so none can creep in; the server crate drives
//! it with the network, tasks and threads.

pub mod admission;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod core;
pub mod delivery;
pub mod edge;
pub mod explain;
pub mod history;
pub mod im_session;
pub mod import;
pub mod outbound;
pub mod overload;
pub mod presence;
pub mod router;
pub mod snapshot;
pub mod status;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod uas;
pub mod webhook;
pub mod wire;

pub use config::{Config, ConfigError, Provisioned, DEFAULT_CONFIG};
pub use explain::explain;
pub use import::{check_import, ImportOptions, ImportPlan, ImportRefusal};
