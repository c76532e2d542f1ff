//! What the admin sees of endpoints, watchers and decisions.

use super::*;

impl PresenceService {
    /// An endpoint with its live presence, for the admin.
    pub(super) fn endpoint_view(&self, endpoint: usize, e: &Endpoint) -> EndpointView {
        let state = self.notifier.state(endpoint as u32);
        EndpointView {
            uri: e.identity.uri.clone(),
            display_name: e.config.display_name.clone(),
            availability: state.availability.band().name(),
            availability_value: state.availability.0,
            activity: state.activity.clone(),
            note: state.note.clone(),
            watchers: self.notifier.watcher_count(endpoint as u32),
            registered: e
                .credentials
                .as_ref()
                .map(|_| self.registrar.is_registered(endpoint)),
            healthy: self.health[endpoint].0,
            set_by_admin: self.overrides[endpoint].is_some(),
        }
    }

    /// Every endpoint with its live presence.
    pub fn endpoint_views(&self) -> Vec<EndpointView> {
        self.directory
            .iter()
            .map(|(slot, e)| self.endpoint_view(slot, e))
            .collect()
    }

    /// One endpoint with who watches it.
    pub fn endpoint_detail(&self, uri: &str) -> Option<EndpointDetail> {
        let endpoint = self.directory.resolve(uri)?;
        Some(EndpointDetail {
            endpoint: self.endpoint_view(endpoint, self.directory.get(endpoint)?),
            watcher_uris: self
                .notifier
                .watchers(endpoint as u32)
                .take(MAX_LISTED_WATCHERS)
                .map(str::to_owned)
                .collect(),
        })
    }

    /// Subscription and NOTIFY counters, and NOTIFYs outstanding.
    pub fn notifier_stats(&self) -> (NotifierStats, u32) {
        (self.notifier.stats(), self.notifier.in_flight())
    }

    /// Policy decisions by way, kind and outcome.
    pub fn decision_counts(&self) -> Vec<DecisionCount> {
        self.access.admission.counts()
    }

    /// Requests of `partner` the policy refused since start.
    pub fn partner_refusals(&self, partner: &str) -> u64 {
        self.access.admission.partner_refusals(partner)
    }

    /// The most recent refusals, newest first.
    pub fn refusals(&self) -> Vec<DecisionRecord> {
        self.access.admission.recent()
    }
}
