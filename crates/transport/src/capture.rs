//! A copy of every SIP message received and sent, for a HEP capture server
//! (Homer, sngrep): what SIP operators look at when a partner says a
//! NOTIFY never came.
//!
//! The SIP path only hands the message's bytes (a reference count, no
//! copy) to a bounded queue, and never waits: when the queue is full the
//! copy is dropped and counted. A task of its own encodes and sends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use porchlight_link::Protocol;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::hep;

/// Where copies go and how many may wait.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// The HEP capture server.
    pub collector: SocketAddr,
    /// The number capture servers know this node by.
    pub agent_id: u32,
    /// Copies that may wait for the sender before new ones are dropped.
    pub queue_depth: usize,
}

/// What became of the copies since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureTotals {
    /// Sent to the capture server.
    pub sent: u64,
    /// Dropped: the queue was full, or the message too large for HEP.
    pub dropped: u64,
    /// Refused by the socket (the capture server unreachable, say).
    pub failed: u64,
}

#[derive(Default)]
struct Counts {
    sent: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// One message waiting to be encoded.
struct Copy {
    protocol: Protocol,
    source: SocketAddr,
    destination: SocketAddr,
    at: SystemTime,
    bytes: Bytes,
}

/// The transport's side of capture: cloning shares the queue.
#[derive(Clone)]
pub struct Capture {
    queue: mpsc::Sender<Copy>,
    counts: Arc<Counts>,
    collector: SocketAddr,
}

/// The sending side, run as a task: takes copies from the queue, encodes
/// them and sends them to the capture server, until every [`Capture`] is
/// gone.
pub struct CaptureSender {
    queue: mpsc::Receiver<Copy>,
    counts: Arc<Counts>,
    agent_id: u32,
}

impl Capture {
    /// The queue and its sender, not yet running.
    pub fn new(config: &CaptureConfig) -> (Capture, CaptureSender) {
        let (queue, receiver) = mpsc::channel(config.queue_depth.max(1));
        let counts = Arc::new(Counts::default());
        (
            Capture {
                queue,
                counts: counts.clone(),
                collector: config.collector,
            },
            CaptureSender {
                queue: receiver,
                counts,
                agent_id: config.agent_id,
            },
        )
    }

    /// Binds the sending socket and starts the sender task.
    pub async fn start(config: &CaptureConfig) -> std::io::Result<Capture> {
        let any: SocketAddr = if config.collector.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(any).await?;
        socket.connect(config.collector).await?;
        let (capture, sender) = Capture::new(config);
        tokio::spawn(sender.run(socket));
        Ok(capture)
    }

    /// Queues a copy of a message that crossed a socket; never waits.
    pub(crate) fn copy(
        &self,
        protocol: Protocol,
        source: SocketAddr,
        destination: SocketAddr,
        bytes: &Bytes,
    ) {
        let copy = Copy {
            protocol,
            source,
            destination,
            at: SystemTime::now(),
            bytes: bytes.clone(),
        };
        if self.queue.try_send(copy).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The capture server copies go to.
    pub fn collector(&self) -> SocketAddr {
        self.collector
    }

    /// What became of the copies since start.
    pub fn totals(&self) -> CaptureTotals {
        CaptureTotals {
            sent: self.counts.sent.load(Ordering::Relaxed),
            dropped: self.counts.dropped.load(Ordering::Relaxed),
            failed: self.counts.failed.load(Ordering::Relaxed),
        }
    }
}

impl CaptureSender {
    /// Sends every queued copy over `socket`, connected to the capture
    /// server, until the queue closes.
    pub async fn run(mut self, socket: UdpSocket) {
        while let Some(copy) = self.queue.recv().await {
            let packet = hep::Packet {
                protocol: copy.protocol,
                source: copy.source,
                destination: copy.destination,
                at: copy.at,
                agent_id: self.agent_id,
                payload: &copy.bytes,
            };
            let counter = match hep::encode(&packet) {
                None => &self.counts.dropped,
                Some(datagram) => match socket.send(&datagram).await {
                    Ok(_) => &self.counts.sent,
                    Err(_) => &self.counts.failed,
                },
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(queue_depth: usize, collector: SocketAddr) -> CaptureConfig {
        CaptureConfig {
            collector,
            agent_id: 3,
            queue_depth,
        }
    }

    const OPTIONS: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: q\r\n\r\n";

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let (capture, _sender_not_running) =
            Capture::new(&config(4, "127.0.0.1:9".parse().unwrap()));
        let (a, b) = (
            "127.0.0.1:5060".parse().unwrap(),
            "127.0.0.1:5070".parse().unwrap(),
        );
        for _ in 0..10 {
            capture.copy(Protocol::Udp, a, b, &Bytes::from_static(OPTIONS));
        }
        assert_eq!(
            capture.totals(),
            CaptureTotals {
                sent: 0,
                dropped: 6,
                failed: 0
            }
        );
    }

    #[tokio::test]
    async fn copies_reach_the_collector_as_hep() {
        let collector = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let capture = Capture::start(&config(16, collector.local_addr().unwrap()))
            .await
            .unwrap();
        let (a, b) = (
            "127.0.0.1:5060".parse().unwrap(),
            "127.0.0.1:5070".parse().unwrap(),
        );
        capture.copy(Protocol::Tcp, a, b, &Bytes::from_static(OPTIONS));
        let mut datagram = [0u8; 1024];
        let n = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            collector.recv(&mut datagram),
        )
        .await
        .expect("a HEP packet within 10 s")
        .unwrap();
        assert_eq!(&datagram[..4], b"HEP3");
        assert!(datagram[..n].ends_with(b"q"), "the Call-ID correlates");
        // The sender counts once the socket took the datagram, which can
        // be just after it arrived here.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while capture.totals().sent == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "the copy is counted as sent"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(capture.totals().sent, 1);
    }
}
