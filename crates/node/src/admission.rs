//! What admission control remembers between requests: the discovered
//! partners' limits it enforces, and for the admin how many decisions went
//! which way and the most recent refusals with their reasons.

use std::collections::{HashMap, VecDeque};

use porchlight_link::RefusalLog;
use porchlight_policy::{
    decide, verdict, Decision, DiscoveredLimits, Modality, PolicyConfig, Remote, Request,
};
use serde::Serialize;

use crate::clock::Now;

/// How many recent decisions are kept for the admin.
const RECENT: usize = 200;

/// Which way a decided request was crossing the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Way {
    /// From outside in.
    Inbound = 0,
    /// From the inside out.
    Outbound = 1,
}

impl Way {
    /// The name metrics and the API use.
    pub fn name(self) -> &'static str {
        match self {
            Way::Inbound => "inbound",
            Way::Outbound => "outbound",
        }
    }
}

/// One policy decision, as the admin sees it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DecisionRecord {
    /// Seconds since the Unix epoch.
    pub at: u64,
    /// Which way.
    pub way: Way,
    /// `presence`, `im` or `audio`.
    pub kind: &'static str,
    /// The sender's URI.
    pub from: String,
    /// The target's URI.
    pub to: String,
    /// Let through or not.
    pub allowed: bool,
    /// Each step of the decision.
    pub steps: Vec<String>,
}

/// How many decisions of one kind went one way.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DecisionCount {
    /// Which way.
    pub way: Way,
    /// `presence`, `im` or `audio`.
    pub kind: &'static str,
    /// The outcome.
    pub allowed: bool,
    /// How many.
    pub count: u64,
}

/// The policy's name for a modality, as metrics and the admin show it.
pub fn kind_name(modality: Modality) -> &'static str {
    match modality {
        Modality::Presence => "presence",
        Modality::Im => "im",
        Modality::Audio => "audio",
    }
}

fn modality_index(modality: Modality) -> usize {
    match modality {
        Modality::Presence => 0,
        Modality::Im => 1,
        Modality::Audio => 2,
    }
}

/// The most partners whose refusals are counted one by one.
const MAX_REFUSED_PARTNERS: usize = 1024;

/// Admission state of one node.
pub struct Admission {
    /// Rate and contact counts of discovered partners.
    pub limits: DiscoveredLimits,
    /// By way, modality and outcome: a fixed table, so counting is free.
    counts: [[[u64; 2]; 3]; 2],
    recent: VecDeque<DecisionRecord>,
    /// Refusals logged once per sending domain per interval.
    log: RefusalLog<String>,
    /// Policy refusals of each certified partner, bounded like the
    /// partners' traffic so a flood of names cannot grow it.
    refused_partners: HashMap<String, u64>,
}

impl Admission {
    /// Empty, logging refusals at most once per domain per `log_interval`.
    pub fn new(log_interval: std::time::Duration) -> Admission {
        Admission {
            limits: DiscoveredLimits::default(),
            counts: Default::default(),
            recent: VecDeque::new(),
            log: RefusalLog::new(log_interval),
            refused_partners: HashMap::new(),
        }
    }

    /// Decides a policy request on the hot path and records the decision;
    /// a refusal is decided again with every step written down, and logged.
    pub fn admit(
        &mut self,
        policy: &PolicyConfig,
        way: Way,
        request: &Request<'_>,
        from: &str,
        to: &str,
        now: Now,
    ) -> Decision {
        let mut decision = verdict(policy, request);
        if !decision.allowed {
            decision = decide(policy, request);
            self.refused(way, &request.remote, from, to, &decision, now);
        }
        self.record(way, request.modality, from, to, &decision, now);
        decision
    }

    /// Logs a refusal and counts it against the partner whose
    /// certificate the request came under, if any.
    pub fn refused(
        &mut self,
        way: Way,
        remote: &Remote<'_>,
        from: &str,
        to: &str,
        decision: &Decision,
        now: Now,
    ) {
        self.log_refusal(way, from, to, decision, now);
        if let Remote::Certified([partner, ..]) = remote {
            self.count_partner_refusal(partner);
        }
    }

    fn count_partner_refusal(&mut self, partner: &str) {
        if let Some(count) = self.refused_partners.get_mut(partner) {
            *count += 1;
        } else if self.refused_partners.len() < MAX_REFUSED_PARTNERS {
            self.refused_partners.insert(partner.to_owned(), 1);
        }
    }

    /// How many requests of `partner` (the domain its certificate proves)
    /// the policy refused since start.
    pub fn partner_refusals(&self, partner: &str) -> u64 {
        self.refused_partners.get(partner).copied().unwrap_or(0)
    }

    /// Logs a refusal with its reasons, or counts it when one from the same
    /// domain was logged within the interval: a flood cannot fill a disk.
    fn log_refusal(&mut self, way: Way, from: &str, to: &str, decision: &Decision, now: Now) {
        let domain = crate::edge::domain_of(from);
        let detail = format!("{way:?} {from} -> {to}:\n{decision}");
        self.log.note(now.mono, domain, "by policy", &detail);
    }

    /// Notes a decision.
    pub fn record(
        &mut self,
        way: Way,
        modality: Modality,
        from: &str,
        to: &str,
        decision: &Decision,
        now: Now,
    ) {
        self.counts[way as usize][modality_index(modality)][usize::from(decision.allowed)] += 1;
        // Only refusals are kept: they carry their reasons, and admitting a
        // request stays free of allocations.
        if decision.allowed {
            return;
        }
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(DecisionRecord {
            at: now.unix(),
            way,
            kind: kind_name(modality),
            from: from.to_owned(),
            to: to.to_owned(),
            allowed: decision.allowed,
            steps: decision.steps.clone(),
        });
    }

    /// Decisions so far, by way, kind and outcome.
    pub fn counts(&self) -> Vec<DecisionCount> {
        let mut list = Vec::new();
        for way in [Way::Inbound, Way::Outbound] {
            for modality in [Modality::Presence, Modality::Im, Modality::Audio] {
                for allowed in [false, true] {
                    list.push(DecisionCount {
                        way,
                        kind: kind_name(modality),
                        allowed,
                        count: self.counts[way as usize][modality_index(modality)]
                            [usize::from(allowed)],
                    });
                }
            }
        }
        list
    }

    /// The most recent refusals, newest first.
    pub fn recent(&self) -> Vec<DecisionRecord> {
        self.recent.iter().rev().cloned().collect()
    }
}
