//! Where a call or IM for an application endpoint goes, as a pure function
//! of the endpoint and its registrations: the app's registered contact
//! (over the flow it registered on, so apps behind NAT are reached), else
//! its static SIP target, else — for IM — its webhook. And the converse:
//! whether a request comes from an endpoint's app, which lets it call and
//! message out through the edge.

use porchlight_endpoints::{Binding, Endpoint};
use porchlight_link::{Origin, Target};
use porchlight_policy::Modality;
use porchlight_presence::FlowInfo;
use porchlight_sip::status;
use porchlight_sip::Answer;

use crate::edge::hop_of;
use crate::outbound::NextHop;

/// A registration's path back to the app.
pub type Flow = FlowInfo<NextHop>;

/// How one call or IM reaches an endpoint's app.
#[derive(Debug, PartialEq, Eq)]
pub enum Delivery {
    /// Proxy it: the Request-URI becomes `request_uri`, sent to `next`.
    Sip {
        /// The registered contact or the static target (§16.5 retargeting).
        request_uri: String,
        /// Where it is sent.
        next: NextHop,
        /// It goes to a registration: if its flow is gone, so is the binding.
        registered: bool,
    },
    /// POST it to the endpoint's webhook.
    Webhook,
    /// Answer it here.
    Refuse(Answer),
}

/// Chooses the delivery of a request with `modality` for `endpoint`. The
/// most recent registration wins: an app that re-registers from elsewhere
/// is reached there at once.
pub fn choose(endpoint: &Endpoint, bindings: &[Binding<Flow>], modality: Modality) -> Delivery {
    let capabilities = &endpoint.identity.capabilities;
    match modality {
        Modality::Audio if !capabilities.voice => {
            return Delivery::Refuse(Answer::new(
                488,
                "Not Acceptable Here (the endpoint takes no calls)",
            ))
        }
        Modality::Im if !capabilities.text => {
            return Delivery::Refuse(Answer::new(
                488,
                "Not Acceptable Here (the endpoint takes no IM)",
            ))
        }
        _ => {}
    }
    if let Some(binding) = bindings.iter().max_by_key(|b| b.expires_at) {
        return Delivery::Sip {
            request_uri: binding.contact.clone(),
            next: binding.flow.flow.clone(),
            registered: true,
        };
    }
    if let Some(target) = &endpoint.config.sip_target {
        if let Some(next) = hop_of(target) {
            return Delivery::Sip {
                request_uri: target.clone(),
                next,
                registered: false,
            };
        }
    }
    if modality == Modality::Im && endpoint.config.webhook.is_some() {
        return Delivery::Webhook;
    }
    Delivery::Refuse(Answer::new(
        status::TEMPORARILY_UNAVAILABLE,
        "Temporarily Unavailable (the endpoint's app is not reachable now)",
    ))
}

/// Whether a request arrived from `endpoint`'s app: over a flow one of its
/// registrations came in on, or from the host of its static target.
pub fn sent_by(endpoint: &Endpoint, bindings: &[Binding<Flow>], origin: &Origin) -> bool {
    let on_flow = bindings.iter().any(|b| match &b.flow.flow {
        NextHop::Direct(Target::Connection(id)) => origin.connection == Some(*id),
        NextHop::Direct(Target::Address { addr, .. }) => {
            origin.connection.is_none() && *addr == origin.source
        }
        _ => false,
    });
    on_flow
        || endpoint
            .config
            .sip_target
            .as_deref()
            .and_then(hop_of)
            .is_some_and(|hop| match hop {
                NextHop::Direct(Target::Address { addr, .. }) => addr.ip() == origin.source.ip(),
                _ => false,
            })
}

#[cfg(test)]
mod tests {
    // Virtual time starts from a real instant; only the tests read it.
    #![allow(clippy::disallowed_methods)]

    use super::*;
    use std::time::{Duration, Instant};

    use porchlight_endpoints::EndpointConfig;
    use porchlight_link::{ConnectionId, Protocol};

    fn endpoint(extra: &str) -> Endpoint {
        let config: EndpointConfig = toml::from_str(&format!(
            "uri = \"sip:ivr@contoso.com\"\ndisplay_name = \"IVR\"\n{extra}"
        ))
        .unwrap();
        Endpoint::new(config).unwrap()
    }

