//! SIP transactions (RFC 3261 §17, with RFC 6026's Accepted state) for
//! Porchlight.
//!
//! The state machines in [`machine`] and the matching layer in
//! [`TransactionLayer`] are I/O-free: events in, actions out, time passed in
//! as arguments. The server's driver turns outputs into socket writes and
//! sleeps until [`TransactionLayer::next_deadline`].

mod layer;
pub mod machine;
pub mod proxy;

pub use layer::{
    ClientKey, Output, RequestMatch, ServerKey, TransactionLayer, TxId, WrittenInvite,
};
pub use machine::{
    Action, ClientRequest, ClientState, ClientTransaction, Kind, ServerState, ServerTransaction,
    Timer, TimerConfig,
};
