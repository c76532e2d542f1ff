//! Where an endpoint's presence comes from: its registration, its app's
//! publications, its health probe, its schedule and an admin's setting,
//! combined into the one state its watchers see.

use super::*;

impl PresenceService {
    /// Recomputes an endpoint's state from its sources (merged over the
    /// cluster, when there is one) and tells the notifier who it is and
    /// how it is; watchers hear of a change. Nothing for a vacant slot (a
    /// report about an endpoint removed since).
    pub(super) fn refresh(&mut self, endpoint: usize, now: Now) {
        let at = now.timestamp();
        let Some(uri) = self.directory.get(endpoint).map(|e| e.identity.uri.clone()) else {
            return;
        };
        let (registered, published) = self.shared_sources(endpoint, &uri, now);
        let e = self.directory.get(endpoint).expect("resolved above");
        let sources = Sources {
            registered: e.credentials.as_ref().map(|_| registered),
            healthy: self.health[endpoint].0,
            // An admin's setting wins over the app's own publications.
            published: self.overrides[endpoint].clone().or(published),
        };
        let state = e.effective_state(&sources, at);
        if self.notifier.is_declared(endpoint as u32)
            && *self.notifier.state(endpoint as u32) != state
        {
            tracing::info!(
                endpoint = %e.identity.uri,
                availability = state.availability.0,
                "presence changed"
            );
        }
        self.notifier
            .put_presentity(endpoint as u32, &e.identity, state, at);
    }

    /// Sets (or, with None, clears) an admin's presence for an endpoint:
    /// it wins over every source until cleared. None when the URI is not
    /// an endpoint.
    pub fn set_override(
        &mut self,
        uri: &str,
        state: Option<porchlight_presence::PresenceState>,
        now: Now,
    ) -> Option<EndpointView> {
        let endpoint = self.directory.resolve(uri)?;
        if let Some(state) = &state {
            tracing::info!(
                endpoint = uri,
                availability = state.availability.0,
                "presence set by the admin"
            );
        } else {
            tracing::info!(endpoint = uri, "the admin's presence cleared");
        }
        self.share_override(uri, state.as_ref());
        self.overrides[endpoint] = state;
        self.refresh(endpoint, now);
        Some(self.endpoint_view(endpoint, self.directory.get(endpoint)?))
    }

    /// A health probe's verdict for an endpoint.
    pub fn on_health(&mut self, endpoint: usize, healthy: bool, now: Now) {
        let Some(e) = self.directory.get(endpoint) else {
            return;
        };
        let threshold = e.health.as_ref().map_or(1, |h| h.failures);
        let (verdict, failures) = &mut self.health[endpoint];
        if healthy {
            *failures = 0;
            *verdict = Some(true);
        } else {
            *failures += 1;
            if *failures >= threshold {
                *verdict = Some(false);
            }
        }
        self.refresh(endpoint, now);
        self.begin_recovery_when_settled(now);
    }
}
