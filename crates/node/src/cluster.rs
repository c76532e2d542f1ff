//! What the nodes of a cluster tell each other, without I/O: each node's
//! own sources for an endpoint (its registrations and its apps'
//! publications) and the admin's setting, as the driver carries them
//! through Redis. Watchers are never shared: every node merges what all
//! nodes say of an endpoint into one state and notifies only the watchers
//! it holds, so one change seen by many nodes is still one NOTIFY per
//! watcher.

use porchlight_presence::{Availability, PresenceState};
use serde::{Deserialize, Serialize};

/// A node's number in its cluster (`[cluster] node_id`).
pub type NodeId = u16;

/// How long this node may still notify its watchers, as its cluster lease
/// was last renewed. Past it, another node may be taking the watchers
/// over, so this node sends no NOTIFY (not even a retransmission under
/// way) and takes no new subscription: it is fenced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lease {
    /// Until this moment (monotonic), unless renewed before.
    Until(std::time::Instant),
    /// Given up (an admin drains the node): never again.
    GivenUp,
}

impl Lease {
    /// Whether a node holding this lease is fenced at `now`.
    pub fn fenced(self, now: std::time::Instant) -> bool {
        match self {
            Lease::Until(until) => now > until,
            Lease::GivenUp => true,
        }
    }

    /// When, if ever, the lease runs out without a renewal: the moment
    /// the node must fence itself, though nothing else happens then.
    pub fn runs_out(self, now: std::time::Instant) -> Option<std::time::Instant> {
        match self {
            Lease::Until(until) if now <= until => {
                Some(until + std::time::Duration::from_millis(1))
            }
            _ => None,
        }
    }
}

/// What one node's own sources say of an endpoint. Each bound is wall
/// time, so an entry left by a node that died ages out on every other.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Contribution {
    /// Until when (Unix seconds) a contact registered on the node keeps
    /// the endpoint registered; None when none is.
    pub registered_until: Option<i64>,
    /// The node's newest live publication for the endpoint.
    pub published: Option<SharedPublication>,
}

/// A publication as the other nodes see it: the state, and when it was
/// made, so the newest across all nodes wins as it does on one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedPublication {
    /// The published state.
    pub state: PresenceState,
    /// When the node first saw this state published (Unix µs).
    pub at: i64,
    /// Until when (Unix seconds) it lasts; None until withdrawn (a
    /// SERVICE category publication does not expire).
    pub until: Option<i64>,
}

impl Contribution {
    /// Whether the two say the same, whenever they were made.
    pub fn same_as(&self, other: &Contribution) -> bool {
        self.registered_until == other.registered_until
            && match (&self.published, &other.published) {
                (Some(a), Some(b)) => a.state == b.state && a.until == b.until,
                (None, None) => true,
                _ => false,
            }
    }

    /// Whether a contact of this entry is registered at `unix` seconds.
    pub fn registered_at(&self, unix: i64) -> bool {
        self.registered_until.is_some_and(|until| until > unix)
    }

    /// The publication, if it is still live at `unix` seconds.
    pub fn published_at(&self, unix: i64) -> Option<&SharedPublication> {
        self.published
            .as_ref()
            .filter(|p| p.until.is_none_or(|until| until > unix))
    }

    /// The earliest moment (Unix seconds) a part of this entry lapses.
    pub fn next_lapse(&self) -> Option<i64> {
        let published = self.published.as_ref().and_then(|p| p.until);
        self.registered_until.into_iter().chain(published).min()
    }
}

/// Which part of an endpoint's shared sources an entry is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    /// A node's own sources.
    Node(NodeId),
    /// The admin's setting, which wins over every source, whichever node
    /// it was set on.
    Admin,
}

impl Field {
    /// Its name in the shared record (`n3`, `admin`).
    pub fn key(self) -> String {
        match self {
            Field::Node(node) => format!("n{node}"),
            Field::Admin => "admin".into(),
        }
    }

    /// The field a record's name stands for; None for names that carry no
    /// source (the record's revision and URI).
    pub fn parse(key: &str) -> Option<Field> {
        if key == "admin" {
            return Some(Field::Admin);
        }
        key.strip_prefix('n')?.parse().ok().map(Field::Node)
    }
}

/// An entry's value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A node's own sources.
    Node(Contribution),
    /// The admin's setting.
    Admin(PresenceState),
}

/// One change to share with the other nodes: an entry of an endpoint's
/// shared sources, set or (None) withdrawn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The endpoint's canonical URI, which every node resolves alike.
    pub endpoint: String,
    /// Which entry.
    pub field: Field,
    /// Its value now; None withdraws it.
    pub value: Option<Value>,
}

/// What the other nodes said of an endpoint, as the driver read it from
/// Redis: some entries (an event), or all of them (`complete`: a reload,
/// where an entry not listed is withdrawn).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shared {
    /// The endpoint's canonical URI.
    pub endpoint: String,
    /// The entries.
    pub entries: Vec<(Field, Option<Value>)>,
    /// Whether these are all the entries there are.
    pub complete: bool,
}

