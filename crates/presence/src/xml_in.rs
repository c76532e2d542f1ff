//! The documents Porchlight receives: PIDF publications, Microsoft
//! category publications (`SERVICE`) and batched subscriptions. Read
//! leniently — clients in the wild bend the schemas, so elements are matched
//! by local name whatever their namespace — but with hard limits: bounded
//! size and depth, no DTD, no entities beyond XML's five.

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use crate::model::{Availability, PresenceState};

/// Bounds on a received XML body.
#[derive(Clone, Copy, Debug)]
pub struct XmlLimits {
    /// Largest body.
    pub max_bytes: usize,
    /// Deepest element nesting.
    pub max_depth: usize,
    /// Most repeated items (publications, resources) in one document.
    pub max_items: usize,
}

impl Default for XmlLimits {
    fn default() -> Self {
        XmlLimits {
            max_bytes: 64 * 1024,
            max_depth: 32,
            max_items: 1000,
        }
    }
}

/// Why a body was refused; the text goes into the 400 reason phrase.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// Beyond `max_bytes`.
    #[error("XML body larger than {0} bytes")]
    TooLarge(usize),
    /// Beyond `max_depth`.
    #[error("XML nested deeper than {0} levels")]
    TooDeep(usize),
    /// Beyond `max_items`.
    #[error("more than {0} items in one XML document")]
    TooMany(usize),
    /// A DOCTYPE, which could declare entities.
    #[error("XML with a DOCTYPE is not accepted")]
    Doctype,
    /// Not well-formed.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// Well-formed, but without what the document type requires.
    #[error("XML document lacks {0}")]
    Missing(&'static str),
}

/// A pull reader that enforces [`XmlLimits`] and tracks the path of local names.
struct Walker<'a> {
    reader: Reader<&'a [u8]>,
    limits: XmlLimits,
    path: Vec<Vec<u8>>,
}

/// What the walker hands out.
enum Step<'a> {
    Open(BytesStart<'a>),
    Text(String),
    Close,
    End,
}

impl<'a> Walker<'a> {
    fn new(body: &'a [u8], limits: XmlLimits) -> Result<Walker<'a>, XmlError> {
        if body.len() > limits.max_bytes {
            return Err(XmlError::TooLarge(limits.max_bytes));
        }
        let mut reader = Reader::from_reader(body);
        reader.config_mut().trim_text(true);
        Ok(Walker {
            reader,
            limits,
            path: Vec::new(),
        })
    }

    /// The local name of the innermost open element.
    fn current(&self) -> &[u8] {
        self.path.last().map(Vec::as_slice).unwrap_or_default()
    }

    fn inside(&self, local: &[u8]) -> bool {
        self.path.iter().any(|p| p.as_slice() == local)
    }

    fn next(&mut self) -> Result<Step<'a>, XmlError> {
        loop {
            let event = self
                .reader
                .read_event()
                .map_err(|e| XmlError::Malformed(e.to_string()))?;
            return Ok(match event {
                Event::Start(e) => {
                    if self.path.len() >= self.limits.max_depth {
                        return Err(XmlError::TooDeep(self.limits.max_depth));
                    }
                    self.path.push(e.local_name().as_ref().to_vec());
                    Step::Open(e)
                }
                Event::Empty(e) => Step::Open(e),
                Event::End(_) => {
                    self.path.pop();
                    Step::Close
                }
                Event::Text(t) => Step::Text(
                    t.unescape()
                        .map_err(|e| XmlError::Malformed(e.to_string()))?
                        .into_owned(),
                ),
                Event::CData(t) => Step::Text(String::from_utf8_lossy(&t).into_owned()),
                Event::DocType(_) => return Err(XmlError::Doctype),
                Event::Eof => Step::End,
                Event::Decl(_) | Event::PI(_) | Event::Comment(_) => continue,
            });
        }
    }
}

fn attr(e: &BytesStart<'_>, local: &[u8]) -> Option<String> {
    e.attributes().flatten().find_map(|a| {
        (a.key.local_name().as_ref() == local)
            .then(|| a.unescape_value().ok().map(|v| v.into_owned()))
            .flatten()
    })
}

