//! The names this node gives what it makes: To tags (also the unique part
//! of its Call-IDs), Via branches, webhook delivery numbers and health
//! probe numbers. Each is unique to the node (its seed) and never reused
//! in a run; a refusal's tag is the same for every retransmission of one
//! request and unguessable across requests.

use std::hash::{Hash, Hasher};

use porchlight_transaction::ServerKey;

use crate::wire::BranchKind;

/// The counters behind every name, and the seed that makes them this
/// node's.
pub(super) struct Ids {
    seed: u64,
    tags: u64,
    branches: u64,
    deliveries: u64,
    probes: u64,
}

impl Ids {
    /// Names under `seed`, unique to this node.
    pub(super) fn new(seed: u64) -> Ids {
        Ids {
            seed,
            tags: 0,
            branches: 0,
            deliveries: 0,
            probes: 0,
        }
    }

    /// A tag no other of this node's dialogs or transactions uses.
    pub(super) fn tag(&mut self, prefix: &str) -> String {
        self.tags += 1;
        format!("{prefix}{:x}{:x}", self.seed & 0xffff_ffff, self.tags)
    }

    /// The To tag of a stateless answer: the same for every retransmission
    /// of one request (RFC 3261 §8.2.7), unguessable across requests.
    pub(super) fn stateless_tag(&self, key: &ServerKey) -> String {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (self.seed, key).hash(&mut hasher);
        format!("{:x}", hasher.finish())
    }

    /// A branch for a request of this `kind`, by which its responses find
    /// their way back.
    pub(super) fn branch(&mut self, kind: BranchKind) -> String {
        kind.branch(self.seed, &mut self.branches)
    }

    /// A webhook delivery's number and the id the app sees (the same
    /// across retries, unique to this node).
    pub(super) fn delivery(&mut self) -> (u64, String) {
        self.deliveries += 1;
        let id = self.deliveries;
        (id, format!("{:x}-{id:x}", self.seed & 0xffff_ffff))
    }

    /// A health probe's number: a stopped probe's late verdicts carry an
    /// old one.
    pub(super) fn probe(&mut self) -> u64 {
        self.probes += 1;
        self.probes
    }
}
