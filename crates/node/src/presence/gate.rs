//! Federation admission for calls and IM, both ways, and what the
//! services refuse a stranger without telling it more.

use super::*;
use porchlight_sip::status;

impl PresenceService {
    /// The policy check for a request entering from outside: calls, IM and
    /// subscriptions for people behind the edge (against the global
    /// policy), or calls and IM for one of our endpoints (against its grant
    /// or site). Ok carries the trust header value describing the peer.
    pub fn authorize_entering(
        &mut self,
        request: &Message,
        origin: &Origin,
        endpoint: Option<usize>,
        now: Now,
    ) -> Result<String, Box<Answer>> {
        let from = request.from().map(|f| f.uri.as_str()).unwrap_or_default();
        let to = request.request_uri().unwrap_or_default();
        let from_domain = domain_of(from);
        let local = match endpoint.and_then(|slot| self.directory.get(slot)) {
            Some(e) => local_party(e),
            None => LocalParty {
                uri: to,
                grant: None,
                site: None,
            },
        };
        let policy_request = PolicyRequest {
            remote_domain: &from_domain,
            remote: remote_of(origin),
            local,
            modality: modality_of(request),
        };
        let outcome = self.access.admission.admit(
            &self.access.policy,
            Way::Inbound,
            &policy_request,
            from,
            to,
            now,
        );
        if !outcome.allowed {
            return Err(Box::new(Answer::new(status::FORBIDDEN, "Forbidden")));
        }
        let class = match &outcome.class {
            Some(Class::PublicProvider(name)) => format!("public-provider;provider=\"{name}\""),
            _ => "federation".to_owned(),
        };
        let peer = origin
            .peer
            .as_deref()
            .map(|p| p.domains.join(","))
            .unwrap_or_default();
        // Fails closed: only a class whose edge vouches for its users says yes.
        let verified = match outcome
            .class
            .as_ref()
            .map(|c| self.access.policy.verification(c, &from_domain))
        {
            Some(Verification::Verified) => "yes",
            _ => "no",
        };
        Ok(format!("peer=\"{peer}\";verified={verified};class={class}"))
    }

    /// The policy check for a request from the inside to another domain:
    /// the sender must be one of ours (our certificate speaks only for our
    /// domains), and the remote domain's class and the sender's policy (its
    /// endpoint grant or site, else the global policy) must allow the
    /// modality.
    pub fn authorize_leaving(
        &mut self,
        our_domains: &[String],
        request: &Message,
        remote_domain: &str,
        now: Now,
    ) -> Result<(), Box<Answer>> {
        let from = request.from().map(|f| f.uri.as_str()).unwrap_or_default();
        let from_domain = domain_of(from);
        if !our_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(&from_domain))
        {
            tracing::info!(
                from,
                "outbound request refused: the From domain is not one of ours"
            );
            return Err(Box::new(Answer::new(
                status::FORBIDDEN,
                "Forbidden (the From domain is not served here)",
            )));
        }
        let directory = &self.directory;
        let local = match directory.resolve(from).and_then(|slot| directory.get(slot)) {
            Some(e) => local_party(e),
            None => LocalParty {
                uri: from,
                grant: None,
                site: None,
            },
        };
        let policy_request = PolicyRequest {
            remote_domain,
            remote: Remote::Destination,
            local,
            modality: modality_of(request),
        };
        let to = request.request_uri().unwrap_or_default();
        if self
            .access
            .admission
            .admit(
                &self.access.policy,
                Way::Outbound,
                &policy_request,
                from,
                to,
                now,
            )
            .allowed
        {
            Ok(())
        } else {
            Err(Box::new(Answer::new(status::FORBIDDEN, "Forbidden")))
        }
    }

    /// Where a call or IM with `modality` for `endpoint` goes now.
    pub fn delivery(&self, endpoint: usize, modality: Modality) -> Delivery {
        match self.directory.get(endpoint) {
            Some(e) => delivery::choose(e, self.registrar.bindings(endpoint), modality),
            None => Delivery::Refuse(Answer::new(status::NOT_FOUND, "Not Found")),
        }
    }

    /// A call or IM for `endpoint` could not be sent to its registered
    /// `contact`: the app's connection is gone, so is its registration,
    /// and watchers see it go offline unless another source says up.
    pub fn delivery_failed(&mut self, endpoint: usize, contact: &str, now: Now) {
        let Some(e) = self.directory.get(endpoint) else {
            return;
        };
        if self.registrar.flow_failed(endpoint, contact) {
            tracing::info!(
                endpoint = %e.identity.uri,
                contact,
                "the app's connection is gone; its registration is dropped"
            );
        }
        self.changed.registrations.insert(endpoint);
        self.refresh(endpoint, now);
    }

    /// Whether `request` comes from the app of the endpoint in its From.
    pub fn sent_by_endpoint(&self, request: &Message, origin: &Origin) -> bool {
        let Ok(from) = request.from() else {
            return false;
        };
        self.directory
            .resolve(from.uri.as_str())
            .and_then(|slot| Some((slot, self.directory.get(slot)?)))
            .is_some_and(|(slot, e)| delivery::sent_by(e, self.registrar.bindings(slot), origin))
    }

    /// Whether a stranger's new subscription (the caller checks it is one)
    /// to an existing endpoint is one the policy refuses, when missing
    /// endpoints are hidden: it is
    /// refused before anything in it is checked, as a missing one is, so a
    /// malformed request cannot tell the two apart. The refusal is
    /// recorded like any other.
    pub(super) fn hides_refused(
        &mut self,
        request: &Message,
        origin: &Origin,
        endpoint: Option<usize>,
        now: Now,
    ) -> bool {
        if !self.access.policy.edge.hide_missing_endpoints {
            return false;
        }
        let Some(endpoint) = endpoint else {
            return false;
        };
        let watcher = request.from().map(|f| f.uri.as_str()).unwrap_or_default();
        let (directory, policy, admission) = (
            &self.directory,
            &self.access.policy,
            &mut self.access.admission,
        );
        let e = directory.get(endpoint).expect("resolved");
        let domain = domain_of(watcher);
        let policy_request = PolicyRequest {
            remote_domain: &domain,
            remote: remote_of(origin),
            local: local_party(e),
            modality: Modality::Presence,
        };
        !verdict(policy, &policy_request).allowed
            && authorize_subscription(
                policy,
                directory,
                admission,
                origin,
                endpoint as u32,
                watcher,
                now,
            ) != Authorization::Allow
    }
}
