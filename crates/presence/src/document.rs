//! The documents Porchlight sends: PIDF with RPID and CIPID (RFC 3863,
//! 4480, 4482), Microsoft `msrtc-event-categories`, RLMI multiparts
//! (RFC 4662) and watcher information (RFC 3858). Written straight into a
//! buffer — no DOM — because one fan-out renders each body once and sends
//! it to every watcher.

use std::fmt::Write as _;

use porchlight_sip::Message;

use crate::model::{Identity, PresenceState};

/// The body formats a presence subscription can be served in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// `application/msrtc-event-categories+xml`, what Lync and Skype for Business read.
    MsCategories,
    /// `application/pidf+xml`, the RFC 3856 baseline.
    Pidf,
}

/// Every format, in the order a new subscription prefers them.
pub const FORMATS: [Format; 2] = [Format::MsCategories, Format::Pidf];

impl Format {
    /// The media type.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::MsCategories => "application/msrtc-event-categories+xml",
            Format::Pidf => "application/pidf+xml",
        }
    }

    /// Picks the format for a SUBSCRIBE from its `Accept` header: the first
    /// of [`FORMATS`] the header lists (a wildcard counts for PIDF only, so
    /// `*/*` does not surprise a standard client with a Microsoft body);
    /// PIDF without an `Accept`, as RFC 3856 requires. None means 406.
    pub fn negotiate(request: &Message) -> Option<Format> {
        let ranges: Vec<_> = request.accept().filter_map(Result::ok).collect();
        if ranges.is_empty() {
            return Some(Format::Pidf);
        }
        if ranges
            .iter()
            .any(|r| r.is(Format::MsCategories.content_type()))
        {
            return Some(Format::MsCategories);
        }
        ranges
            .iter()
            .any(|r| r.covers(Format::Pidf.content_type()))
            .then_some(Format::Pidf)
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// Everything a renderer needs about one endpoint at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot<'a> {
    /// Who.
    pub identity: &'a Identity,
    /// Their state.
    pub state: &'a PresenceState,
    /// When the state last changed, as MS `publishTime` (UTC, milliseconds).
    pub publish_time: &'a str,
}

/// Formats a timestamp the way MS categories carry `publishTime`.
pub fn publish_time(at: jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%S%.3f").to_string()
}

/// Escapes text for XML content and attribute values.
pub fn escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => {}
            c => out.push(c),
        }
    }
}

/// Renders one endpoint's document in `format`.
pub fn render(format: Format, snapshot: &Snapshot<'_>) -> String {
    let mut out = String::with_capacity(1024);
    match format {
        Format::Pidf => render_pidf(snapshot, &mut out),
        Format::MsCategories => render_categories(snapshot, &mut out),
    }
    out
}

fn render_pidf(s: &Snapshot<'_>, out: &mut String) {
    let uri = &s.identity.uri;
    out.push_str(concat!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n",
        "<presence xmlns=\"urn:ietf:params:xml:ns:pidf\"",
        " xmlns:dm=\"urn:ietf:params:xml:ns:pidf:data-model\"",
        " xmlns:rpid=\"urn:ietf:params:xml:ns:pidf:rpid\"",
        " xmlns:c=\"urn:ietf:params:xml:ns:pidf:cipid\" entity=\""
    ));
    escape(uri, out);
    out.push_str("\">\n <tuple id=\"t1\"><status><basic>");
    out.push_str(if s.state.availability.is_open() {
        "open"
    } else {
        "closed"
    });
    out.push_str("</basic></status><contact>");
    escape(uri, out);
    out.push_str("</contact></tuple>\n <dm:person id=\"p1\">");
    match s.state.rpid_activity() {
        Some(activity) if s.state.availability.is_open() => {
            out.push_str("<rpid:activities><rpid:");
            // Tokens outside RFC 4480 go in <rpid:other>.
            if RPID_ACTIVITIES.contains(&activity) {
                out.push_str(activity);
                out.push_str("/>");
            } else {
                out.push_str("other>");
                escape(activity, out);
                out.push_str("</rpid:other>");
            }
            out.push_str("</rpid:activities>");
        }
        _ => out.push_str("<rpid:activities/>"),
    }
    if s.state.is_idle() {
        out.push_str("<rpid:user-input>idle</rpid:user-input>");
    }
    out.push_str("<c:display-name>");
    escape(&s.identity.display_name, out);
    out.push_str("</c:display-name>");
    if let Some(note) = pidf_note(s.state) {
        out.push_str("<dm:note>");
        escape(note, out);
        out.push_str("</dm:note>");
    }
    out.push_str("</dm:person>\n</presence>\n");
}

