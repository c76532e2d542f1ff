//! Every transaction path driven in virtual time: no sleeps, exact instants.

use std::time::{Duration, Instant};

use bytes::Bytes;
use porchlight_sip::{Framing, Limits, Message, MessageWriter};
use porchlight_transaction::{
    ClientKey, Output, RequestMatch, ServerKey, TimerConfig, TransactionLayer, TxId,
};

fn msg(bytes: Bytes) -> Message {
    Message::parse(bytes, Framing::Datagram, &Limits::default()).unwrap()
}

fn request(method: &str, branch: &str, cseq_method: &str) -> Message {
    let mut w = MessageWriter::request(method, "sip:helpdesk@contoso.com");
    w.header("Via", format!("SIP/2.0/UDP 192.0.2.1:5060;branch={branch}"))
        .header("Max-Forwards", "70")
        .header("From", "<sip:alice@fabrikam.com>;tag=a1")
        .header("To", "<sip:helpdesk@contoso.com>")
        .header("Call-ID", "call-1")
        .header("CSeq", format!("7 {cseq_method}"));
    msg(w.finish(b""))
}

fn response(req: &Message, code: u16) -> Message {
    msg(porchlight_sip::response_to(req, code, "X", None, Some("b2")).finish(b""))
}

struct Run {
    layer: TransactionLayer<&'static str>,
    start: Instant,
}

impl Run {
    fn new() -> Run {
        Run {
            layer: TransactionLayer::new(TimerConfig::default()),
            start: Instant::now(),
        }
    }
    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }
    /// Delivers a request that must open a new server transaction at t=0.
    fn new_server(&mut self, request: &Message, reliable: bool) -> ServerKey {
        match self
            .layer
            .receive_request(request, "peer", reliable, self.at(0))
            .unwrap()
        {
            RequestMatch::New(key) => key,
            other => panic!("expected a new transaction, got {other:?}"),
        }
    }
    fn drain(&mut self) -> Vec<Output<&'static str>> {
        std::iter::from_fn(|| self.layer.poll_output()).collect()
    }
    /// Advances virtual time to `until`, firing timers at their exact
    /// deadlines; returns when (ms from start) bytes were sent, and the rest.
    fn run_until(&mut self, until: u64) -> (Vec<u64>, Vec<Output<&'static str>>) {
        let (mut sends, mut others) = (Vec::new(), Vec::new());
        while let Some(deadline) = self.layer.next_deadline() {
            if deadline > self.at(until) {
                break;
            }
            self.layer.handle_timeout(deadline);
            let ms = (deadline - self.start).as_millis() as u64;
            for o in self.drain() {
                match o {
                    Output::Send { .. } => sends.push(ms),
                    other => others.push(other),
                }
            }
        }
        (sends, others)
    }
}

#[test]
fn non_invite_client_retransmits_capped_at_t2_then_times_out() {
    let mut run = Run::new();
    let req = request("OPTIONS", "z9hG4bK-c1", "OPTIONS");
    run.layer
        .send_request(req, "peer", false, run.at(0))
        .unwrap();
    assert!(matches!(
        run.drain().as_slice(),
        [Output::Send { to: "peer", .. }]
    ));
    let (sends, others) = run.run_until(40_000);
    assert_eq!(
        sends,
        [500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500]
    );
    assert!(matches!(
        others.as_slice(),
        [Output::Timeout(TxId::Client(_))]
    ));
    assert!(run.layer.is_empty());
}

#[test]
fn non_invite_client_completes_and_lingers_for_t4() {
    let mut run = Run::new();
    let req = request("SUBSCRIBE", "z9hG4bK-c2", "SUBSCRIBE");
    run.layer
        .send_request(req.clone(), "peer", false, run.at(0))
        .unwrap();
    run.drain();
    assert!(run.layer.receive_response(response(&req, 200), run.at(100)));
    assert!(
        matches!(run.drain().as_slice(), [Output::Response { response, .. }] if response.status() == Some(200))
    );
    assert!(run.layer.receive_response(response(&req, 200), run.at(200)));
    assert!(run.drain().is_empty(), "a retransmitted 200 is absorbed");
    let (sends, _) = run.run_until(5_099);
    assert!(sends.is_empty(), "no retransmission after a final response");
    assert_eq!(run.layer.len(), (0, 1));
    run.run_until(5_100);
    assert!(run.layer.is_empty(), "Timer K = T4 after the response");
}

