//! The node's snapshot in the Prometheus text format (version 0.0.4). The
//! counters live in the event loop as plain integers and are read on each
//! scrape, so counting costs the SIP path nothing beyond an increment.

use std::fmt::Write;

use porchlight_server::status::Status;

/// One metric family: its help line, type and samples.
struct Family<'a> {
    out: &'a mut String,
    name: &'a str,
}

impl Family<'_> {
    fn start<'a>(out: &'a mut String, name: &'a str, kind: &str, help: &str) -> Family<'a> {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        Family { out, name }
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.out.push_str(self.name);
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
    let mut single = |name: &str, kind: &str, help: &str, value: &dyn std::fmt::Display| {
        Family::start(&mut out, name, kind, help).sample(&[], value);
    };
    single(
        "porchlight_uptime_seconds",
        "gauge",
        "Seconds since the node started.",
        &status.uptime_secs,
    );
    single(
        "porchlight_subscriptions_active",
        "gauge",
        "Subscriptions alive now.",
        &status.subscriptions_active,
    );
    single(
        "porchlight_subscriptions_created_total",
        "counter",
        "New subscriptions accepted.",
        &status.subscriptions_created,
    );
    single(
        "porchlight_subscriptions_refreshed_total",
        "counter",
        "Subscription refreshes accepted.",
        &status.subscriptions_refreshed,
    );
    single(
        "porchlight_subscriptions_expired_total",
        "counter",
        "Subscriptions that ran out.",
        &status.subscriptions_expired,
    );
    single(
        "porchlight_notifies_sent_total",
        "counter",
        "NOTIFY and BENOTIFY requests sent.",
        &status.notifies_sent,
    );
    single(
        "porchlight_notifies_failed_total",
        "counter",
        "NOTIFYs that failed for good.",
        &status.notifies_failed,
    );
    single(
        "porchlight_notifies_in_flight",
        "gauge",
        "NOTIFY transactions outstanding.",
        &status.notifies_in_flight,
    );
    single(
        "porchlight_connections",
        "gauge",
        "Open TCP and TLS connections.",
        &status.connections,
    );
    single(
        "porchlight_overloaded",
        "gauge",
        "1 while new work is shed (503 with Retry-After) for overload.",
        &u8::from(status.overloaded),
    );
    single(
        "porchlight_proxied_in_progress",
        "gauge",
        "Requests being proxied.",
        &status.proxied_in_progress,
    );
    single(
        "porchlight_im_sessions",
        "gauge",
        "IM sessions the node holds for webhook apps.",
        &status.im_sessions,
    );
    single(
        "porchlight_webhook_deliveries_in_progress",
        "gauge",
        "Webhook deliveries under way (attempts and retries).",
        &status.webhook_deliveries,
    );
    single(
        "porchlight_parked_messages",
        "gauge",
        "Messages waiting for a destination to be found (queue depth).",
        &status.parked,
    );
    single(
        "porchlight_backlogged_messages",
        "gauge",
        "Messages held for connections whose queue is full (peers reading slower than the node writes).",
        &status.backlogged,
    );

    if let Some(store) = &status.store {
        single(
            "porchlight_store_flushes_total",
            "counter",
            "Write-behind batches committed to the store.",
            &store.flushes,
        );
        single(
            "porchlight_store_records_written_total",
            "counter",
            "Subscription records saved or deleted in the store.",
            &store.records_written,
        );
        single(
            "porchlight_store_flush_failures_total",
            "counter",
            "Write-behind batches that failed to commit.",
            &store.failures,
        );
        single(
            "porchlight_store_pending_changes",
            "gauge",
            "Changed subscriptions not yet handed to the store writer (queue depth).",
            &store.pending_changes,
        );
        single(
            "porchlight_subscriptions_recovering",
            "gauge",
            "Subscriptions restored at start still owed their first NOTIFY.",
            &store.recovering,
        );
        single(
            "porchlight_store_flush_seconds_total",
            "counter",
            "Time spent committing write-behind batches; divide by flushes for the mean.",
            &store.flush_seconds_total,
        );
        single(
            "porchlight_store_flush_seconds_max",
            "gauge",
            "The longest write-behind commit since start.",
            &store.flush_seconds_max,
        );
    }

    if let Some(cluster) = &status.cluster {
        single(
            "porchlight_cluster_shared_total",
            "counter",
            "Changes of this node's presence sources written for the other nodes.",
            &cluster.shared,
        );
        single(
            "porchlight_cluster_applied_total",
            "counter",
            "Changes from other nodes applied here (events and whole reads).",
            &cluster.applied,
        );
        single(
            "porchlight_cluster_share_failures_total",
            "counter",
            "Changes not written at once (Redis slow or away); every endpoint is then read and written again.",
            &cluster.share_failures,
        );
        single(
            "porchlight_cluster_reloads_total",
            "counter",
            "Endpoints' shared presence read whole (at start, after a lost event or a moved slot).",
            &cluster.reloads,
        );
        single(
            "porchlight_cluster_takeovers_total",
            "counter",
            "Members whose subscriptions this node took over (their lease lapsed, or they were drained).",
            &cluster.takeovers,
        );
        let mut family = Family::start(
            &mut out,
            "porchlight_cluster_member_lease_seconds",
            "gauge",
            "Seconds each member's lease has left (0 when it lapsed: the member is gone).",
        );
        for m in &cluster.members {
            let node = m.node.to_string();
            let left = m.lease_left_ms.map_or(0.0, |ms| ms as f64 / 1000.0);
            family.sample(&[("node", &node), ("internal", &m.internal)], left);
        }
        let mut family = Family::start(
            &mut out,
            "porchlight_cluster_member_subscriptions",
            "gauge",
            "Subscriptions each member held at its last renewal.",
        );
        for m in &cluster.members {
            family.sample(&[("node", &m.node.to_string())], m.subscriptions);
        }
        let mut family = Family::start(
            &mut out,
            "porchlight_cluster_member_draining",
            "gauge",
            "1 for a member an admin drained (it takes no new watchers until restarted).",
        );
        for m in &cluster.members {
            family.sample(&[("node", &m.node.to_string())], u64::from(m.draining));
        }
    }

    let mut family = Family::start(
        &mut out,
        "porchlight_transactions",
        "gauge",
        "Live SIP transactions.",
    );
    family.sample(&[("side", "server")], status.server_transactions);
    family.sample(&[("side", "client")], status.client_transactions);

    let mut family = Family::start(
        &mut out,
        "porchlight_dials_total",
        "counter",
        "Destinations looked up and connected.",
    );
    family.sample(&[("outcome", "succeeded")], status.dials_succeeded);
    family.sample(&[("outcome", "failed")], status.dials_failed);

    let mut family = Family::start(
        &mut out,
        "porchlight_policy_decisions_total",
        "counter",
        "Policy decisions by direction, kind and outcome.",
    );
    for d in &status.decisions {
        let way = d.way.name();
        let outcome = if d.allowed { "allow" } else { "deny" };
        family.sample(
            &[("way", way), ("kind", d.kind), ("outcome", outcome)],
            d.count,
        );
    }

    let mut family = Family::start(
        &mut out,
        "porchlight_refused_total",
        "counter",
        "Connections and requests refused by a bound (limits, deadlines, guessing), by reason.",
    );
    for r in &status.refused {
        family.sample(&[("reason", &r.reason)], r.count);
    }

    let mut family = Family::start(
        &mut out,
        "porchlight_partner_requests_total",
        "counter",
        "Requests exchanged with each federated partner.",
    );
    for p in &status.partners {
        family.sample(
            &[("partner", &p.partner), ("direction", "in")],
            p.requests_in,
        );
        family.sample(
            &[("partner", &p.partner), ("direction", "out")],
            p.requests_out,
        );
    }
    let mut family = Family::start(
        &mut out,
        "porchlight_partner_refused_total",
        "counter",
        "Requests of each federated partner (the domain its certificate proves) the policy refused.",
    );
    for p in &status.partners {
        family.sample(&[("partner", &p.partner)], p.requests_refused);
    }

    if let Some(capture) = &status.capture {
        let mut family = Family::start(
            &mut out,
            "porchlight_capture_messages_total",
            "counter",
            "Copies of SIP messages for the HEP capture server, by outcome (dropped: queue full or too large; failed: refused by the socket).",
        );
        for (outcome, count) in [
            ("sent", capture.sent),
            ("dropped", capture.dropped),
            ("failed", capture.failed),
        ] {
            family.sample(&[("outcome", outcome)], count);
        }
    }

    if let Some(not_after) = status.certificate_not_after {
        Family::start(
            &mut out,
            "porchlight_tls_certificate_expiry_timestamp_seconds",
            "gauge",
            "When this node's TLS certificate expires (Unix seconds); partners refuse it after that.",
        )
        .sample(&[], not_after);
    }
    let mut family = Family::start(
        &mut out,
        "porchlight_partner_certificate_expiry_timestamp_seconds",
        "gauge",
        "When the TLS certificate each partner last presented expires (Unix seconds).",
    );
    for p in &status.partners {
        if let Some(not_after) = p.certificate_not_after {
            family.sample(&[("partner", &p.partner)], not_after);
        }
    }

    let mut family = Family::start(
        &mut out,
        "porchlight_endpoint_watchers",
        "gauge",
        "Subscriptions watching each endpoint.",
    );
    for e in &status.endpoints {
        family.sample(&[("endpoint", &e.uri)], e.watchers);
    }
    let mut family = Family::start(
        &mut out,
        "porchlight_endpoint_availability",
        "gauge",
        "Each endpoint's availability on the Microsoft scale (3500 online, 18500 offline).",
    );
    for e in &status.endpoints {
        family.sample(
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
