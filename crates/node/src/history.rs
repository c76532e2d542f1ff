//! The last hour of the node's own counters, sampled by the node itself,
//! so the console charts it with no external service: a ring of samples
//! of fixed length, the oldest dropped as a new one comes.

use std::collections::VecDeque;

use serde::Serialize;

/// The busiest partners kept in each sample; the rest are left out so a
/// sample's size does not grow with the partners counted.
pub const MAX_CHARTED_PARTNERS: usize = 8;

/// How far back the history reaches.
pub const HISTORY_SECS: u64 = 3_600;

/// One sample: gauges as they were, counters as totals since start (the
/// console charts their differences as rates).
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct HistorySample {
    /// When it was taken (Unix seconds).
    pub at: i64,
    /// Subscriptions alive.
    pub subscriptions_active: u64,
    /// NOTIFYs sent since start.
    pub notifies_sent: u64,
    /// NOTIFYs failed for good since start.
    pub notifies_failed: u64,
    /// Requests and connections refused since start, every reason.
    pub refused: u64,
    /// The busiest partners' requests since start, both ways.
    pub partners: Vec<PartnerSample>,
}

/// A partner's requests since start, in and out.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct PartnerSample {
    /// The partner's domain.
    pub partner: String,
    /// Requests from and to it since start.
    pub requests: u64,
}

/// The samples kept, oldest first.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct HistoryView {
    /// Seconds between samples.
    pub interval_secs: u64,
    /// Oldest first.
    pub samples: Vec<HistorySample>,
}

/// The ring of samples.
pub struct History {
    interval_secs: u64,
    samples: VecDeque<HistorySample>,
}

impl History {
    /// A history sampled every `interval_secs` over [`HISTORY_SECS`].
    pub fn new(interval_secs: u64) -> History {
        let interval_secs = interval_secs.max(1);
        History {
            interval_secs,
            samples: VecDeque::with_capacity(Self::capacity(interval_secs)),
        }
    }

    fn capacity(interval_secs: u64) -> usize {
        (HISTORY_SECS / interval_secs).max(2) as usize
    }

    /// Seconds between samples, for the driver's timer.
    pub fn interval_secs(&self) -> u64 {
        self.interval_secs
    }

    /// Keeps `sample`, dropping the oldest one past the hour.
    pub fn record(&mut self, sample: HistorySample) {
        if self.samples.len() == Self::capacity(self.interval_secs) {
            self.samples.pop_front();
        }
        self.samples.push_back(sample);
    }

    /// Every sample kept, oldest first.
    pub fn view(&self) -> HistoryView {
        HistoryView {
            interval_secs: self.interval_secs,
            samples: self.samples.iter().cloned().collect(),
        }
    }
}