#[test]
fn invite_client_doubles_timer_a_acks_failures_and_reacks_retransmissions() {
    let mut run = Run::new();
    let invite = request("INVITE", "z9hG4bK-c3", "INVITE");
    run.layer
        .send_request(invite.clone(), "peer", false, run.at(0))
        .unwrap();
    run.drain();
    let (sends, _) = run.run_until(4_000);
    assert_eq!(sends, [500, 1500, 3500]);
    assert!(run
        .layer
        .receive_response(response(&invite, 180), run.at(4_000)));
    run.drain();
    let (sends, _) = run.run_until(20_000);
    assert!(sends.is_empty(), "a provisional response stops Timer A");
    assert!(run
        .layer
        .receive_response(response(&invite, 486), run.at(20_000)));
    let out = run.drain();
    let Output::Send { bytes, .. } = &out[0] else {
        panic!("ACK first")
    };
    let ack = msg(bytes.clone());
    assert_eq!(ack.method(), Some("ACK"));
    assert_eq!(
        (ack.cseq().unwrap().seq, ack.cseq().unwrap().method),
        (7, "ACK")
    );
    assert_eq!(ack.to().unwrap().tag(), Some("b2"));
    assert_eq!(ack.top_via().unwrap().branch(), Some("z9hG4bK-c3"));
    assert!(matches!(&out[1], Output::Response { response, .. } if response.status() == Some(486)));
    assert!(run
        .layer
        .receive_response(response(&invite, 486), run.at(21_000)));
    assert!(
        matches!(run.drain().as_slice(), [Output::Send { .. }]),
        "ACK re-sent"
    );
    run.run_until(52_000);
    assert!(run.layer.is_empty(), "Timer D = 32 s");
}

#[test]
fn invite_client_times_out_after_64_t1() {
    let mut run = Run::new();
    let invite = request("INVITE", "z9hG4bK-c4", "INVITE");
    run.layer
        .send_request(invite, "peer", true, run.at(0))
        .unwrap();
    run.drain();
    let (sends, others) = run.run_until(40_000);
    assert!(
        sends.is_empty(),
        "no retransmission over a reliable transport"
    );
    assert!(matches!(others.as_slice(), [Output::Timeout(_)]));
}

#[test]
fn invite_server_sends_trying_retransmits_failure_until_ack() {
    let mut run = Run::new();
    let invite = request("INVITE", "z9hG4bK-s1", "INVITE");
    let key = run.new_server(&invite, false);
    let out = run.drain();
    let Output::Send { bytes, .. } = &out[0] else {
        panic!()
    };
    assert_eq!(msg(bytes.clone()).status(), Some(100));
    let again = run
        .layer
        .receive_request(&invite, "peer", false, run.at(10))
        .unwrap();
    assert_eq!(again, RequestMatch::Retransmission);
    assert!(
        matches!(run.drain().as_slice(), [Output::Send { .. }]),
        "100 resent"
    );
    let busy = porchlight_sip::response_to(&invite, 486, "Busy Here", None, Some("t")).finish(b"");
    assert!(run.layer.respond(&key, 486, busy, run.at(100)));
    run.drain();
    let (sends, _) = run.run_until(8_100);
    assert_eq!(sends, [600, 1600, 3600, 7600], "Timer G doubles up to T2");
    let ack = request("ACK", "z9hG4bK-s1", "ACK");
    let matched = run
        .layer
        .receive_request(&ack, "peer", false, run.at(8_200))
        .unwrap();
    assert_eq!(matched, RequestMatch::AckAbsorbed);
    let (sends, _) = run.run_until(13_199);
    assert!(sends.is_empty(), "Confirmed: no more retransmissions");
    assert_eq!(run.layer.len(), (1, 0));
    run.run_until(13_200);
    assert!(run.layer.is_empty(), "Timer I = T4");
}

