//! Keepalive OPTIONS to registered contacts (the registrar says when one
//! is due): each is written here, waits here for its answer, and an
//! answer or a failure is matched back to the contact by its branch.

use std::collections::{HashMap, VecDeque};

use porchlight_presence::FlowInfo;
use porchlight_sip::MessageWriter;
use porchlight_transaction::ClientKey;

use super::OutgoingRequest;
use crate::outbound::NextHop;
use crate::wire::BranchKind;

/// The keepalives under way and those still to send.
pub(super) struct Keepalives {
    /// Makes the branches, tags and Call-IDs this node's.
    salt: u64,
    /// Keepalives sent so far.
    sent: u64,
    /// The endpoint and contact each branch under way asks after.
    waiting: HashMap<String, (usize, String)>,
    /// Written and not yet taken by the core.
    outgoing: VecDeque<OutgoingRequest>,
}

impl Keepalives {
    /// None yet, under `salt`.
    pub(super) fn new(salt: u64) -> Keepalives {
        Keepalives {
            salt,
            sent: 0,
            waiting: HashMap::new(),
            outgoing: VecDeque::new(),
        }
    }

    /// An OPTIONS from `uri` (the endpoint in `endpoint`'s slot) to its
    /// registered `contact`, over the flow it registered on.
    pub(super) fn send(
        &mut self,
        endpoint: usize,
        uri: &str,
        contact: String,
        flow: FlowInfo<NextHop>,
    ) {
        let branch = BranchKind::Keepalive.branch(self.salt, &mut self.sent);
        let mut w = MessageWriter::request("OPTIONS", &contact);
        w.header_fmt("Via", format_args!("{};branch={branch};rport", flow.via));
        w.header("Max-Forwards", "70");
        w.header_fmt("From", format_args!("<{uri}>;tag=ka{:x}", self.sent));
        w.header_fmt("To", format_args!("<{contact}>"));
        w.header_fmt(
            "Call-ID",
            format_args!("keepalive-{:x}-{endpoint}", self.sent),
        );
        w.header("CSeq", "1 OPTIONS");
        self.waiting.insert(branch.clone(), (endpoint, contact));
        self.outgoing.push_back(OutgoingRequest {
            target: flow.flow,
            reliable: flow.reliable,
            bytes: w.finish(b""),
            transaction: Some(ClientKey {
                branch,
                method: "OPTIONS".into(),
            }),
        });
    }

    /// The next keepalive to send.
    pub(super) fn pop(&mut self) -> Option<OutgoingRequest> {
        self.outgoing.pop_front()
    }

    /// The endpoint and contact a response's `branch` answers for; the
    /// keepalive is done either way.
    pub(super) fn answered(&mut self, branch: &str) -> Option<(usize, String)> {
        self.waiting.remove(branch)
    }

    /// Forgets what an endpoint no longer served waits for.
    pub(super) fn forget_endpoint(&mut self, slot: usize) {
        self.waiting.retain(|_, (e, _)| *e != slot);
    }
}
