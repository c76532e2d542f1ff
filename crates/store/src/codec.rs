//! The byte layout of saved records: a version byte, then fixed-width
//! little-endian integers and length-prefixed UTF-8 strings. A million
//! subscriptions decode in well under a second, which is what bounds the
//! restart time; a self-describing format would cost several times that.

use porchlight_endpoints::SavedBinding;
use porchlight_presence::xml_in::CategoryPublication;
use porchlight_presence::{
    Availability, FlowInfo, Format, ListMember, PresenceState, SavedPublication, SavedSubscription,
    SavedTarget, SubscriptionId,
};

/// The layout version written first in every subscription value.
const SUBSCRIPTION_LAYOUT: u8 = 2;
/// The layout before the watcher's tag was kept; still read.
const SUBSCRIPTION_LAYOUT_UNTAGGED: u8 = 1;
/// The layout version written first in every registration value.
const REGISTRATION_LAYOUT: u8 = 1;
/// The layout version written first in every publications value.
const PUBLICATION_LAYOUT: u8 = 1;

pub use porchlight_endpoints::SavedRegistration;

/// Why a stored value could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The value ends before its last field.
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A layout this build does not know.
    #[error("unknown layout version {0}")]
    Layout(u8),
    /// A string is not UTF-8.
    #[error("a string at byte {0} is not UTF-8")]
    NotUtf8(usize),
    /// An enumeration holds a value outside its range.
    #[error("field {field} holds {value}, which this build does not know")]
    Unknown {
        /// Which field.
        field: &'static str,
        /// The value found.
        value: u8,
    },
    /// Bytes are left over after the last field.
    #[error("{0} bytes left over after the last field")]
    Trailing(usize),
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.0.extend_from_slice(s.as_bytes());
    }
    fn opt_str(&mut self, s: Option<&str>) {
        self.u8(u8::from(s.is_some()));
        if let Some(s) = s {
            self.str(s);
        }
    }
    fn opt_u32(&mut self, v: Option<u32>) {
        self.u8(u8::from(v.is_some()));
        if let Some(v) = v {
            self.u32(v);
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(DecodeError::Truncated(self.at))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
    fn string(&mut self) -> Result<String, DecodeError> {
        let len = self.u32()? as usize;
        let at = self.at;
        let b = self.take(len)?;
        String::from_utf8(b.to_vec()).map_err(|_| DecodeError::NotUtf8(at))
    }
    fn flag(&mut self, field: &'static str) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(DecodeError::Unknown { field, value }),
        }
    }
    fn opt_string(&mut self, field: &'static str) -> Result<Option<String>, DecodeError> {
        if self.flag(field)? {
            Ok(Some(self.string()?))
        } else {
            Ok(None)
        }
    }
    fn opt_u32(&mut self, field: &'static str) -> Result<Option<u32>, DecodeError> {
        if self.flag(field)? {
            Ok(Some(self.u32()?))
        } else {
            Ok(None)
        }
    }
    fn finish(self) -> Result<(), DecodeError> {
        match self.bytes.len() - self.at {
            0 => Ok(()),
            n => Err(DecodeError::Trailing(n)),
        }
    }
}

const PRESENCE: u8 = 0;
const WATCHER_INFO: u8 = 1;
const LIST: u8 = 2;

/// Writes a subscription whose flow the node has put in words.
pub fn encode_subscription(s: &SavedSubscription<String>) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    w.u8(SUBSCRIPTION_LAYOUT);
    w.u32(s.id.index);
    w.u32(s.id.generation);
    match &s.target {
        SavedTarget::Presence(uri) => {
            w.u8(PRESENCE);
            w.str(uri);
        }
        SavedTarget::WatcherInfo(uri) => {
            w.u8(WATCHER_INFO);
            w.str(uri);
        }
        SavedTarget::List(members) => {
            w.u8(LIST);
            w.u32(members.len() as u32);
            for m in members {
                match m {
                    ListMember::Endpoint(uri) => {
                        w.u8(1);
                        w.str(uri);
                    }
                    ListMember::Other(uri) => {
                        w.u8(0);
                        w.str(uri);
                    }
                }
            }
        }
    }
    w.u8(match s.format {
        Format::MsCategories => 0,
        Format::Pidf => 1,
    });
    w.u8(u8::from(s.benotify));
    for field in [&s.call_id, &s.remote_tag, &s.remote_uri, &s.remote_target] {
        w.str(field);
    }
    w.u64(s.expires_at);
    w.u32(s.local_cseq);
    w.u32(s.remote_cseq);
    match &s.route_set {
        Some(r) => {
            w.u8(1);
            w.str(r);
        }
        None => w.u8(0),
    }
    write_flow(&mut w, &s.flow);
    match &s.tag {
        Some(tag) => {
            w.u8(1);
            w.str(tag);
        }
        None => w.u8(0),
    }
    w.0
}

fn write_flow(w: &mut Writer, flow: &FlowInfo<String>) {
    w.str(&flow.flow);
    w.u8(u8::from(flow.reliable));
    w.str(&flow.via);
    w.str(&flow.contact);
}