/// A member of the cluster as the admin sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Member {
    /// Its number.
    pub node: NodeId,
    /// Where the other nodes reach it.
    pub internal: String,
    /// Milliseconds its lease has left; None when it has lapsed.
    pub lease_left_ms: Option<u64>,
    /// Whether it is this node.
    pub this_node: bool,
    /// Its era: the subscriptions it made in this run have tags that
    /// begin `node-era`.
    pub era: u64,
    /// Subscriptions it held at its last renewal.
    pub subscriptions: u64,
    /// Whether an admin drained it: it hands its watchers to the others
    /// and takes no new ones until it is restarted.
    pub draining: bool,
}

/// The cluster as one node sees it, for status and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ClusterView {
    /// This node's number.
    pub node: NodeId,
    /// Every member registered, live or not.
    pub members: Vec<Member>,
    /// Changes shared since start.
    pub shared: u64,
    /// Changes from other nodes applied since start.
    pub applied: u64,
    /// Changes that could not be shared at once (Redis slow or away);
    /// the sweep writes them again.
    pub share_failures: u64,
    /// Endpoints read again whole because an event was lost or Redis
    /// moved.
    pub reloads: u64,
    /// Nodes whose subscriptions this node took over since start.
    pub takeovers: u64,
}

/// A shared value that does not read back: written by another version,
/// or damaged. The entry is ignored, and the next write replaces it.
#[derive(Debug, thiserror::Error)]
#[error("a shared {field} entry does not read back: {reason}")]
pub struct CodecError {
    /// The entry's name.
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

#[derive(Serialize, Deserialize)]
struct WireState {
    a: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    act: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    note: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct WirePublication {
    s: WireState,
    at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    until: Option<i64>,
}

#[derive(Serialize, Deserialize)]
struct WireContribution {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reg: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    publ: Option<WirePublication>,
}

impl From<&PresenceState> for WireState {
    fn from(s: &PresenceState) -> WireState {
        WireState {
            a: s.availability.0,
            act: s.activity.clone(),
            note: s.note.clone(),
        }
    }
}

impl From<WireState> for PresenceState {
    fn from(w: WireState) -> PresenceState {
        let mut state = PresenceState::new(Availability(w.a));
        state.activity = w.act;
        state.note = w.note;
        state
    }
}

impl Value {
    /// The value as the shared record keeps it: short JSON, readable with
    /// `redis-cli`.
    pub fn encode(&self) -> String {
        let json = match self {
            Value::Admin(state) => serde_json::to_string(&WireState::from(state)),
            Value::Node(c) => serde_json::to_string(&WireContribution {
                reg: c.registered_until,
                publ: c.published.as_ref().map(|p| WirePublication {
                    s: WireState::from(&p.state),
                    at: p.at,
                    until: p.until,
                }),
            }),
        };
        json.expect("plain data serializes")
    }

    /// Reads back what [`encode`](Self::encode) wrote for `field`.
    pub fn decode(field: Field, text: &str) -> Result<Value, CodecError> {
        let error = |e: serde_json::Error| CodecError {
            field: field.key(),
            reason: e.to_string(),
        };
        Ok(match field {
            Field::Admin => Value::Admin(
                serde_json::from_str::<WireState>(text)
                    .map_err(error)?
                    .into(),
            ),
            Field::Node(_) => {
                let wire: WireContribution = serde_json::from_str(text).map_err(error)?;
                Value::Node(Contribution {
                    registered_until: wire.reg,
                    published: wire.publ.map(|p| SharedPublication {
                        state: p.s.into(),
                        at: p.at,
                        until: p.until,
                    }),
                })
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_read_back_as_written() {
        let mut state = PresenceState::new(Availability::BUSY);
        state.note = Some("In a \"meeting\"".into());
        let values = [
            (Field::Admin, Value::Admin(state.clone())),
            (Field::Node(7), Value::Node(Contribution::default())),
            (
                Field::Node(1),
                Value::Node(Contribution {
                    registered_until: Some(1_900_000_000),
                    published: Some(SharedPublication {
                        state,
                        at: 1_800_000_000_000_000,
                        until: None,
                    }),
                }),
            ),
        ];
        for (field, value) in values {
            let text = value.encode();
            assert_eq!(Value::decode(field, &text).unwrap(), value, "{text}");
            assert_eq!(Field::parse(&field.key()), Some(field));
        }
    }

    #[test]
    fn damaged_entries_and_other_names_are_refused() {
        assert!(Value::decode(Field::Node(1), "{\"reg\":\"soon\"}").is_err());
        assert!(Value::decode(Field::Admin, "").is_err());
        assert_eq!(Field::parse("rev"), None);
        assert_eq!(Field::parse("uri"), None);
        assert_eq!(Field::parse("n"), None);
        assert_eq!(Field::parse("n70000"), None);
    }

    #[test]
    fn an_entry_lapses_at_its_bounds() {
        let c = Contribution {
            registered_until: Some(100),
            published: Some(SharedPublication {
                state: PresenceState::new(Availability::ONLINE),
                at: 0,
                until: Some(50),
            }),
        };
        assert!(c.registered_at(99) && !c.registered_at(100));
        assert!(c.published_at(49).is_some() && c.published_at(50).is_none());
        assert_eq!(c.next_lapse(), Some(50));
    }
}
