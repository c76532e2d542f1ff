//! Parse a federated MS-dialect presence SUBSCRIBE (~1.3 KB) and read the
//! headers every transaction needs: Via, From, To, Call-ID, CSeq. The same
//! work is done with `ezk-sip-types` in the same run, so the figure that
//! matters is the ratio.

// `criterion_group!` writes an undocumented public function.
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use porchlight_sip::{Framing, Limits, Message};

const SUBSCRIBE: &[u8] = include_bytes!("../tests/fixtures/samples/federated-subscribe.sip");

fn porchlight(buf: &Bytes, limits: &Limits) -> usize {
    let m = Message::parse(buf.clone(), Framing::Datagram, limits).unwrap();
    let via = m.top_via().unwrap();
    let from = m.from().unwrap();
    let to = m.to().unwrap();
    let call_id = m.call_id().unwrap();
    let cseq = m.cseq().unwrap();
    via.branch().unwrap().len()
        + from.tag().unwrap().len()
        + to.uri.as_str().len()
        + call_id.len()
        + cseq.seq as usize
}

fn ezk(buf: &Bytes) -> usize {
    use ezk_sip_types::header::typed::{CSeq, CallID, FromTo, Via};
    use ezk_sip_types::msg::{Line, MessageLine, PullParser};
    use ezk_sip_types::parse::Parse;
    use ezk_sip_types::{Headers, Name};

    let mut lines = PullParser::new(buf, 0);
    let first = lines.next().unwrap().unwrap();
    let first = std::str::from_utf8(first).unwrap();
    let (_, start) = MessageLine::parse(buf)(first).unwrap();
    let mut headers = Headers::with_capacity(20);
    for line in &mut lines {
        let line = std::str::from_utf8(line.unwrap()).unwrap();
        let (_, line) = Line::parse(buf, line).unwrap();
        headers.insert(line.name, line.value);
    }
    let via: Via = headers.get_named().unwrap();
    let from: FromTo = headers.get(Name::FROM).unwrap();
    let to: FromTo = headers.get(Name::TO).unwrap();
    let call_id: CallID = headers.get_named().unwrap();
    let cseq: CSeq = headers.get_named().unwrap();
    black_box(&start);
    via.params.get_val("branch").unwrap().len()
        + from.tag.unwrap().len()
        + usize::from(to.uri.uri.sips)
        + call_id.0.len()
        + cseq.cseq as usize
}

fn bench(c: &mut Criterion) {
    let buf = Bytes::from_static(SUBSCRIBE);
    let limits = Limits::default();
    assert_eq!(porchlight(&buf, &limits) > 0, ezk(&buf) > 0);
    let mut group = c.benchmark_group("parse_federated_subscribe");
    group.throughput(Throughput::Bytes(SUBSCRIBE.len() as u64));
    group.bench_function("porchlight-sip", |b| {
        b.iter(|| porchlight(black_box(&buf), &limits))
    });
    group.bench_function("ezk-sip-types", |b| b.iter(|| ezk(black_box(&buf))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