fn read_flow(r: &mut Reader<'_>) -> Result<FlowInfo<String>, DecodeError> {
    Ok(FlowInfo {
        flow: r.string()?,
        reliable: r.u8()? != 0,
        via: r.string()?,
        contact: r.string()?,
    })
}

/// Writes one endpoint's registered contacts.
pub fn encode_registrations(bindings: &[SavedRegistration]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(128 * bindings.len() + 5));
    w.u8(REGISTRATION_LAYOUT);
    w.u32(bindings.len() as u32);
    for b in bindings {
        w.str(&b.contact);
        w.u64(b.expires_at);
        w.str(&b.call_id);
        w.u32(b.cseq);
        write_flow(&mut w, &b.flow);
    }
    w.0
}

/// Reads back what [`encode_registrations`] wrote.
pub fn decode_registrations(bytes: &[u8]) -> Result<Vec<SavedRegistration>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let layout = r.u8()?;
    if layout != REGISTRATION_LAYOUT {
        return Err(DecodeError::Layout(layout));
    }
    let count = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(SavedBinding {
            contact: r.string()?,
            expires_at: r.u64()?,
            call_id: r.string()?,
            cseq: r.u32()?,
            flow: read_flow(&mut r)?,
        });
    }
    r.finish()?;
    Ok(out)
}

/// Writes one endpoint's publications.
pub fn encode_publications(publications: &[SavedPublication]) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(96 * publications.len() + 5));
    w.u8(PUBLICATION_LAYOUT);
    w.u32(publications.len() as u32);
    for p in publications {
        match p {
            SavedPublication::Publish {
                etag,
                state,
                expires_at,
                sequence,
            } => {
                w.u8(0);
                w.str(etag);
                w.u32(state.availability.0);
                w.opt_str(state.activity.as_deref());
                w.opt_str(state.note.as_deref());
                w.u64(*expires_at);
                w.u64(*sequence);
            }
            SavedPublication::Category {
                publication: c,
                version,
                sequence,
            } => {
                w.u8(1);
                w.str(&c.category);
                w.u64(c.instance);
                w.u32(c.container);
                w.u32(c.version);
                w.opt_u32(c.expires);
                w.opt_u32(c.availability.map(|a| a.0));
                w.opt_str(c.activity.as_deref());
                w.opt_str(c.note.as_deref());
                w.u32(*version);
                w.u64(*sequence);
            }
        }
    }
    w.0
}

/// Reads back what [`encode_publications`] wrote.
pub fn decode_publications(bytes: &[u8]) -> Result<Vec<SavedPublication>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let layout = r.u8()?;
    if layout != PUBLICATION_LAYOUT {
        return Err(DecodeError::Layout(layout));
    }
    let count = r.u32()?;
    let mut out = Vec::new();
    for _ in 0..count {
        let publication = match r.u8()? {
            0 => SavedPublication::Publish {
                etag: r.string()?,
                state: PresenceState {
                    availability: Availability(r.u32()?),
                    activity: r.opt_string("activity")?,
                    note: r.opt_string("note")?,
                },
                expires_at: r.u64()?,
                sequence: r.u64()?,
            },
            1 => SavedPublication::Category {
                publication: CategoryPublication {
                    category: r.string()?,
                    instance: r.u64()?,
                    container: r.u32()?,
                    version: r.u32()?,
                    expires: r.opt_u32("expires")?,
                    availability: r.opt_u32("availability")?.map(Availability),
                    activity: r.opt_string("activity")?,
                    note: r.opt_string("note")?,
                },
                version: r.u32()?,
                sequence: r.u64()?,
            },
            value => {
                return Err(DecodeError::Unknown {
                    field: "publication kind",
                    value,
                })
            }
        };
        out.push(publication);
    }
    r.finish()?;
    Ok(out)
}

