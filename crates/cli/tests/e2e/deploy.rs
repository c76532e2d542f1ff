//! What `deploy/` ships for operators is checked against the real thing:
//! the alerting rules load in Prometheus's own checker and fire as their
//! unit tests say, and every metric the rules and the dashboard name is
//! one a running node exports (the cluster's are checked on a cluster, in
//! `cluster`).

use std::process::Command;
use std::time::Duration;

use crate::common::*;

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_path("deploy/prometheus"))
        .output()
        .expect("promtool runs (scripts/test.sh installs it)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

#[test]
fn the_alerting_rules_load_and_fire_as_their_tests_say() {
    promtool(&["check", "rules", "porchlight-rules.yml"]);
    promtool(&["test", "rules", "porchlight-rules.test.yml"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_rules_and_dashboard_use_is_exported_by_a_node() {
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("deploy/grafana/porchlight.json")).unwrap(),
    )
    .expect("the dashboard is JSON");
    assert!(dashboard["panels"]
        .as_array()
        .is_some_and(|p| !p.is_empty()));

    // TLS (its certificate's expiry), a partner (its certificate's), the
    // store, and a capture server (nothing listens there: its copies fail).
    let pki = Pki::new("deploy-metrics");
    let capture = format!("\n[capture]\nhep = \"127.0.0.1:{}\"\n", free_port());
    let server = start(
        "deploy-metrics-node",
        &(pki.config(&[
            (
                "allowed_domains = []                 # e.g.",
                "allowed_domains = [{ domain = \"fabrikam.com\" }] #",
            ),
            ("history_interval_secs = 10", "history_interval_secs = 1"),
        ]) + &capture),
    );
    assert_eq!(alice_of_fabrikam_subscribes(&pki, &server).await, 200);

    // The console's history samples the partner's traffic too.
    let charted = eventually(Duration::from_secs(10), || {
        let history = server.api_get("/api/v1/history");
        history["samples"]
            .as_array()
            .and_then(|s| s.last())
            .is_some_and(|last| {
                last["partners"][0]["partner"] == "fabrikam.com"
                    && last["partners"][0]["requests"].as_u64() >= Some(1)
            })
    });
    assert!(charted, "{}", server.api_get("/api/v1/history"));

    let wanted: Vec<String> = deploy_metric_names()
        .into_iter()
        .filter(|n| !n.starts_with("porchlight_cluster_"))
        .collect();
    let mut exported = Default::default();
    let all_there = eventually(Duration::from_secs(10), || {
        exported = exported_metric_names(&server.metrics());
        wanted.iter().all(|n| exported.contains(n))
    });
    let missing: Vec<_> = wanted.iter().filter(|n| !exported.contains(*n)).collect();
    assert!(all_there, "not exported: {missing:?}");
    assert!(wanted.len() >= 30, "the names were read: {wanted:?}");

    // And the text itself passes Prometheus's linter.
    let metrics = server.metrics();
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    lint.stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
