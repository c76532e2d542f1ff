//! Who may hold a stream connection, without I/O: a bound per source
//! address, a share of the slots kept for peers that proved who they are
//! (a certificate, or an address in the trusted networks), and, when the
//! anonymous share is full, the oldest connection that has proved nothing
//! yet makes way for the newcomer — so a flood of idle connections delays
//! a partner by one handshake, never shuts it out.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Bounds on stream connections.
#[derive(Clone, Copy, Debug)]
pub struct SlotLimits {
    /// Most connections at once, of every kind.
    pub max_connections: usize,
    /// Of those, how many anonymous connections may never take: kept for
    /// certified peers and the trusted networks.
    pub reserved_connections: usize,
    /// Most anonymous connections from one address.
    pub max_per_source: usize,
}

/// A connection's claim on a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ticket(u64);

/// How much a connection is trusted with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Nothing proved yet: may be displaced by a newcomer.
    Unproven,
    /// Sent a whole message, but no identity: keeps its slot.
    Anonymous,
    /// A certificate or a trusted address: counts against the reserve.
    Privileged,
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Take it; if `displaces` is set, that connection closes to make room.
    Admit {
        ticket: Ticket,
        displaces: Option<Ticket>,
    },
    /// Refuse it.
    Refuse(Refusal),
}

/// Why a connection was refused, for the aggregated log and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Its address holds as many anonymous connections as allowed.
    PerSource,
    /// Every slot is taken and none can be freed.
    Full,
}

impl Refusal {
    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::PerSource => "connection refused: per-source limit",
            Refusal::Full => "connection refused: every slot taken",
        }
    }
}

struct Held {
    source: IpAddr,
    standing: Standing,
}

/// The slot table.
pub(crate) struct Slots {
    limits: SlotLimits,
    next: u64,
    held: HashMap<Ticket, Held>,
    /// Anonymous and unproven connections per source.
    per_source: HashMap<IpAddr, usize>,
    /// Unproven connections, oldest first.
    unproven: BTreeMap<Ticket, ()>,
    anonymous: usize,
}

impl Slots {
    pub(crate) fn new(limits: SlotLimits) -> Slots {
        Slots {
            limits,
            next: 0,
            held: HashMap::new(),
            per_source: HashMap::new(),
            unproven: BTreeMap::new(),
            anonymous: 0,
        }
    }

    fn anonymous_share(&self) -> usize {
        self.limits
            .max_connections
            .saturating_sub(self.limits.reserved_connections)
    }

    /// Decides on a connection from `source`; `privileged` when its
    /// address alone vouches for it.
    pub(crate) fn admit(&mut self, source: IpAddr, privileged: bool) -> Admission {
        let displaces = if privileged {
            (self.held.len() >= self.limits.max_connections)
                .then(|| self.oldest_unproven())
                .map(|victim| victim.ok_or(Refusal::Full))
                .transpose()
        } else if self.per_source.get(&source).copied().unwrap_or(0) >= self.limits.max_per_source {
            Err(Refusal::PerSource)
        } else if self.anonymous >= self.anonymous_share()
            || self.held.len() >= self.limits.max_connections
        {
            self.oldest_unproven().ok_or(Refusal::Full).map(Some)
        } else {
            Ok(None)
        };
        let displaces = match displaces {
            Ok(d) => d,
            Err(refusal) => return Admission::Refuse(refusal),
        };
        if let Some(victim) = displaces {
            self.release(victim);
        }
        let ticket = Ticket(self.next);
        self.next += 1;
        let standing = if privileged {
            Standing::Privileged
        } else {
            *self.per_source.entry(source).or_default() += 1;
            self.anonymous += 1;
            self.unproven.insert(ticket, ());
            Standing::Unproven
        };
        self.held.insert(ticket, Held { source, standing });
        Admission::Admit { ticket, displaces }
    }

    fn oldest_unproven(&self) -> Option<Ticket> {
        self.unproven.keys().next().copied()
    }

    /// The connection sent a whole message: it keeps its slot.
    pub(crate) fn proven(&mut self, ticket: Ticket) {
        if let Some(held) = self.held.get_mut(&ticket) {
            if held.standing == Standing::Unproven {
                held.standing = Standing::Anonymous;
                self.unproven.remove(&ticket);
            }
        }
    }

    /// The connection's peer proved an identity by certificate: it moves
    /// to the reserve.
    pub(crate) fn certified(&mut self, ticket: Ticket) {
        let Some(held) = self.held.get_mut(&ticket) else {
            return;
        };
        if held.standing != Standing::Privileged {
            self.unproven.remove(&ticket);
            self.anonymous -= 1;
            let source = held.source;
            held.standing = Standing::Privileged;
            self.forget_source(source);
        }
    }

    /// The connection closed (or was displaced: releasing twice is harmless).
    pub(crate) fn release(&mut self, ticket: Ticket) {
        let Some(held) = self.held.remove(&ticket) else {
            return;
        };
        if held.standing != Standing::Privileged {
            self.unproven.remove(&ticket);
            self.anonymous -= 1;
            self.forget_source(held.source);
        }
    }

    fn forget_source(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    fn admitted(admission: Admission) -> (Ticket, Option<Ticket>) {
        match admission {
            Admission::Admit { ticket, displaces } => (ticket, displaces),
            Admission::Refuse(r) => panic!("refused: {r:?}"),
        }
    }

    fn slots() -> Slots {
        Slots::new(SlotLimits {
            max_connections: 10,
            reserved_connections: 4,
            max_per_source: 3,
        })
    }

    #[test]
    fn one_address_gets_its_share_and_no_more() {
        let mut slots = slots();
        let tickets: Vec<_> = (0..3)
            .map(|_| admitted(slots.admit(ip(1), false)).0)
            .collect();
        assert_eq!(
            slots.admit(ip(1), false),
            Admission::Refuse(Refusal::PerSource)
        );
        slots.release(tickets[0]);
        admitted(slots.admit(ip(1), false));
        // Certified connections are not counted against their address.
        slots.certified(tickets[1]);
        admitted(slots.admit(ip(1), false));
        assert_eq!(
            slots.admit(ip(1), false),
            Admission::Refuse(Refusal::PerSource)
        );
    }

    #[test]
    fn a_flood_of_unproven_connections_makes_way_for_newcomers() {
        let mut slots = slots();
        let flood: Vec<_> = (0..6)
            .map(|i| admitted(slots.admit(ip(i), false)).0)
            .collect();
        // The anonymous share (6) is full: the oldest unproven makes way.
        let (partner, displaced) = admitted(slots.admit(ip(100), false));
        assert_eq!(displaced, Some(flood[0]));
        assert!(!slots.held.contains_key(&flood[0]));
        slots.certified(partner);
        // The reserve is the partner's: a trusted address gets in without
        // displacing anyone while slots remain.
        assert_eq!(admitted(slots.admit(ip(200), true)).1, None);
        assert_eq!(slots.held.len(), 7);
    }

    #[test]
    fn proven_connections_keep_their_slots() {
        let mut slots = slots();
        for i in 0..6 {
            let (ticket, _) = admitted(slots.admit(ip(i), false));
            slots.proven(ticket);
        }
        assert_eq!(slots.admit(ip(50), false), Admission::Refuse(Refusal::Full));
        // The reserve still takes privileged ones, up to the total.
        for i in 0..4 {
            admitted(slots.admit(ip(60 + i), true));
        }
        assert_eq!(slots.admit(ip(70), true), Admission::Refuse(Refusal::Full));
    }
}