/// Reads a PIDF document (RFC 3863, with RPID activities and notes) into
/// our state: `closed` is offline; `open` is online, refined by the RPID
/// activity (busy, away, …) and `user-input` idle.
pub fn parse_pidf(body: &[u8], limits: XmlLimits) -> Result<PresenceState, XmlError> {
    let mut w = Walker::new(body, limits)?;
    let mut saw_presence = false;
    let mut open: Option<bool> = None;
    let mut activity: Option<String> = None;
    let mut idle = false;
    let mut note: Option<String> = None;
    loop {
        match w.next()? {
            Step::Open(e) => {
                let name = e.local_name();
                let name = name.as_ref();
                if name == b"presence" {
                    saw_presence = true;
                } else if w.inside(b"activities") && activity.is_none() && name != b"activities" {
                    let token = String::from_utf8_lossy(name).into_owned();
                    if token != "unknown" && token != "other" {
                        activity = Some(token);
                    }
                }
            }
            Step::Text(text) => match w.current() {
                b"basic" => {
                    let is_open = text.eq_ignore_ascii_case("open");
                    open = Some(open.unwrap_or(false) || is_open);
                }
                b"user-input" => idle = text.eq_ignore_ascii_case("idle"),
                b"other" if w.inside(b"activities") && activity.is_none() => activity = Some(text),
                b"note" if note.is_none() => note = Some(text),
                _ => {}
            },
            Step::Close => {}
            Step::End => break,
        }
    }
    if !saw_presence {
        return Err(XmlError::Missing("a <presence> element"));
    }
    let availability = match (open, activity.as_deref()) {
        (Some(false), _) => Availability::OFFLINE,
        (_, Some("busy" | "on-the-phone" | "meeting" | "presentation" | "performance")) => {
            Availability(if idle { 7500 } else { 6500 })
        }
        (_, Some("away" | "vacation" | "holiday" | "permanent-absence" | "sleeping")) => {
            Availability::AWAY
        }
        _ if idle => Availability(5000),
        (Some(true), _) => Availability::ONLINE,
        (None, _) => Availability(0),
    };
    // A bare "busy"/"away" is already said by the availability band.
    let activity = activity.filter(|a| a != "busy" && a != "away");
    Ok(PresenceState {
        availability,
        activity,
        note,
    })
}

/// One `<publication>` of a Microsoft `SERVICE` category publication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CategoryPublication {
    /// `state`, `note`, ….
    pub category: String,
    /// The instance number.
    pub instance: u64,
    /// The container the instance is published to.
    pub container: u32,
    /// The version the publisher believes is current.
    pub version: u32,
    /// Zero removes the publication.
    pub expires: Option<u32>,
    /// For `state`: the availability published.
    pub availability: Option<Availability>,
    /// For `state`: the activity token, if any.
    pub activity: Option<String>,
    /// For `note`: the text.
    pub note: Option<String>,
}

/// Reads an `application/msrtc-category-publish+xml` body.
pub fn parse_category_publish(
    body: &[u8],
    limits: XmlLimits,
) -> Result<Vec<CategoryPublication>, XmlError> {
    let mut w = Walker::new(body, limits)?;
    let mut out: Vec<CategoryPublication> = Vec::new();
    loop {
        match w.next()? {
            Step::Open(e) if e.local_name().as_ref() == b"publication" => {
                if out.len() >= limits.max_items {
                    return Err(XmlError::TooMany(limits.max_items));
                }
                let number = |name: &[u8]| attr(&e, name).and_then(|v| v.trim().parse().ok());
                out.push(CategoryPublication {
                    category: attr(&e, b"categoryName")
                        .ok_or(XmlError::Missing("categoryName on a publication"))?,
                    instance: number(b"instance").unwrap_or(0),
                    container: number(b"container").map(|v: u64| v as u32).unwrap_or(0),
                    version: number(b"version").map(|v: u64| v as u32).unwrap_or(0),
                    expires: number(b"expires").map(|v: u64| v as u32),
                    availability: None,
                    activity: None,
                    note: None,
                });
            }
            Step::Open(e) if e.local_name().as_ref() == b"activity" => {
                if let (Some(p), Some(token)) = (out.last_mut(), attr(&e, b"token")) {
                    p.activity = Some(token);
                }
            }
            Step::Text(text) => {
                let Some(p) = out.last_mut() else { continue };
                match w.current() {
                    b"availability" => p.availability = text.trim().parse().ok().map(Availability),
                    b"body" if w.inside(b"note") => p.note = Some(text),
                    _ => {}
                }
            }
            Step::Open(..) | Step::Close => {}
            Step::End => break,
        }
    }
    if out.is_empty() {
        return Err(XmlError::Missing("a <publication> element"));
    }
    Ok(out)
}

/// A Microsoft batched subscription (`application/msrtc-adrl-categorylist+xml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchSubscribe {
    /// The list URI (the subscriber's own).
    pub uri: Option<String>,
    /// The resources to subscribe to, in order.
    pub resources: Vec<String>,
    /// The categories asked for.
    pub categories: Vec<String>,
}

