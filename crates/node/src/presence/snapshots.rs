//! What the store keeps: the changes since the last flush, and the
//! state brought back at start.

use super::*;

impl PresenceService {
    /// Moves the subscription slots changed since the last call into `out`.
    pub fn take_changed(&mut self, out: &mut Vec<u32>) {
        self.notifier.take_changed(out);
    }

    /// The saved form of a subscription slot; None: delete it.
    pub fn saved(&self, slot: u32, now: Now) -> Option<SavedSubscription<NextHop>> {
        self.notifier.saved(slot, now.mono, now.unix())
    }

    /// Each endpoint whose registered contacts changed since the last
    /// call, with its contacts now (an empty list: none left).
    pub fn take_registration_changes(
        &mut self,
        now: Now,
    ) -> Vec<(String, Vec<SavedBinding<FlowInfo<NextHop>>>)> {
        std::mem::take(&mut self.changed.registrations)
            .into_iter()
            .map(|endpoint| {
                (
                    self.notifier.identity(endpoint as u32).uri.clone(),
                    self.registrar.saved(endpoint, now.mono, now.unix()),
                )
            })
            .collect()
    }

    /// The endpoints whose publications changed, with their publications
    /// now (empty: none left), for the store.
    pub fn take_publication_changes(&mut self, now: Now) -> Vec<(String, Vec<SavedPublication>)> {
        std::mem::take(&mut self.changed.publications)
            .into_iter()
            .map(|endpoint| {
                (
                    self.notifier.identity(endpoint as u32).uri.clone(),
                    self.publications
                        .saved(endpoint as u32, now.mono, now.unix()),
                )
            })
            .collect()
    }

    /// Puts saved publications back, so an app's published state holds
    /// across a restart and its refreshes keep their entity tags. Returns
    /// the URIs of endpoints no longer configured, whose publications the
    /// store should drop.
    pub fn restore_publications(
        &mut self,
        saved: Vec<(String, Vec<SavedPublication>)>,
        now: Now,
    ) -> Vec<String> {
        let unix = now.unix();
        let mut orphans = Vec::new();
        for (uri, publications) in saved {
            let Some(endpoint) = self.directory.resolve(&uri) else {
                orphans.push(uri);
                continue;
            };
            self.publications
                .restore(endpoint as u32, publications, now.mono, unix);
            self.refresh(endpoint, now);
        }
        orphans
    }

    /// Puts saved registered contacts back, so endpoints whose apps were
    /// registered are online again from the first moment. Returns how many
    /// came back, and the URIs of endpoints no longer configured, whose
    /// contacts the store should drop.
    pub fn restore_registrations(
        &mut self,
        saved: Vec<(String, Vec<SavedRegistration>)>,
        now: Now,
    ) -> (usize, Vec<String>) {
        let unix = now.unix();
        let mut restored = 0;
        let mut orphans = Vec::new();
        for (uri, bindings) in saved {
            let Some(endpoint) = self.directory.resolve(&uri) else {
                orphans.push(uri);
                continue;
            };
            let bindings: Vec<_> = bindings
                .into_iter()
                .filter_map(|b| {
                    let hop = crate::snapshot::flow_from_text(&b.flow.flow, &b.contact)?;
                    let flow = b.flow.clone().with_flow(hop);
                    Some(b.with_flow(flow))
                })
                .collect();
            restored += bindings.len();
            self.registrar.restore(endpoint, bindings, now.mono, unix);
            self.refresh(endpoint, now);
        }
        (restored, orphans)
    }

    /// Puts saved subscriptions back, drops those that cannot come back
    /// (expired, endpoint gone, now refused by the policy), paces their
    /// first NOTIFYs over `window`, and starts noting changes for the store.
    pub fn restore(
        &mut self,
        saved: Vec<SavedSubscription<String>>,
        window: Duration,
        now: Now,
    ) -> RestoreReport {
        let unix = now.unix();
        let mut report = RestoreReport::default();
        for s in saved {
            let Some(hop) = crate::snapshot::flow_from_text(&s.flow.flow, reconnect_to(&s)) else {
                report
                    .dropped
                    .push((s.id.index, "its path back is unreadable".into()));
                continue;
            };
            if let Some(reason) = self.refused_now(&s, &hop) {
                report.dropped.push((s.id.index, reason));
                continue;
            }
            let slot = s.id.index;
            let directory = &self.directory;
            match self.notifier.restore(
                s.with_flow(hop),
                &|uri| directory.resolve(uri).map(|i| i as u32),
                now.mono,
                unix,
            ) {
                Ok(_) => report.restored += 1,
                Err(e) => report.dropped.push((slot, e.to_string())),
            }
        }
        self.recovery = Some((window, now.mono + SETTLE_LIMIT));
        self.begin_recovery_when_settled(now);
        self.notifier.record_changes();
        report
    }

    /// Starts re-notifying restored watchers once every endpoint's health
    /// probe has reported (or [`SETTLE_LIMIT`] has passed), so the first
    /// NOTIFY after a restart carries the endpoint's real state, not the
    /// "unknown yet" of a node that just started.
    pub(super) fn begin_recovery_when_settled(&mut self, now: Now) {
        let Some((window, deadline)) = self.recovery else {
            return;
        };
        let settled = self
            .directory
            .iter()
            .all(|(slot, e)| e.health.is_none() || self.health[slot].0.is_some());
        if settled || now.mono >= deadline {
            self.notifier.pace_recovery(window);
            self.recovery = None;
        }
    }

    /// Has every subscription saved again by the next write-behind (a node
    /// alone joining a cluster: Redis must hold what its store brought back).
    pub fn save_all(&mut self) {
        self.notifier.save_all();
    }

    /// Changed subscriptions not yet taken for the store.
    pub fn changes_pending(&self) -> usize {
        self.notifier.changes_pending()
    }

    /// Restored subscriptions still owed their first NOTIFY.
    pub fn recovering(&self) -> usize {
        self.notifier.recovering()
    }
}