/// RFC 4480 activity elements.
const RPID_ACTIVITIES: &[&str] = &[
    "appointment",
    "away",
    "breakfast",
    "busy",
    "dinner",
    "holiday",
    "in-transit",
    "looking-for-work",
    "meal",
    "meeting",
    "on-the-phone",
    "performance",
    "permanent-absence",
    "playing",
    "presentation",
    "shopping",
    "sleeping",
    "spectator",
    "steering",
    "travel",
    "tv",
    "unknown",
    "vacation",
    "working",
    "worship",
];

fn pidf_note(state: &PresenceState) -> Option<&str> {
    use crate::model::Band;
    if let Some(note) = &state.note {
        return Some(note);
    }
    Some(match state.availability.band() {
        Band::Available | Band::AvailableIdle => "Available",
        Band::Busy | Band::BusyIdle => "Busy",
        Band::DoNotDisturb => "Do not disturb",
        Band::BeRightBack => "Be right back",
        Band::Away => "Away",
        Band::Offline => "Offline",
        Band::Unknown => return None,
    })
}

fn category_open(name: &str, publish_time: &str, out: &mut String) {
    out.push_str(" <category name=\"");
    out.push_str(name);
    out.push_str("\" instance=\"0\" publishTime=\"");
    out.push_str(publish_time);
    out.push_str("\">\n");
}

fn render_categories(s: &Snapshot<'_>, out: &mut String) {
    let availability = s.state.availability.0;
    out.push_str(
        "<categories xmlns=\"http://schemas.microsoft.com/2006/09/sip/categories\" uri=\"",
    );
    escape(&s.identity.uri, out);
    out.push_str("\">\n");
    category_open("state", s.publish_time, out);
    let _ = write!(
        out,
        concat!(
            "  <state xmlns=\"http://schemas.microsoft.com/2006/09/sip/state\"",
            " xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:type=\"aggregateState\">",
            "<availability>{}</availability></state>\n </category>\n"
        ),
        availability
    );
    category_open("contactCard", s.publish_time, out);
    out.push_str("  <contactCard xmlns=\"http://schemas.microsoft.com/2006/09/sip/contactcard\"><identity><name><displayName>");
    escape(&s.identity.display_name, out);
    out.push_str(
        "</displayName></name></identity><automaton>true</automaton></contactCard>\n </category>\n",
    );
    category_open("services", s.publish_time, out);
    out.push_str(
        "  <services xmlns=\"http://schemas.microsoft.com/2006/09/sip/service\"><service uri=\"",
    );
    escape(&s.identity.uri, out);
    out.push_str("\"><capabilities>");
    let caps = s.identity.capabilities;
    for (on, name) in [(caps.text, "text"), (caps.voice, "voice")] {
        if on {
            let _ = write!(
                out,
                "<{name} render=\"true\" capture=\"true\" deviceAvailability=\"{availability}\"/>"
            );
        }
    }
    out.push_str("</capabilities></service></services>\n </category>\n");
    if let Some(note) = &s.state.note {
        category_open("note", s.publish_time, out);
        out.push_str("  <note xmlns=\"http://schemas.microsoft.com/2006/09/sip/note\"><body type=\"personal\" uri=\"\">");
        escape(note, out);
        out.push_str("</body></note>\n </category>\n");
    }
    out.push_str("</categories>\n");
}

/// One resource of a batched (RLMI) notification.
#[derive(Clone, Debug)]
pub enum ListEntry<'a> {
    /// We serve it: its document follows in the multipart.
    Active {
        /// The resource URI.
        uri: &'a str,
        /// Its rendered document.
        body: &'a str,
    },
    /// Not ours: the watcher should subscribe to it directly.
    Resubscribe {
        /// The resource URI.
        uri: &'a str,
    },
    /// Ours once, removed since: terminated, not to be asked for again.
    Gone {
        /// The resource URI.
        uri: &'a str,
    },
}

