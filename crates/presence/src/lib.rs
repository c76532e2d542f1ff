//! Presence for Porchlight's application endpoints.
//!
//! One canonical state per endpoint ([`model`]), rendered once per change
//! into each wire format ([`document`]), delivered to any number of
//! watchers by the [`notifier`]: subscription dialogs in compact records,
//! a paced and coalescing fan-out, and the Microsoft extensions federated
//! Lync and Skype for Business clients need. Explicit publications
//! ([`publication`]) and received XML ([`xml_in`]) complete it. Nothing
//! here does I/O or reads a clock.

pub mod document;
pub mod model;
pub mod notifier;
pub mod publication;
pub mod table;
pub mod xml_in;

pub use document::Format;
pub use model::{check_length, Availability, Band, Capabilities, Identity, PresenceState, TooLong};
pub use notifier::{
    Authorization, FlowInfo, ListMember, Notifier, NotifierConfig, NotifierStats, NotifyRef,
    Outgoing, RestoreError, SavedSubscription, SavedTarget,
};
pub use publication::{Publications, PublishBounds, PublishError, Published, SavedPublication};
pub use table::SubscriptionId;
pub use xml_in::XmlLimits;

/// The address of record of a SIP URI — `user@host` with the host in lower
/// case — which is what identifies an endpoint or a watcher whatever
/// parameters, port or display form a request uses. None for non-SIP URIs.
pub fn aor(uri: &str) -> Option<String> {
    let uri = uri.trim().trim_start_matches('<').trim_end_matches('>');
    let parsed = porchlight_sip::Uri::parse(uri).ok()?;
    let sip = parsed.sip()?;
    let host = sip.host.to_string().to_ascii_lowercase();
    Some(match sip.user {
        Some(user) => format!("{user}@{host}"),
        None => host,
    })
}

/// Whether two URIs name the same address of record.
pub fn same_aor(a: &str, b: &str) -> bool {
    matches!((aor(a), aor(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    #[test]
    fn aor_ignores_parameters_and_host_case() {
        assert_eq!(
            super::aor("sip:helpdesk@Contoso.COM:5061;transport=tls").as_deref(),
            Some("helpdesk@contoso.com")
        );
        assert_eq!(super::aor("<sips:bot@x.org>").as_deref(), Some("bot@x.org"));
        assert_eq!(super::aor("tel:+123"), None);
        assert!(super::same_aor("sip:a@B.c", "sip:a@b.c;x=1"));
        assert!(!super::same_aor("sip:A@b.c", "sip:a@b.c"));
    }
}
