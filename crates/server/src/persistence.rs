//! Write-behind of a node's subscriptions, and their return after a
//! restart.
//!
//! The event loop keeps the only live copy. On each flush tick it takes the
//! slots that changed, copies those records out and hands the batch to a
//! writer thread, so the store's latency never holds up SIP. When the
//! writer falls behind, the loop stops handing over and lets changes
//! accumulate (each slot once), so memory stays bounded by the number of
//! subscriptions, not by the rate of change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use porchlight_presence::SavedSubscription;
use porchlight_store::{Batch, Store};
use porchlight_transport::{Protocol, Target};

use crate::outbound::NextHop;

/// Batches handed to the writer and not yet committed, beyond which the
/// loop waits for it.
const MAX_QUEUED_BATCHES: usize = 2;

/// Seconds since the Unix epoch, the clock saved expiries are kept in.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// What the writer has done, for metrics and the status API.
#[derive(Debug, Default)]
pub struct StoreCounters {
    /// Batches committed.
    pub flushes: AtomicU64,
    /// Records saved or deleted.
    pub records: AtomicU64,
    /// Batches that failed to commit.
    pub failures: AtomicU64,
    /// Time spent committing, in microseconds, summed.
    pub flush_micros: AtomicU64,
    /// The longest commit so far, in microseconds.
    pub max_flush_micros: AtomicU64,
    /// Batches waiting for the writer.
    pub queued: AtomicUsize,
}

/// The loop's side of write-behind.
pub struct WriteBehind {
    batches: mpsc::Sender<Batch>,
    counters: Arc<StoreCounters>,
    changed: Vec<u32>,
}

impl WriteBehind {
    /// Starts the writer thread for `store`.
    pub fn start(store: Arc<dyn Store>) -> std::io::Result<WriteBehind> {
        let (batches, incoming) = mpsc::channel::<Batch>();
        let counters = Arc::new(StoreCounters::default());
        let shared = counters.clone();
        std::thread::Builder::new()
            .name("porchlight-store".into())
            .spawn(move || {
                for batch in incoming {
                    let started = Instant::now();
                    let records = (batch.saved.len() + batch.deleted.len()) as u64;
                    match store.write(&batch) {
                        Ok(()) => {
                            let micros = started.elapsed().as_micros() as u64;
                            shared.flushes.fetch_add(1, Ordering::Relaxed);
                            shared.records.fetch_add(records, Ordering::Relaxed);
                            shared.flush_micros.fetch_add(micros, Ordering::Relaxed);
                            shared.max_flush_micros.fetch_max(micros, Ordering::Relaxed);
                        }
                        Err(e) => {
                            shared.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!("write-behind batch of {records} records lost: {e}");
                        }
                    }
                    shared.queued.fetch_sub(1, Ordering::Relaxed);
                }
            })?;
        Ok(WriteBehind {
            batches,
            counters,
            changed: Vec::new(),
        })
    }

    /// The writer's counters.
    pub fn counters(&self) -> Arc<StoreCounters> {
        self.counters.clone()
    }

    /// Hands what changed since the last tick to the writer, unless it is
    /// still busy with earlier batches.
    pub fn tick(&mut self, presence: &mut crate::presence::PresenceService, now: Instant) {
        if self.counters.queued.load(Ordering::Relaxed) >= MAX_QUEUED_BATCHES {
            return;
        }
        let unix = unix_now();
        presence.take_changed(&mut self.changed);
        let registrations = presence.take_registration_changes(now, unix);
        let publications = presence.take_publication_changes(now, unix);
        if self.changed.is_empty() && registrations.is_empty() && publications.is_empty() {
            return;
        }
        let mut batch = Batch {
            publications,
            registrations: registrations
                .into_iter()
                .map(|(endpoint, bindings)| {
                    let bindings = bindings
                        .into_iter()
                        .map(|b| {
                            let text = flow_to_text(&b.flow.flow);
                            let flow = b.flow.clone().with_flow(text);
                            b.with_flow(flow)
                        })
                        .collect();
                    (endpoint, bindings)
                })
                .collect(),
            ..Batch::default()
        };
        for &slot in &self.changed {
            match presence.saved(slot, now, unix) {
                Some(saved) => {
                    let flow = flow_to_text(&saved.flow.flow);
                    batch.saved.push(saved.with_flow(flow));
                }
                None => batch.deleted.push(slot),
            }
        }
        self.changed.clear();
        self.counters.queued.fetch_add(1, Ordering::Relaxed);
        if self.batches.send(batch).is_err() {
            self.counters.queued.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("the store writer has stopped; changes are no longer saved");
        }
    }
}