/// The boundary of every RLMI multipart we send. It contains `'`, which
/// RFC 2046 allows in a boundary and which [`escape`] never leaves in our
/// XML, so no part can contain it.
const BOUNDARY: &str = "porchlight'rlmi'boundary";

/// The Content-Type of [`render_rlmi`] bodies.
pub fn rlmi_content_type() -> String {
    format!(
        "multipart/related;type=\"application/rlmi+xml\";start=\"<rlmi@porchlight>\";boundary=\"{BOUNDARY}\""
    )
}

/// Renders a full-state RLMI `multipart/related` body (RFC 4662 §5) whose
/// resource parts are in `part_type`.
pub fn render_rlmi(
    list_uri: &str,
    version: u32,
    part_type: &str,
    entries: &[ListEntry<'_>],
) -> String {
    let mut out = String::with_capacity(512 + entries.len() * 1024);
    let _ = write!(
        out,
        "--{BOUNDARY}\r\nContent-Type: application/rlmi+xml;charset=UTF-8\r\nContent-ID: <rlmi@porchlight>\r\n\r\n\
         <?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <list xmlns=\"urn:ietf:params:xml:ns:rlmi\" uri=\""
    );
    escape(list_uri, &mut out);
    let _ = writeln!(out, "\" version=\"{version}\" fullState=\"true\">");
    for (i, entry) in entries.iter().enumerate() {
        let (uri, state) = match entry {
            ListEntry::Active { uri, .. } => (uri, "active"),
            ListEntry::Resubscribe { uri } => (uri, "resubscribe"),
            ListEntry::Gone { uri } => (uri, "terminated\" reason=\"noresource"),
        };
        out.push_str(" <resource uri=\"");
        escape(uri, &mut out);
        let _ = write!(out, "\"><instance id=\"{i}\" state=\"{state}\"");
        if let ListEntry::Active { .. } = entry {
            let _ = write!(out, " cid=\"r{i}@porchlight\"");
        }
        out.push_str("/></resource>\n");
    }
    out.push_str("</list>\r\n");
    for (i, entry) in entries.iter().enumerate() {
        if let ListEntry::Active { body, .. } = entry {
            let _ = write!(
                out,
                "--{BOUNDARY}\r\nContent-Type: {part_type}\r\nContent-ID: <r{i}@porchlight>\r\n\r\n{body}\r\n"
            );
        }
    }
    let _ = write!(out, "--{BOUNDARY}--\r\n");
    out
}

/// One watcher in a watcher-information document.
#[derive(Clone, Copy, Debug)]
pub struct WatcherEntry<'a> {
    /// A stable identifier for the watcher's subscription.
    pub id: u64,
    /// The watcher's URI.
    pub uri: &'a str,
    /// `active` or `terminated`.
    pub status: &'a str,
    /// What happened (`subscribe`, `timeout`, `rejected`, …).
    pub event: &'a str,
}

