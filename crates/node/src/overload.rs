//! Overload control without I/O (RFC 6357's local overload control): the
//! event loop reports its backlog, its live server transactions and the
//! process's memory; past any high-water mark the node sheds new work —
//! new subscriptions, registrations, publications, calls, IM — with 503
//! and Retry-After, answered without keeping state, until every signal is
//! back under half its mark. Requests within dialogs it already holds
//! (refreshes, NOTIFY answers, BYE, ACK, CANCEL) are never shed: work for
//! what is held goes first.

use std::time::Duration;

use porchlight_sip::status;
use porchlight_sip::{Answer, Message, Method};

/// The high-water marks.
#[derive(Clone, Copy, Debug)]
pub struct OverloadLimits {
    /// Received messages waiting for the event loop.
    pub max_backlog: usize,
    /// Live server transactions.
    pub max_server_transactions: usize,
    /// Resident memory, in bytes; 0: no budget.
    pub memory_budget_bytes: u64,
    /// What a shed request is told to wait (with up to as much again of
    /// jitter, so shed clients do not all come back at once).
    pub retry_after: Duration,
}

/// What the loop measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Load {
    /// Messages queued toward the loop.
    pub backlog: usize,
    /// Live server transactions.
    pub server_transactions: usize,
    /// Resident memory in bytes (0 when unknown).
    pub resident_bytes: u64,
}

/// A change of state worth one log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Shedding began, at this load.
    Shedding(Load),
    /// Shedding ended, after this many requests were shed.
    Recovered(u64),
}

/// The controller.
#[derive(Debug)]
pub struct Overload {
    limits: OverloadLimits,
    shedding: bool,
    shed_in_episode: u64,
    jitter: u64,
}

impl Overload {
    /// A controller with these marks.
    pub fn new(limits: OverloadLimits) -> Overload {
        Overload {
            limits,
            shedding: false,
            shed_in_episode: 0,
            jitter: 0,
        }
    }

    /// Takes a measurement; the transition it causes, if any.
    pub fn observe(&mut self, load: Load) -> Option<Transition> {
        let l = &self.limits;
        let over = |value: u64, mark: u64, factor: u64| mark > 0 && value * factor > mark;
        let past = |factor| {
            over(load.backlog as u64, l.max_backlog as u64, factor)
                || over(
                    load.server_transactions as u64,
                    l.max_server_transactions as u64,
                    factor,
                )
                || over(load.resident_bytes, l.memory_budget_bytes, factor)
        };
        if !self.shedding && past(1) {
            self.shedding = true;
            self.shed_in_episode = 0;
            return Some(Transition::Shedding(load));
        }
        // Hysteresis: back only once every signal is under half its mark.
        if self.shedding && !past(2) {
            self.shedding = false;
            return Some(Transition::Recovered(self.shed_in_episode));
        }
        None
    }

    /// Whether new work is being shed now.
    pub fn is_shedding(&self) -> bool {
        self.shedding
    }

    /// The answer for `request` while shedding: 503 with Retry-After for
    /// new work, None for what belongs to a dialog already held.
    pub fn shed(&mut self, request: &Message) -> Option<Answer> {
        if !self.shedding || !is_new_work(request) {
            return None;
        }
        self.shed_in_episode += 1;
        let base = self.limits.retry_after.as_secs().max(1);
        // A cheap spread over [base, 2 base).
        self.jitter = (self.jitter + 7) % base;
        Some(
            Answer::new(status::SERVICE_UNAVAILABLE, "Service Unavailable")
                .with("Retry-After", (base + self.jitter).to_string()),
        )
    }
}

/// New requests that start work: everything outside a dialog except the
/// transaction plumbing (ACK, CANCEL).
fn is_new_work(request: &Message) -> bool {
    let in_dialog = request.to().is_ok_and(|to| to.tag().is_some());
    !in_dialog && !matches!(request.method_kind(), Some(Method::Ack | Method::Cancel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use porchlight_sip::{Framing, Limits};

    fn message(method: &str, to_tag: &str) -> Message {
        let raw = format!(
            "{method} sip:helpdesk@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
             From: <sip:w@fabrikam.com>;tag=1\r\nTo: <sip:helpdesk@contoso.com>{to_tag}\r\n\
             Call-ID: c\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        );
        Message::parse(Bytes::from(raw), Framing::Datagram, &Limits::default()).unwrap()
    }

    fn controller() -> Overload {
        Overload::new(OverloadLimits {
            max_backlog: 1_000,
            max_server_transactions: 10_000,
            memory_budget_bytes: 1 << 30,
            retry_after: Duration::from_secs(5),
        })
    }

    #[test]
    fn sheds_new_work_past_a_mark_until_every_signal_is_under_half() {
        let mut o = controller();
        let busy = Load {
            backlog: 1_001,
            ..Load::default()
        };
        assert_eq!(o.observe(busy), Some(Transition::Shedding(busy)));
        let answer = o.shed(&message("SUBSCRIBE", "")).expect("shed");
        assert_eq!(answer.code, 503);
        let retry: u64 = answer.headers[0].1.parse().unwrap();
        assert!((5..10).contains(&retry));
        assert!(
            o.shed(&message("SUBSCRIBE", ";tag=x")).is_none(),
            "a refresh goes through"
        );
        assert!(o.shed(&message("ACK", "")).is_none());
        // Under the mark but over half: still shedding.
        let easing = Load {
            backlog: 600,
            ..Load::default()
        };
        assert_eq!(o.observe(easing), None);
        assert!(o.is_shedding());
        assert_eq!(o.observe(Load::default()), Some(Transition::Recovered(1)));
        assert!(o.shed(&message("INVITE", "")).is_none());
    }

    #[test]
    fn memory_over_budget_sheds_and_no_budget_never_does() {
        let mut o = controller();
        let heavy = Load {
            resident_bytes: 2 << 30,
            ..Load::default()
        };
        assert!(matches!(o.observe(heavy), Some(Transition::Shedding(_))));
        let mut unbudgeted = Overload::new(OverloadLimits {
            memory_budget_bytes: 0,
            ..controller().limits
        });
        assert_eq!(unbudgeted.observe(heavy), None);
    }
}