#[test]
fn invite_server_without_ack_times_out_with_timer_h() {
    let mut run = Run::new();
    let invite = request("INVITE", "z9hG4bK-s2", "INVITE");
    let key = run.new_server(&invite, true);
    run.layer
        .respond(&key, 500, Bytes::from_static(b"x"), run.at(0));
    run.drain();
    let (sends, others) = run.run_until(32_000);
    assert!(sends.is_empty());
    assert!(matches!(
        others.as_slice(),
        [Output::Timeout(TxId::Server(_))]
    ));
}

#[test]
fn invite_server_accepted_absorbs_retransmissions_and_passes_ack() {
    let mut run = Run::new();
    let invite = request("INVITE", "z9hG4bK-s3", "INVITE");
    let key = run.new_server(&invite, false);
    run.layer
        .respond(&key, 200, Bytes::from_static(b"ok"), run.at(0));
    run.drain();
    let again = run
        .layer
        .receive_request(&invite, "peer", false, run.at(500))
        .unwrap();
    assert_eq!(again, RequestMatch::Retransmission);
    assert!(
        run.drain().is_empty(),
        "the TU, not the transaction, retransmits a 2xx"
    );
    let ack = request("ACK", "z9hG4bK-s3", "ACK");
    let matched = run
        .layer
        .receive_request(&ack, "peer", false, run.at(600))
        .unwrap();
    assert_eq!(matched, RequestMatch::DialogAck);
    run.run_until(32_000);
    assert!(run.layer.is_empty(), "Timer L = 64*T1");
}

#[test]
fn non_invite_server_absorbs_then_resends_final_and_lingers() {
    let mut run = Run::new();
    let req = request("OPTIONS", "z9hG4bK-s4", "OPTIONS");
    let key = run.new_server(&req, false);
    assert!(run.drain().is_empty(), "no 100 for non-INVITE");
    let again = run
        .layer
        .receive_request(&req, "peer", false, run.at(5))
        .unwrap();
    assert_eq!(again, RequestMatch::Retransmission);
    assert!(run.drain().is_empty(), "Trying absorbs retransmissions");
    run.layer
        .respond(&key, 200, Bytes::from_static(b"200"), run.at(10));
    assert_eq!(run.drain().len(), 1);
    run.layer
        .receive_request(&req, "peer", false, run.at(20))
        .unwrap();
    assert!(matches!(run.drain().as_slice(), [Output::Send { bytes, .. }] if &bytes[..] == b"200"));
    run.run_until(32_009);
    assert_eq!(run.layer.len(), (1, 0));
    run.run_until(32_010);
    assert!(run.layer.is_empty(), "Timer J = 64*T1 on UDP");
}

#[test]
fn legacy_branches_match_on_request_fields_and_cancel_finds_its_invite() {
    let mut run = Run::new();
    let invite = request("INVITE", "390skdjuw", "INVITE");
    let key = run.new_server(&invite, false);
    assert!(matches!(key, ServerKey::Legacy { .. }));
    let again = run
        .layer
        .receive_request(&invite, "peer", false, run.at(1))
        .unwrap();
    assert_eq!(again, RequestMatch::Retransmission);
    let cancel = request("CANCEL", "z9hG4bK-x", "CANCEL");
    let invite2 = request("INVITE", "z9hG4bK-x", "INVITE");
    assert_eq!(
        ServerKey::of(&cancel).unwrap().cancelled_invite(),
        ServerKey::of(&invite2).unwrap()
    );
    assert_ne!(
        ServerKey::of(&cancel).unwrap(),
        ServerKey::of(&invite2).unwrap()
    );
}

#[test]
fn transport_errors_end_the_transaction() {
    let mut run = Run::new();
    let req = request("NOTIFY", "z9hG4bK-c5", "NOTIFY");
    let key: ClientKey = run
        .layer
        .send_request(req, "peer", true, run.at(0))
        .unwrap();
    run.drain();
    run.layer.transport_error(&TxId::Client(key), run.at(1));
    assert!(matches!(
        run.drain().as_slice(),
        [Output::TransportError(_)]
    ));
    assert!(run.layer.is_empty());
}