    fn binding(contact: &str, flow: NextHop, expires_in: u64) -> Binding<Flow> {
        let now = Instant::now();
        Binding {
            contact: contact.into(),
            expires_at: now + Duration::from_secs(expires_in),
            call_id: "reg".into(),
            cseq: 1,
            flow: FlowInfo {
                flow,
                reliable: false,
                via: "SIP/2.0/UDP 10.0.0.2:5060".into(),
                contact: "<sip:10.0.0.2:5060>".into(),
            },
            misses: 0,
            next_keepalive: now,
        }
    }

    fn origin(source: &str, connection: Option<u64>) -> Origin {
        Origin {
            protocol: Protocol::Udp,
            source: source.parse().unwrap(),
            local: "10.0.0.2:5060".parse().unwrap(),
            connection: connection.map(ConnectionId),
            peer: None,
        }
    }

    #[test]
    fn the_newest_registration_then_the_static_target_then_the_webhook() {
        let e = endpoint(
            "sip_target = \"sip:10.0.0.7:5070;transport=tcp\"\n\
             webhook = { url = \"http://127.0.0.1:8080/im\", secret = \"s\" }",
        );
        let old = binding(
            "sip:ivr@10.0.0.8:5080",
            NextHop::address(Protocol::Udp, "10.0.0.8:5080".parse().unwrap()),
            100,
        );
        let new = binding(
            "sip:ivr@10.0.0.9:5090",
            NextHop::Direct(Target::Connection(ConnectionId(4))),
            3000,
        );
        assert_eq!(
            choose(&e, &[old, new], Modality::Audio),
            Delivery::Sip {
                request_uri: "sip:ivr@10.0.0.9:5090".into(),
                next: NextHop::Direct(Target::Connection(ConnectionId(4))),
                registered: true,
            }
        );
        assert_eq!(
            choose(&e, &[], Modality::Im),
            Delivery::Sip {
                request_uri: "sip:10.0.0.7:5070;transport=tcp".into(),
                next: NextHop::address(Protocol::Tcp, "10.0.0.7:5070".parse().unwrap()),
                registered: false,
            }
        );
        let webhook_only =
            endpoint("webhook = { url = \"http://127.0.0.1:8080/im\", secret = \"s\" }");
        assert_eq!(choose(&webhook_only, &[], Modality::Im), Delivery::Webhook);
        // Calls cannot go to a webhook, and nothing configured means 480.
        assert!(
            matches!(choose(&webhook_only, &[], Modality::Audio), Delivery::Refuse(a) if a.code == 480)
        );
        assert!(
            matches!(choose(&endpoint(""), &[], Modality::Im), Delivery::Refuse(a) if a.code == 480)
        );
    }

    #[test]
    fn what_an_endpoint_cannot_do_is_refused_with_488() {
        let im_only = endpoint("capabilities = [\"im\"]\nsip_target = \"sip:10.0.0.7\"");
        assert!(
            matches!(choose(&im_only, &[], Modality::Audio), Delivery::Refuse(a) if a.code == 488)
        );
        assert!(matches!(
            choose(&im_only, &[], Modality::Im),
            Delivery::Sip { .. }
        ));
    }

    #[test]
    fn an_app_is_known_by_its_registration_flow_or_its_target_host() {
        let e = endpoint("sip_target = \"sip:10.0.0.7:5070\"");
        let udp = binding(
            "sip:ivr@10.0.0.8:5080",
            NextHop::address(Protocol::Udp, "10.0.0.8:5080".parse().unwrap()),
            100,
        );
        let tcp = binding(
            "sip:ivr@10.0.0.9",
            NextHop::Direct(Target::Connection(ConnectionId(4))),
            100,
        );
        let bindings = [udp, tcp];
        assert!(sent_by(&e, &bindings, &origin("10.0.0.8:5080", None)));
        assert!(!sent_by(&e, &bindings, &origin("10.0.0.8:5081", None)));
        assert!(sent_by(&e, &bindings, &origin("10.0.0.9:40000", Some(4))));
        assert!(!sent_by(&e, &bindings, &origin("10.0.0.9:40000", Some(5))));
        assert!(sent_by(&e, &[], &origin("10.0.0.7:6000", None)));
        assert!(!sent_by(&e, &[], &origin("10.0.0.6:5070", None)));
    }
}