/// Reads back what [`encode_subscription`] wrote.
pub fn decode_subscription(bytes: &[u8]) -> Result<SavedSubscription<String>, DecodeError> {
    let mut r = Reader { bytes, at: 0 };
    let layout = r.u8()?;
    if layout != SUBSCRIPTION_LAYOUT && layout != SUBSCRIPTION_LAYOUT_UNTAGGED {
        return Err(DecodeError::Layout(layout));
    }
    let id = SubscriptionId {
        index: r.u32()?,
        generation: r.u32()?,
    };
    let target = match r.u8()? {
        PRESENCE => SavedTarget::Presence(r.string()?),
        WATCHER_INFO => SavedTarget::WatcherInfo(r.string()?),
        LIST => {
            let count = r.u32()?;
            let mut members = Vec::new();
            for _ in 0..count {
                members.push(match r.u8()? {
                    1 => ListMember::Endpoint(r.string()?),
                    0 => ListMember::Other(r.string()?),
                    value => {
                        return Err(DecodeError::Unknown {
                            field: "list member",
                            value,
                        })
                    }
                });
            }
            SavedTarget::List(members)
        }
        value => {
            return Err(DecodeError::Unknown {
                field: "target",
                value,
            })
        }
    };
    let format = match r.u8()? {
        0 => Format::MsCategories,
        1 => Format::Pidf,
        value => {
            return Err(DecodeError::Unknown {
                field: "format",
                value,
            })
        }
    };
    let benotify = r.u8()? != 0;
    let call_id = r.string()?;
    let remote_tag = r.string()?;
    let remote_uri = r.string()?;
    let remote_target = r.string()?;
    let expires_at = r.u64()?;
    let local_cseq = r.u32()?;
    let remote_cseq = r.u32()?;
    let route_set = match r.u8()? {
        0 => None,
        _ => Some(r.string()?),
    };
    let flow = read_flow(&mut r)?;
    let tag = match layout {
        SUBSCRIPTION_LAYOUT_UNTAGGED => None,
        _ => match r.u8()? {
            0 => None,
            _ => Some(r.string()?),
        },
    };
    r.finish()?;
    Ok(SavedSubscription {
        id,
        target,
        format,
        benotify,
        call_id,
        remote_tag,
        remote_uri,
        remote_target,
        expires_at,
        local_cseq,
        remote_cseq,
        route_set,
        flow,
        tag,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A subscription with every optional part filled in.
    pub(crate) fn sample(index: u32) -> SavedSubscription<String> {
        SavedSubscription {
            id: SubscriptionId {
                index,
                generation: 3,
            },
            target: SavedTarget::List(vec![
                ListMember::Endpoint("sip:helpdesk@contoso.com".into()),
                ListMember::Other("sip:bob@fabrikam.com".into()),
            ]),
            format: Format::MsCategories,
            benotify: true,
            call_id: format!("call-{index}"),
            remote_tag: "f1".into(),
            remote_uri: "sip:w1@fabrikam.com".into(),
            remote_target: "sip:w1@10.0.0.1;transport=tls".into(),
            expires_at: 1_800_000_600,
            local_cseq: 7,
            remote_cseq: 2,
            route_set: Some("<sip:edge.fabrikam.com;lr>".into()),
            flow: FlowInfo {
                flow: "partner fabrikam.com".into(),
                reliable: true,
                via: "SIP/2.0/TLS 192.0.2.1:5061".into(),
                contact: "<sip:192.0.2.1:5061;transport=tls>".into(),
            },
            tag: Some("n2-0.5.3.1f2e".into()),
        }
    }

    #[test]
    fn round_trips() {
        let s = sample(5);
        assert_eq!(decode_subscription(&encode_subscription(&s)).unwrap(), s);
        let plain = SavedSubscription {
            target: SavedTarget::Presence("sip:helpdesk@contoso.com".into()),
            route_set: None,
            format: Format::Pidf,
            ..s
        };
        assert_eq!(
            decode_subscription(&encode_subscription(&plain)).unwrap(),
            plain
        );
    }

    #[test]
    fn registrations_round_trip() {
        let bindings = vec![SavedBinding {
            contact: "sip:ivr@10.0.0.7:5080".into(),
            expires_at: 1_800_000_300,
            call_id: "reg-1".into(),
            cseq: 12,
            flow: sample(0).flow,
        }];
        let bytes = encode_registrations(&bindings);
        assert_eq!(decode_registrations(&bytes).unwrap(), bindings);
        assert!(matches!(
            decode_registrations(&bytes[..bytes.len() - 1]),
            Err(DecodeError::Truncated(_))
        ));
    }

    #[test]
    fn publications_round_trip() {
        let mut state = PresenceState::new(Availability(6500));
        state.activity = Some("on-the-phone".into());
        let saved = vec![
            SavedPublication::Publish {
                etag: "a1b2".into(),
                state,
                expires_at: 1_700_000_600,
                sequence: 3,
            },
            SavedPublication::Category {
                publication: CategoryPublication {
                    category: "note".into(),
                    instance: 7,
                    container: 400,
                    version: 2,
                    expires: None,
                    availability: None,
                    activity: None,
                    note: Some("Back at 3 ✓".into()),
                },
                version: 3,
                sequence: 4,
            },
        ];
        let bytes = encode_publications(&saved);
        assert_eq!(decode_publications(&bytes).unwrap(), saved);
        assert!(decode_publications(&bytes[..bytes.len() - 1]).is_err());
        let mut bad = bytes.clone();
        bad[5] = 9;
        assert!(matches!(
            decode_publications(&bad),
            Err(DecodeError::Unknown { .. })
        ));
    }

    #[test]
    fn damage_is_reported_not_guessed() {
        let bytes = encode_subscription(&sample(1));
        for cut in [0, 1, 9, bytes.len() - 1] {
            assert!(matches!(
                decode_subscription(&bytes[..cut]),
                Err(DecodeError::Truncated(_))
            ));
        }
        let mut newer = bytes.clone();
        newer[0] = 9;
        assert_eq!(decode_subscription(&newer), Err(DecodeError::Layout(9)));
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(decode_subscription(&longer), Err(DecodeError::Trailing(1)));
        let mut bad_target = bytes;
        bad_target[9] = 7;
        assert!(matches!(
            decode_subscription(&bad_target),
            Err(DecodeError::Unknown {
                field: "target",
                value: 7
            })
        ));
    }
}