/// Reads a batched-subscription body.
pub fn parse_batch_subscribe(body: &[u8], limits: XmlLimits) -> Result<BatchSubscribe, XmlError> {
    let mut w = Walker::new(body, limits)?;
    let mut out = BatchSubscribe {
        uri: None,
        resources: Vec::new(),
        categories: Vec::new(),
    };
    let mut saw_batch = false;
    loop {
        match w.next()? {
            Step::Open(e) => match e.local_name().as_ref() {
                b"batchSub" => {
                    saw_batch = true;
                    out.uri = attr(&e, b"uri");
                }
                b"resource" => {
                    if out.resources.len() >= limits.max_items {
                        return Err(XmlError::TooMany(limits.max_items));
                    }
                    if let Some(uri) = attr(&e, b"uri") {
                        out.resources.push(uri);
                    }
                }
                b"category" => {
                    if let Some(name) = attr(&e, b"name") {
                        if out.categories.len() < limits.max_items {
                            out.categories.push(name);
                        }
                    }
                }
                _ => {}
            },
            Step::Text(_) | Step::Close => {}
            Step::End => break,
        }
    }
    if !saw_batch {
        return Err(XmlError::Missing("a <batchSub> element"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidf_open_closed_and_activities() {
        let doc = br#"<?xml version="1.0"?>
<presence xmlns="urn:ietf:params:xml:ns:pidf" xmlns:rpid="urn:ietf:params:xml:ns:pidf:rpid"
 xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model" entity="sip:bot@contoso.com">
 <tuple id="a"><status><basic>open</basic></status></tuple>
 <dm:person id="p"><rpid:activities><rpid:on-the-phone/></rpid:activities><dm:note>In a call &amp; busy</dm:note></dm:person>
</presence>"#;
        let s = parse_pidf(doc, XmlLimits::default()).unwrap();
        assert_eq!(s.availability, Availability::BUSY);
        assert_eq!(s.activity.as_deref(), Some("on-the-phone"));
        assert_eq!(s.note.as_deref(), Some("In a call & busy"));
        let closed = br#"<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="pres:x@y"><tuple id="a"><status><basic>closed</basic></status></tuple></presence>"#;
        assert_eq!(
            parse_pidf(closed, XmlLimits::default())
                .unwrap()
                .availability,
            Availability::OFFLINE
        );
    }

    #[test]
    fn pidf_is_read_leniently() {
        // Seen from public providers: entity without a scheme, display-name at the top, no namespaces.
        let doc = br#"<presence entity="bot@contoso.com"><display-name>Bot</display-name><tuple><status><basic>open</basic></status><note>here</note></tuple></presence>"#;
        let s = parse_pidf(doc, XmlLimits::default()).unwrap();
        assert_eq!(s.availability, Availability::ONLINE);
        assert_eq!(s.note.as_deref(), Some("here"));
    }

    #[test]
    fn hostile_xml_is_refused() {
        let bomb = br#"<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><presence>&lol;</presence>"#;
        assert_eq!(
            parse_pidf(bomb, XmlLimits::default()),
            Err(XmlError::Doctype)
        );
        let deep = format!(
            "<presence>{}{}</presence>",
            "<a>".repeat(40),
            "</a>".repeat(40)
        );
        assert_eq!(
            parse_pidf(deep.as_bytes(), XmlLimits::default()),
            Err(XmlError::TooDeep(32))
        );
        let limits = XmlLimits {
            max_bytes: 10,
            ..XmlLimits::default()
        };
        assert_eq!(
            parse_pidf(b"<presence></presence>", limits),
            Err(XmlError::TooLarge(10))
        );
        assert!(matches!(
            parse_pidf(b"<presence><tuple></presence>", XmlLimits::default()),
            Err(XmlError::Malformed(_))
        ));
        assert!(matches!(
            parse_pidf(b"<presence>&undefined;</presence>", XmlLimits::default()),
            Err(XmlError::Malformed(_))
        ));
        assert_eq!(
            parse_pidf(b"<other/>", XmlLimits::default()),
            Err(XmlError::Missing("a <presence> element"))
        );
    }

    #[test]
    fn category_publication() {
        let doc = br#"<publish xmlns="http://schemas.microsoft.com/2006/09/sip/rich-presence"><publications uri="sip:bot@contoso.com">
<publication categoryName="state" instance="1" container="2" version="3" expireType="static">
 <state xmlns="http://schemas.microsoft.com/2006/09/sip/state" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:type="machineState"><availability>6500</availability><activity token="in-a-meeting"/></state>
</publication>
<publication categoryName="note" instance="0" container="400" version="1" expireType="static" expires="0">
 <note xmlns="http://schemas.microsoft.com/2006/09/sip/note"><body type="personal" uri="">Lunch</body></note>
</publication></publications></publish>"#;
        let p = parse_category_publish(doc, XmlLimits::default()).unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].category, "state");
        assert_eq!(p[0].availability, Some(Availability::BUSY));
        assert_eq!(p[0].activity.as_deref(), Some("in-a-meeting"));
        assert_eq!((p[0].instance, p[0].container, p[0].version), (1, 2, 3));
        assert_eq!(p[1].note.as_deref(), Some("Lunch"));
        assert_eq!(p[1].expires, Some(0));
    }

    #[test]
    fn batch_subscription() {
        let doc = br#"<batchSub xmlns="http://schemas.microsoft.com/2006/01/sip/batch-subscribe" uri="sip:alice@fabrikam.com" name="">
<action name="subscribe" id="63792024"><adhocList><resource uri="sip:helpdesk@contoso.com"/><resource uri="sip:bob@other.com"/></adhocList>
<categoryList xmlns="http://schemas.microsoft.com/2006/09/sip/categorylist"><category name="state"/><category name="contactCard"/></categoryList></action></batchSub>"#;
        let b = parse_batch_subscribe(doc, XmlLimits::default()).unwrap();
        assert_eq!(b.uri.as_deref(), Some("sip:alice@fabrikam.com"));
        assert_eq!(
            b.resources,
            ["sip:helpdesk@contoso.com", "sip:bob@other.com"]
        );
        assert_eq!(b.categories, ["state", "contactCard"]);
    }
}