/// A next hop in words. A connection does not outlive the process, so it
/// is saved as "reconnect": after a restart the watcher is reached the way
/// RFC 3261 reaches a dialog's remote target.
pub fn flow_to_text(hop: &NextHop) -> String {
    match hop {
        NextHop::Partner(name) => format!("partner {name}"),
        NextHop::Direct(Target::Address {
            protocol,
            addr,
            domain,
        }) => match domain {
            Some(d) => format!("{} {addr} {d}", protocol.via_token()),
            None => format!("{} {addr}", protocol.via_token()),
        },
        NextHop::Direct(Target::Connection(_)) => "reconnect".into(),
        NextHop::Host { protocol, uri } => format!("host {} {uri}", protocol.via_token()),
    }
}

/// Where a saved subscription's lost connection is reached again: the
/// first hop of the dialog's route set, else its remote target (RFC 3261
/// §12.2.1.1).
pub fn reconnect_to(saved: &SavedSubscription<String>) -> &str {
    saved
        .route_set
        .as_deref()
        .and_then(|r| r.split(',').next())
        .map(|r| r.trim().trim_start_matches('<'))
        .and_then(|r| r.split('>').next())
        .unwrap_or(&saved.remote_target)
}

/// Reads back [`flow_to_text`]; a saved connection becomes the next hop
/// `reconnect_to` names.
pub fn flow_from_text(text: &str, reconnect_to: &str) -> Option<NextHop> {
    let mut words = text.split(' ');
    let kind = words.next()?;
    let protocol = |token: &str| match token {
        "UDP" => Some(Protocol::Udp),
        "TCP" => Some(Protocol::Tcp),
        "TLS" => Some(Protocol::Tls),
        _ => None,
    };
    match kind {
        "partner" => Some(NextHop::Partner(words.next()?.into())),
        "host" => Some(NextHop::Host {
            protocol: protocol(words.next()?)?,
            uri: words.next()?.into(),
        }),
        "reconnect" => crate::edge::hop_of(reconnect_to),
        token => {
            let protocol = protocol(token)?;
            let addr: SocketAddr = words.next()?.parse().ok()?;
            Some(NextHop::Direct(Target::Address {
                protocol,
                addr,
                domain: words.next().map(str::to_owned),
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use porchlight_presence::{FlowInfo, Format, SavedTarget, SubscriptionId};

    fn saved(route_set: Option<&str>) -> SavedSubscription<String> {
        SavedSubscription {
            id: SubscriptionId {
                index: 0,
                generation: 0,
            },
            target: SavedTarget::Presence("sip:helpdesk@contoso.com".into()),
            format: Format::Pidf,
            benotify: false,
            call_id: "c".into(),
            remote_tag: "t".into(),
            remote_uri: "sip:alice@contoso.com".into(),
            remote_target: "sip:alice@10.0.0.9:5070;transport=tcp".into(),
            expires_at: 0,
            local_cseq: 1,
            remote_cseq: 1,
            route_set: route_set.map(str::to_owned),
            flow: FlowInfo {
                flow: String::new(),
                reliable: true,
                via: String::new(),
                contact: String::new(),
            },
        }
    }

    #[test]
    fn flows_survive_in_words() {
        let s = saved(None);
        for hop in [
            NextHop::Partner("fabrikam.com".into()),
            NextHop::address(Protocol::Udp, "192.0.2.7:5060".parse().unwrap()),
            NextHop::Direct(Target::Address {
                protocol: Protocol::Tls,
                addr: "192.0.2.7:5061".parse().unwrap(),
                domain: Some("fabrikam.com".into()),
            }),
            NextHop::Host {
                protocol: Protocol::Tcp,
                uri: "sip:pc7.corp.example;transport=tcp".into(),
            },
        ] {
            assert_eq!(
                flow_from_text(&flow_to_text(&hop), reconnect_to(&s)),
                Some(hop)
            );
        }
    }

    #[test]
    fn a_lost_connection_is_reached_again_by_the_dialog_rules() {
        let connection = NextHop::Direct(Target::Connection(porchlight_transport::ConnectionId(4)));
        let text = flow_to_text(&connection);
        assert_eq!(
            flow_from_text(&text, reconnect_to(&saved(None))),
            Some(NextHop::address(
                Protocol::Tcp,
                "10.0.0.9:5070".parse().unwrap()
            )),
            "the remote target"
        );
        assert_eq!(
            flow_from_text(
                &text,
                reconnect_to(&saved(Some(
                    "<sip:10.0.0.1:5061;transport=tls;lr>, <sip:10.0.0.2;lr>"
                )))
            ),
            Some(NextHop::address(
                Protocol::Tls,
                "10.0.0.1:5061".parse().unwrap()
            )),
            "the first hop of the route set"
        );
        assert_eq!(flow_from_text("carrier pigeon", "sip:a@b"), None);
    }
}