/// Renders a full-state `application/watcherinfo+xml` document (RFC 3858).
pub fn render_watcherinfo(resource: &str, version: u32, watchers: &[WatcherEntry<'_>]) -> String {
    let mut out = String::with_capacity(256 + watchers.len() * 96);
    let _ = write!(
        out,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <watcherinfo xmlns=\"urn:ietf:params:xml:ns:watcherinfo\" version=\"{version}\" state=\"full\">\n\
         <watcher-list resource=\""
    );
    escape(resource, &mut out);
    out.push_str("\" package=\"presence\">\n");
    for w in watchers {
        let _ = write!(
            out,
            " <watcher id=\"w{:x}\" event=\"{}\" status=\"{}\">",
            w.id, w.event, w.status
        );
        escape(w.uri, &mut out);
        out.push_str("</watcher>\n");
    }
    out.push_str("</watcher-list>\n</watcherinfo>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Availability, Capabilities};
    use bytes::Bytes;
    use porchlight_sip::{Framing, Limits};

    fn helpdesk() -> Identity {
        Identity {
            uri: "sip:helpdesk@contoso.com".into(),
            display_name: "Contoso Help Desk".into(),
            capabilities: Capabilities {
                text: true,
                voice: true,
            },
        }
    }

    fn subscribe(accept: &str) -> Message {
        let text = format!(
            "SUBSCRIBE sip:helpdesk@contoso.com SIP/2.0\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK1\r\n\
             From: <sip:alice@fabrikam.com>;tag=1\r\nTo: <sip:helpdesk@contoso.com>\r\nCall-ID: c\r\n\
             CSeq: 1 SUBSCRIBE\r\nEvent: presence\r\n{accept}Content-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(text), Framing::Datagram, &Limits::default()).unwrap()
    }

    #[test]
    fn format_follows_the_accept_preference() {
        assert_eq!(Format::negotiate(&subscribe("")), Some(Format::Pidf));
        let ms = "Accept: application/pidf+xml, application/msrtc-event-categories+xml, multipart/related\r\n";
        assert_eq!(
            Format::negotiate(&subscribe(ms)),
            Some(Format::MsCategories)
        );
        let any = "Accept: */*\r\n";
        assert_eq!(Format::negotiate(&subscribe(any)), Some(Format::Pidf));
        let none = "Accept: text/plain\r\n";
        assert_eq!(Format::negotiate(&subscribe(none)), None);
    }

    #[test]
    fn pidf_matches_the_reference_shape() {
        let id = helpdesk();
        let state = PresenceState::new(Availability::ONLINE);
        let body = render(
            Format::Pidf,
            &Snapshot {
                identity: &id,
                state: &state,
                publish_time: "2026-05-01T10:00:00.000",
            },
        );
        assert!(body.contains("entity=\"sip:helpdesk@contoso.com\""));
        assert!(body.contains("<basic>open</basic>"));
        assert!(body.contains("<c:display-name>Contoso Help Desk</c:display-name>"));
        assert!(body.contains("<dm:note>Available</dm:note>"));
        let away = PresenceState {
            availability: Availability::AWAY,
            activity: None,
            note: Some("Back at <5>".into()),
        };
        let body = render(
            Format::Pidf,
            &Snapshot {
                identity: &id,
                state: &away,
                publish_time: "x",
            },
        );
        assert!(body.contains("<rpid:activities><rpid:away/></rpid:activities>"));
        assert!(body.contains("<dm:note>Back at &lt;5&gt;</dm:note>"));
        let offline = PresenceState::new(Availability::OFFLINE);
        let body = render(
            Format::Pidf,
            &Snapshot {
                identity: &id,
                state: &offline,
                publish_time: "x",
            },
        );
        assert!(body.contains("<basic>closed</basic>"));
    }

    #[test]
    fn categories_carry_availability_and_automaton() {
        let id = helpdesk();
        let state = PresenceState::new(Availability::ONLINE);
        let body = render(
            Format::MsCategories,
            &Snapshot {
                identity: &id,
                state: &state,
                publish_time: "2026-05-01T10:00:00.000",
            },
        );
        assert!(body.contains("xsi:type=\"aggregateState\"><availability>3500</availability>"));
        assert!(body.contains("<automaton>true</automaton>"));
        assert!(
            body.contains("<text render=\"true\" capture=\"true\" deviceAvailability=\"3500\"/>")
        );
        assert!(
            !body.contains("container="),
            "remote watchers never see containers"
        );
        assert!(!body.contains("name=\"note\""));
        assert_eq!(
            publish_time(jiff::Timestamp::from_second(1_777_629_600).unwrap()),
            "2026-05-01T10:00:00.000"
        );
    }

    #[test]
    fn rlmi_lists_every_resource_and_one_part_per_active_one() {
        let body = render_rlmi(
            "sip:alice@fabrikam.com",
            3,
            "application/msrtc-event-categories+xml",
            &[
                ListEntry::Active {
                    uri: "sip:helpdesk@contoso.com",
                    body: "<categories/>",
                },
                ListEntry::Resubscribe {
                    uri: "sip:bob@elsewhere.com",
                },
            ],
        );
        assert!(body.contains("version=\"3\" fullState=\"true\""));
        assert!(body.contains("state=\"active\" cid=\"r0@porchlight\""));
        assert!(body.contains(
            "<resource uri=\"sip:bob@elsewhere.com\"><instance id=\"1\" state=\"resubscribe\"/>"
        ));
        assert_eq!(body.matches("--porchlight'rlmi'boundary\r\n").count(), 2);
        assert!(body.ends_with("--porchlight'rlmi'boundary--\r\n"));
    }
}
