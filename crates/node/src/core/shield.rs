//! What holds the node at the edge before a request is read further: an
//! anonymous source past its rate is dropped alone and unanswered (as
//! Kamailio's pike does), and under load new work is shed with 503 and
//! Retry-After; each refusal is counted exactly and logged once per
//! interval.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use porchlight_link::{RefusalLog, SourceRateLimits, SourceRates};
use porchlight_sip::{Answer, Message};

use crate::config::LimitsSection;
use crate::overload::{Load, Overload, OverloadLimits, Transition};

/// The bounds in front of the router, with what they refused.
pub(super) struct Shield {
    /// Sheds new work past the load marks.
    overload: Overload,
    /// Requests per anonymous source, so one flooder is dropped alone.
    source_rates: SourceRates,
    /// Refusals of the node's own (overload, source rate).
    refusals: RefusalLog,
}

/// What the shield lets through.
pub(super) enum Entry {
    /// On to the router.
    Pass,
    /// Dropped unanswered: its source is past its rate.
    Drop,
    /// Answered statelessly with this (503 and Retry-After): new work
    /// while the node is overloaded.
    Shed(Answer),
}

impl Shield {
    /// The bounds `limits` sets.
    pub(super) fn new(limits: &LimitsSection) -> Shield {
        Shield {
            overload: Overload::new(OverloadLimits {
                max_backlog: limits.overload_backlog,
                max_server_transactions: limits.overload_server_transactions,
                memory_budget_bytes: limits.memory_budget_mib << 20,
                retry_after: Duration::from_secs(limits.overload_retry_after_secs),
            }),
            source_rates: SourceRates::new(SourceRateLimits {
                per_sec: limits.source_request_rate,
                burst: limits.source_request_burst,
                max_sources: limits.max_rate_sources,
            }),
            refusals: RefusalLog::new(Duration::from_secs(limits.refusal_log_interval_secs)),
        }
    }

    /// Whether `request` from `source` goes on; `anonymous`: neither a
    /// certified partner nor the trusted inside, so its rate counts.
    pub(super) fn check(
        &mut self,
        request: &Message,
        source: IpAddr,
        anonymous: bool,
        now: Instant,
    ) -> Entry {
        if anonymous && !self.source_rates.admit(source, now) {
            self.refusals
                .note(now, source, "source rate: request dropped", "");
            return Entry::Drop;
        }
        match self.overload.shed(request) {
            Some(answer) => {
                self.refusals
                    .note(now, source, "overloaded: new request shed", "");
                Entry::Shed(answer)
            }
            None => Entry::Pass,
        }
    }

    /// The load after a batch of messages; a change of state is logged
    /// once.
    pub(super) fn on_load(&mut self, load: Load) {
        match self.overload.observe(load) {
            Some(Transition::Shedding(load)) => tracing::warn!(
                backlog = load.backlog,
                server_transactions = load.server_transactions,
                resident_mib = load.resident_bytes >> 20,
                "overloaded: new requests get 503 with Retry-After until the load halves"
            ),
            Some(Transition::Recovered(shed)) => {
                tracing::warn!(
                    shed,
                    "load back under half the marks: new requests taken again"
                )
            }
            None => {}
        }
    }

    /// Whether new work is being shed now.
    pub(super) fn is_shedding(&self) -> bool {
        self.overload.is_shedding()
    }

    /// Refusals since start, by reason.
    pub(super) fn refused(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.refusals.totals()
    }
}
