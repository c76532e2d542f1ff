//! Endpoints added, changed and removed while the node runs, through the
//! provisioning commands against its admin API: a new endpoint can be
//! watched and registered with at once, a change reaches its watchers (a
//! raw SIP watcher and baresip's presence module), new credentials drop the
//! contacts registered with the old ones, a replaced health probe stops
//! reporting, and a removed endpoint's watchers are told `noresource`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;

const QUEUE: &str = "sip:queue@contoso.com";

/// The queue as the admin API shows it, or the HTTP status when it is not there.
fn queue_view(server: &Server) -> Result<serde_json::Value, u16> {
    let (admin, bearer) = server.api();
    let url = format!("http://{admin}/api/v1/endpoints/{QUEUE}");
    match ureq::get(&url).set("Authorization", &bearer).call() {
        Ok(r) => Ok(r.into_json().unwrap()),
        Err(ureq::Error::Status(code, _)) => Err(code),
        Err(e) => panic!("GET {url}: {e}"),
    }
}

#[test]
fn endpoints_are_added_changed_and_removed_while_the_node_runs() {
    let healthy = Arc::new(AtomicBool::new(true));
    let health_port = health_server(healthy.clone());
    // The admin API on a fixed port, so the commands find the node from
    // its file alone.
    let admin = format!("listen = \"127.0.0.1:{}\"", free_port());
    let text = config(
        &[
            ("listen = \"127.0.0.1:0\"", admin.as_str()),
            (
                "min_notify_interval_ms = 5000",
                "min_notify_interval_ms = 200",
            ),
            // libre 1.0 answers only MD5 challenges.
            (
                "digest_algorithms = [\"SHA-256\", \"MD5\"]",
                "digest_algorithms = [\"MD5\"]",
            ),
        ],
        "",
    );
    let server = start("live-endpoints", &text);
    let file = server.dir.join("porchlight.toml");
    let mut watcher = Watcher::new(server.udp, QUEUE, "sip:watcher@127.0.0.1");

    // Not an endpoint yet.
    assert_eq!(watcher.subscribe(600).status(), Some(404));
    assert_eq!(queue_view(&server).err(), Some(404));

    // Added: watchable at once, by a raw watcher and by baresip.
    let said = porchlight_ok(
        &file,
        &["endpoint", "add", QUEUE, "--name", "Support Queue"],
    );
    assert!(said.contains(&format!("added: {QUEUE}")), "{said}");
    assert_eq!(watcher.subscribe(600).status(), Some(200));
    watcher.expect_notify(
        "<c:display-name>Support Queue</c:display-name>",
        Duration::from_secs(5),
    );
    let peers = temp_dir("live-endpoints-peers");
    let alice = Baresip::start(
        &peers.join("watcher"),
        free_port(),
        &["account", "contact", "presence"],
        "<sip:alice@127.0.0.1>;regint=0",
        &format!("\"Queue\" <sip:queue@{}>;presence=p2p", server.udp),
    );
    alice.expect_status("Queue", "Online", Duration::from_secs(10));

    // Changed: a new name and state reach both watchers.
    let said = porchlight_ok(
        &file,
        &[
            "endpoint",
            "set",
            QUEUE,
            "availability=busy",
            "display_name=Support",
        ],
    );
    assert!(said.contains(&format!("changed: {QUEUE}")), "{said}");
    let busy = watcher.expect_notify("<rpid:busy/>", Duration::from_secs(5));
    assert!(
        String::from_utf8_lossy(busy.body()).contains("<c:display-name>Support</c:display-name>")
    );
    alice.expect_status("Queue", "Busy", Duration::from_secs(10));

    // A health probe added at run time decides; replaced, the old one
    // stops reporting (its app still answers 200, the new URL nothing).
    porchlight_ok(
        &file,
        &[
            "endpoint",
            "set",
            QUEUE,
            "availability=online",
            &format!("health.url=http://127.0.0.1:{health_port}/health"),
            "health.interval_secs=1",
            "health.timeout_ms=300",
            "health.failures=1",
        ],
    );
    // The new probe's first verdict decides; wait for it to report.
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue_view(&server).unwrap()["healthy"] != true {
        assert!(
            Instant::now() < deadline,
            "the health probe never reported healthy"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    watcher.expect_notify("<basic>open</basic>", Duration::from_secs(5));
    let dead = free_port();
    porchlight_ok(
        &file,
        &[
            "endpoint",
            "set",
            QUEUE,
            &format!("health.url=http://127.0.0.1:{dead}/health"),
        ],
    );
    watcher.expect_notify("<basic>closed</basic>", Duration::from_secs(5));
    alice.expect_status("Queue", "Offline", Duration::from_secs(10));
    // For three probe intervals it stays down: had the first probe kept
    // counting, its 200s would bring the queue back up between the new
    // probe's failures, and the watcher would hear of it.
    let heard = watcher.notifies_within(Duration::from_secs(3));
    assert!(
        heard.iter().all(|n| !n.contains("<basic>open</basic>")),
        "the queue came back up: {heard:?}"
    );
    let view = queue_view(&server).unwrap();
    assert_eq!(view["healthy"], false, "{view}");
    assert_eq!(view["availability"], "offline", "{view}");

    // Registration added at run time: a real app registers with it at once.
    porchlight_ok(
        &file,
        &["endpoint", "set", QUEUE, "registration.password=s3cret"],
    );
    // The queue's app: baresip registering with `password`.
    let registered_app = |name: &str, password: &str| {
        let app = Baresip::start(
            &peers.join(name),
            free_port(),
            &["account"],
            &format!(
                "<{QUEUE}>;auth_pass={password};outbound=\"sip:{}\";regint=600",
                server.udp
            ),
            "",
        );
        app.expect("200 OK", Duration::from_secs(10));
        app
    };
    let _first_app = registered_app("app", "s3cret");
    watcher.expect_notify("<basic>open</basic>", Duration::from_secs(5));
    assert_eq!(queue_view(&server).unwrap()["registered"], true);
    alice.expect_status("Queue", "Online", Duration::from_secs(10));

    // A new password: the contact registered with the old one is dropped.
    porchlight_ok(
        &file,
        &["endpoint", "set", QUEUE, "registration.password=n3w"],
    );
    watcher.expect_notify("<basic>closed</basic>", Duration::from_secs(5));
    assert_eq!(queue_view(&server).unwrap()["registered"], false);

    // State the store keeps for it: a contact registered with the new
    // password, and presence an admin set.
    let app = registered_app("app-again", "n3w");
    let away = [
        "endpoint",
        "presence",
        "set",
        QUEUE,
        "away",
        "--note",
        "Back at 2",
    ];
    let said = porchlight_ok(&file, &away);
    assert!(said.contains("set by an admin"), "{said}");
    watcher.expect_notify("Back at 2", Duration::from_secs(5));
    // A change of the endpoint's own state says the admin's setting wins.
    let said = porchlight_ok(&file, &["endpoint", "set", QUEUE, "availability=busy"]);
    assert!(
        said.contains("an admin's presence setting (away) outranks this")
            && said.contains("porchlight endpoint presence clear"),
        "{said}"
    );
    assert_eq!(queue_view(&server).unwrap()["availability"], "away");
    let said = porchlight_ok(&file, &["endpoint", "presence", "clear", QUEUE]);
    assert!(said.contains("cleared"), "{said}");
    watcher.expect_notify("<basic>open</basic>", Duration::from_secs(5));
    porchlight_ok(&file, &away);
    watcher.expect_notify("Back at 2", Duration::from_secs(5));

    // Removed: the watcher is told not to come back, and nothing is left.
    let said = porchlight_ok(&file, &["endpoint", "remove", QUEUE]);
    assert!(said.contains(&format!("removed: {QUEUE}")), "{said}");
    let last = watcher.expect_notify("Subscription-State", Duration::from_secs(5));
    assert_eq!(
        std::str::from_utf8(last.values_named("Subscription-State").next().unwrap()).unwrap(),
        "terminated;reason=noresource"
    );
    assert!(String::from_utf8_lossy(last.body()).contains("<basic>closed</basic>"));
    assert_eq!(
        watcher.subscribe(600).status(),
        Some(481),
        "the dialog is over"
    );
    watcher.new_dialog();
    assert_eq!(watcher.subscribe(600).status(), Some(404));
    assert_eq!(queue_view(&server).err(), Some(404));
    // baresip's subscription ended the same way.
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.api_get("/api/v1/status")["subscriptions_active"] != 0 {
        assert!(Instant::now() < deadline, "subscriptions are left");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop((app, alice));

    // Added again: served from scratch, no old registration or state.
    porchlight_ok(&file, &["endpoint", "add", QUEUE, "--name", "Queue"]);
    assert_eq!(watcher.subscribe(600).status(), Some(200));
    let fresh = watcher.expect_notify("<basic>open</basic>", Duration::from_secs(5));
    assert!(!String::from_utf8_lossy(fresh.body()).contains("Back at 2"));
    let view = queue_view(&server).unwrap();
    assert_eq!(view["registered"], serde_json::Value::Null, "{view}");
    assert_eq!(view["set_by_admin"], false, "{view}");
    assert_eq!(view["watchers"], 1, "{view}");

    // Removed once more, then the node is killed: its store kept nothing
    // of the queue (the help desk never had any state) but the endpoints
    // document, which no longer lists it.
    porchlight_ok(&file, &["endpoint", "remove", QUEUE]);
    std::thread::sleep(Duration::from_millis(500));
    let mut server = server;
    server.kill_9();
    let offline = porchlight_ok(&file, &["status"]);
    assert!(
        offline.contains("subscriptions            0\n"),
        "{offline}"
    );
    assert!(offline.contains("registered contacts      0 "), "{offline}");
    assert!(offline.contains("presence set by an admin 0 "), "{offline}");
    assert!(!porchlight_ok(&file, &["config", "export"]).contains(QUEUE));
}
