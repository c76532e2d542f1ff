//! The node's core in memory: whole exchanges a real peer would have with
//! the node, each run in milliseconds on the test kit (virtual time,
//! scripted links, every action looked at). The end-to-end suite keeps
//! only what real sockets and real peers can show.

// The scenarios time themselves against the real clock, to show that
// virtual time is what they ran in.
#![allow(clippy::disallowed_methods)]

mod admin;
mod cluster;
mod messaging;
mod overload;
mod policy;
mod proxy;
mod registration;
mod requests;
mod sources;
mod subscriptions;
