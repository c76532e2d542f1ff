//! This node's part in a cluster, as the core sees it: the members as the
//! driver last reported them (to find the live node that holds a refresh's
//! subscription), and the lease (past which the node fences itself). A
//! node alone has neither.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::cluster::{ClusterView, Lease};

/// The cluster as this node knows it.
pub(super) struct Membership {
    /// The members and counts as the driver last reported them.
    view: Option<ClusterView>,
    /// The lease as the driver last told it.
    lease: Option<Lease>,
    /// Over how long restored or adopted watchers get their first NOTIFY.
    pub(super) renotify_window: Duration,
}

impl Membership {
    /// Alone, until the driver says otherwise.
    pub(super) fn new(renotify_window: Duration) -> Membership {
        Membership {
            view: None,
            lease: None,
            renotify_window,
        }
    }

    /// The members and counts the driver reports.
    pub(super) fn set_view(&mut self, view: ClusterView) {
        self.view = Some(view);
    }

    /// The lease as renewed (or given up).
    pub(super) fn set_lease(&mut self, lease: Lease) {
        self.lease = Some(lease);
    }

    /// The last view, for status; None while alone.
    pub(super) fn view(&self) -> Option<&ClusterView> {
        self.view.as_ref()
    }

    /// Whether this node may not notify at `now`: its lease ran out or was
    /// given up. Never while alone.
    pub(super) fn fenced(&self, now: Instant) -> bool {
        self.lease.is_some_and(|lease| lease.fenced(now))
    }

    /// When the lease runs out unless renewed: the core's own deadline.
    pub(super) fn runs_out(&self, now: Instant) -> Option<Instant> {
        self.lease.and_then(|lease| lease.runs_out(now))
    }

    /// The internal address of the live member in the run `origin`
    /// (`node-era`) names; None when it is gone or not yet known here.
    pub(super) fn live_member(&self, origin: &str) -> Option<SocketAddr> {
        let (node, era) = origin.split_once('-')?;
        let holder = self.view.as_ref()?.members.iter().find(|m| {
            !m.this_node
                && m.lease_left_ms.is_some()
                && m.node.to_string() == node
                && m.era.to_string() == era
        })?;
        holder.internal.parse().ok()
    }
}
