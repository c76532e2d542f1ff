//! What the admin side asks the core, answered from the core's own state.

use porchlight_node::status::{PartnerTraffic, Query};
use porchlight_node::testkit::*;

#[test]
fn the_history_keeps_the_last_hour_of_samples_and_the_busiest_partners() {
    let mut node = TestNode::new(&config(
        &[("history_interval_secs = 10", "history_interval_secs = 60")],
        "",
    ));
    let watch = Req::subscribe("sip:helpdesk@contoso.com", 600)
        .from("sip:alice@contoso.com")
        .via("UDP 127.0.0.1:5070");
    node.receive(&watch.text(), &inside());
    let mut status = node.core.status(node.now);
    // More partners than a sample keeps: the busiest are kept.
    status.partners = (0..20u64)
        .map(|n| PartnerTraffic {
            partner: format!("p{n:02}.example"),
            requests_in: n,
            requests_out: 1,
            requests_refused: 0,
            certificate_not_after: None,
        })
        .collect();
    // Two hours of samples a minute apart: only the last hour stays.
    for minute in 0..120 {
        node.core
            .record_history(1_800_000_000 + minute * 60, &status);
    }
    let view = node.ask(Query::History);
    assert_eq!(view.interval_secs, 60);
    assert_eq!(view.samples.len(), 60, "an hour at one a minute");
    assert_eq!(
        view.samples[0].at,
        1_800_000_000 + 60 * 60,
        "the oldest hour is gone"
    );
    let last = view.samples.last().unwrap();
    assert_eq!(last.subscriptions_active, 1);
    let kept: Vec<&str> = last.partners.iter().map(|p| p.partner.as_str()).collect();
    assert_eq!(kept.len(), porchlight_node::history::MAX_CHARTED_PARTNERS);
    assert_eq!(kept[0], "p19.example");
    assert_eq!(last.partners[0].requests, 20);
}
