//! Messages the driver holds for connections whose peer reads slower than
//! the node writes, so the event loop never waits for one.

use std::collections::{HashMap, VecDeque};

use porchlight_node::outbound::Parked;
use porchlight_transport::ConnectionId;

/// Messages held, in order, for connections whose queue is full: the
/// peer reads slower than the node writes. The event loop never waits for
/// it to read; a bounded backlog rides out a burst (a fan-out over one
/// partner's connection), and past the bound the peer is not reading and
/// what it is sent fails.
pub struct Backlogs {
    held: HashMap<ConnectionId, VecDeque<Parked>>,
    max_per_connection: usize,
}

/// What became of a message for a connection that has a backlog.
#[derive(Debug, PartialEq, Eq)]
pub enum Held {
    /// First in the backlog: wait for the connection to take more.
    First,
    /// Behind others already held.
    Behind,
    /// The backlog is full: the message fails.
    Full(Parked),
}

impl Backlogs {
    /// At most `max_per_connection` messages wait for any one connection.
    pub fn new(max_per_connection: usize) -> Backlogs {
        Backlogs {
            held: HashMap::new(),
            max_per_connection,
        }
    }

    /// Whether messages wait for `id`: later ones queue behind them, so
    /// a connection's messages keep their order.
    pub fn holds(&self, id: ConnectionId) -> bool {
        self.held.contains_key(&id)
    }

    /// Holds `message` until `id` takes more.
    pub fn hold(&mut self, id: ConnectionId, message: Parked) -> Held {
        let waiting = self.held.entry(id).or_default();
        if waiting.len() >= self.max_per_connection {
            return Held::Full(message);
        }
        waiting.push_back(message);
        if waiting.len() == 1 {
            Held::First
        } else {
            Held::Behind
        }
    }

    /// Everything held for `id`, oldest first, to offer again.
    pub fn release(&mut self, id: ConnectionId) -> VecDeque<Parked> {
        self.held.remove(&id).unwrap_or_default()
    }

    /// Messages held, over all connections.
    pub fn len(&self) -> usize {
        self.held.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn parked(n: u8) -> Parked {
        Parked {
            transaction: None,
            bytes: Bytes::from(vec![n]),
        }
    }

    #[test]
    fn a_connection_that_does_not_read_holds_a_bounded_backlog_in_order() {
        let mut backlogs = Backlogs::new(2);
        let (slow, other) = (ConnectionId(1), ConnectionId(2));
        assert!(!backlogs.holds(slow));
        assert_eq!(backlogs.hold(slow, parked(1)), Held::First);
        assert_eq!(backlogs.hold(slow, parked(2)), Held::Behind);
        assert_eq!(
            backlogs.hold(slow, parked(3)),
            Held::Full(parked(3)),
            "past the bound the message is handed back to fail"
        );
        assert!(
            !backlogs.holds(other),
            "one connection's backlog is its own"
        );
        assert_eq!(backlogs.len(), 2);
        let released: Vec<u8> = backlogs.release(slow).iter().map(|p| p.bytes[0]).collect();
        assert_eq!(released, [1, 2], "oldest first");
        assert_eq!(backlogs.len(), 0);
    }
}
