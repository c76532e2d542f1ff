//! What the node counts for its admin, apart from the protocol state it
//! counts in: its age, each partner's traffic and certificate, the last
//! hour's samples, dials, and the subscriptions it brought back at start.

use std::time::Instant;

use crate::history::History;
use crate::status::PartnerCounts;

/// The admin's counters, owned here and read by status.
pub(super) struct Tally {
    /// When the core started.
    pub(super) started: Instant,
    /// Requests exchanged with each partner.
    pub(super) partners: PartnerCounts,
    /// The last hour's samples, for the console's charts.
    pub(super) history: History,
    /// Destinations found and connected since start.
    pub(super) dials_succeeded: u64,
    /// Destinations that could not be reached since start.
    pub(super) dials_failed: u64,
    /// Subscriptions brought back from the store at start.
    pub(super) restored: usize,
}

impl Tally {
    /// Nothing counted yet, at `started`, sampling every
    /// `history_interval_secs`, with `restored` subscriptions brought back.
    pub(super) fn new(started: Instant, history_interval_secs: u64, restored: usize) -> Tally {
        Tally {
            started,
            partners: PartnerCounts::default(),
            history: History::new(history_interval_secs),
            dials_succeeded: 0,
            dials_failed: 0,
            restored,
        }
    }
}
