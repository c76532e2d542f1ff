//! The node's snapshot in the Prometheus text format (version 0.0.4). The
//! counters live in the event loop as plain integers and are read on each
//! scrape, so counting costs the SIP path nothing beyond an increment.

use std::fmt::Write;

use porchlight_server::status::{Status, Way};

/// One metric family: its help line, type and samples.
struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn start<'a>(out: &'a mut String, name: &str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out }
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (key, val)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{key}=\"{}\"", escape(val));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }
}

/// Label values escape backslash, double quote and newline.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders every metric of `status`.
pub fn render(status: &Status) -> String {
    let mut out = String::new();
    let mut single = |name: &str, kind: &str, help: &str, value: u64| {
        Family::start(&mut out, name, kind, help).sample(name, &[], value);
    };
    single(
        "porchlight_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        status.uptime_secs,
    );
    single(
        "porchlight_subscriptions_active",
        "gauge",
        "Subscriptions alive now.",
        status.subscriptions_active,
    );
    single(
        "porchlight_subscriptions_created_total",
        "counter",
        "New subscriptions accepted.",
        status.subscriptions_created,
    );
    single(
        "porchlight_subscriptions_refreshed_total",
        "counter",
        "Subscription refreshes accepted.",
        status.subscriptions_refreshed,
    );
    single(
        "porchlight_subscriptions_expired_total",
        "counter",
        "Subscriptions that ran out.",
        status.subscriptions_expired,
    );
    single(
        "porchlight_notifies_sent_total",
        "counter",
        "NOTIFY and BENOTIFY requests sent.",
        status.notifies_sent,
    );
    single(
        "porchlight_notifies_failed_total",
        "counter",
        "NOTIFYs that failed for good.",
        status.notifies_failed,
    );
    single(
        "porchlight_notifies_in_flight",
        "gauge",
        "NOTIFY transactions outstanding.",
        u64::from(status.notifies_in_flight),
    );
    single(
        "porchlight_connections",
        "gauge",
        "Open TCP and TLS connections.",
        status.connections as u64,
    );
    single(
        "porchlight_proxied_in_progress",
        "gauge",
        "Requests being proxied.",
        status.proxied_in_progress as u64,
    );
    single(
        "porchlight_parked_messages",
        "gauge",
        "Messages waiting for a destination to be found (queue depth).",
        status.parked as u64,
    );

    let name = "porchlight_transactions";
    let mut family = Family::start(&mut out, name, "gauge", "Live SIP transactions.");
    family.sample(name, &[("side", "server")], status.server_transactions);
    family.sample(name, &[("side", "client")], status.client_transactions);

    let name = "porchlight_dials_total";
    let mut family = Family::start(
        &mut out,
        name,
        "counter",
        "Destinations looked up and connected.",
    );
    family.sample(name, &[("outcome", "succeeded")], status.dials_succeeded);
    family.sample(name, &[("outcome", "failed")], status.dials_failed);

    let name = "porchlight_policy_decisions_total";
    let mut family = Family::start(
        &mut out,
        name,
        "counter",
        "Policy decisions by direction, kind and outcome.",
    );
    for d in &status.decisions {
        let way = match d.way {
            Way::Inbound => "inbound",
            Way::Outbound => "outbound",
        };
        let outcome = if d.allowed { "allow" } else { "deny" };
        family.sample(
            name,
            &[("way", way), ("kind", d.kind), ("outcome", outcome)],
            d.count,
        );
    }

    let name = "porchlight_partner_requests_total";
    let mut family = Family::start(
        &mut out,
        name,
        "counter",
        "Requests exchanged with each federated partner.",
    );
    for p in &status.partners {
        family.sample(
            name,
            &[("partner", &p.partner), ("direction", "in")],
            p.requests_in,
        );
        family.sample(
            name,
            &[("partner", &p.partner), ("direction", "out")],
            p.requests_out,
        );
    }

    let name = "porchlight_endpoint_watchers";
    let mut family = Family::start(
        &mut out,
        name,
        "gauge",
        "Subscriptions watching each endpoint.",
    );
    for e in &status.endpoints {
        family.sample(name, &[("endpoint", &e.uri)], e.watchers);
    }
    let name = "porchlight_endpoint_availability";
    let mut family = Family::start(
        &mut out,
        name,
        "gauge",
        "Each endpoint's availability on the Microsoft scale (3500 online, 18500 offline).",
    );
    for e in &status.endpoints {
        family.sample(
            name,
            &[("endpoint", &e.uri), ("band", e.availability)],
            e.availability_value,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
