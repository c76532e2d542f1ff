//! State that survives `kill -9`: subscriptions acknowledged before the
//! last write-behind flush come back after a restart with their dialogs
//! (tags, CSeq, expiry), are re-notified paced over the recovery window,
//! keep receiving NOTIFYs (a real baresip watcher among them) and can be
//! refreshed; a registered app's binding survives too, so its endpoint is
//! Online from the first moment. A damaged store stops the start with a
//! clear error.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use porchlight_sip::Message;

const WATCHERS: usize = 100;

/// The node's configuration: a fixed UDP port (watchers keep sending
/// refreshes to the Contact they were given), a short recovery window, and
/// the help desk's presence following a health URL the test controls.
fn persistent_config(udp_port: u16, health_port: u16) -> String {
    config(
        &[
            (
                "udp = [\"127.0.0.1:0\"]",
                &format!("udp = [\"127.0.0.1:{udp_port}\"]"),
            ),
            (
                "min_notify_interval_ms = 5000",
                "min_notify_interval_ms = 0",
            ),
            ("renotify_window_secs = 30", "renotify_window_secs = 2"),
            // libre 1.0 answers only MD5 challenges.
            (
                "digest_algorithms = [\"SHA-256\", \"MD5\"]",
                "digest_algorithms = [\"MD5\"]",
            ),
            (HELPDESK_NOTE, &with_health_probe(health_port)),
        ],
        // An IVR whose app registers: its registration must survive too.
        "\n[[endpoint]]\nuri = \"sip:ivr@contoso.com\"\ndisplay_name = \"IVR\"\n\
         [endpoint.registration]\npassword = \"s3cret\"\n",
    )
}

/// One NOTIFY per watcher (by Call-ID) that satisfies `want`, with when it came.
fn notifies_until_all(
    socket: &UdpSocket,
    within: Duration,
    want: impl Fn(&Message) -> bool,
) -> HashMap<String, (Message, Instant)> {
    let deadline = Instant::now() + within;
    let mut seen = HashMap::new();
    while seen.len() < WATCHERS && Instant::now() < deadline {
        let Some(m) = receive_answering(socket) else {
            continue;
        };
        if m.method() == Some("NOTIFY") && want(&m) {
            let call_id = m.call_id().unwrap().to_owned();
            seen.entry(call_id).or_insert((m, Instant::now()));
        }
    }
    seen
}

fn body(m: &Message) -> &str {
    std::str::from_utf8(m.body()).unwrap()
}

fn subscribe(w: std::net::SocketAddr, i: usize, cseq: u32, to_tag: Option<&str>) -> String {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "SUBSCRIBE sip:helpdesk@contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP {w};branch=z9hG4bKp{i}c{cseq};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:watcher{i}@fabrikam.com>;tag=w{i}\r\nTo: <sip:helpdesk@contoso.com>{to_tag}\r\n\
         Call-ID: persist-{i}\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <sip:watcher{i}@{w}>\r\nEvent: presence\r\n\
         Expires: 3600\r\nContent-Length: 0\r\n\r\n"
    )
}

fn status(server: &Server) -> serde_json::Value {
    server.api_get("/api/v1/status")
}

#[test]
fn subscriptions_survive_kill_9_and_keep_receiving_notifies() {
    let healthy = Arc::new(AtomicBool::new(true));
    let health_port = health_server(healthy.clone());
    let udp_port = free_port();
    let mut server = start("persist", &persistent_config(udp_port, health_port));
    let config_path = server.dir.join("porchlight.toml");

    // A hundred watchers on one socket, each its own dialog.
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let w = socket.local_addr().unwrap();
    for i in 0..WATCHERS {
        socket
            .send_to(subscribe(w, i, 1, None).as_bytes(), server.udp)
            .unwrap();
    }
    let mut tags = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut first = HashMap::new();
    // Until every watcher has seen the first health probe's Online.
    let online =
        |first: &HashMap<String, (u32, bool)>| first.values().filter(|(_, open)| *open).count();
    while (tags.len() < WATCHERS || online(&first) < WATCHERS) && Instant::now() < deadline {
        let Some(m) = receive_answering(&socket) else {
            continue;
        };
        let call_id = m.call_id().unwrap().to_owned();
        if m.status() == Some(200) {
            tags.insert(call_id, m.to().unwrap().tag().unwrap().to_owned());
        } else if m.method() == Some("NOTIFY") {
            let open = body(&m).contains("<basic>open</basic>");
            first.insert(call_id, (m.cseq().unwrap().seq, open));
        }
    }
    assert_eq!(tags.len(), WATCHERS, "every subscription accepted");
    assert_eq!(online(&first), WATCHERS, "every watcher sees Online");
    let first: HashMap<String, u32> = first.into_iter().map(|(k, (cseq, _))| (k, cseq)).collect();

    // A real client watching too: baresip's presence module.
    let peers = temp_dir("persist-peers");
    let watcher = Baresip::start(
        &peers.join("watcher"),
        free_port(),
        &["account", "contact", "presence"],
        "<sip:alice@127.0.0.1>;regint=0",
        &format!("\"Help Desk\" <sip:helpdesk@127.0.0.1:{udp_port}>;presence=p2p"),
    );
    watcher.expect_status("Help Desk", "Online", Duration::from_secs(10));

    // The IVR's app registers (and would not again for ten minutes).
    let app = Baresip::start(
        &peers.join("app"),
        free_port(),
        &["account"],
        &format!(
            "<sip:ivr@contoso.com>;auth_pass=s3cret;outbound=\"sip:127.0.0.1:{udp_port}\";regint=600"
        ),
        "",
    );
    app.expect("200 OK", Duration::from_secs(10));

    // Well past one flush interval (100 ms), then kill -9.
    std::thread::sleep(Duration::from_millis(500));
    server.kill_9();
    let restarted_at = Instant::now();
    let server = start_with_file(&config_path, server.dir.clone());
    let status = status(&server);
    assert_eq!(
        status["store"]["restored"],
        WATCHERS + 1,
        "all subscriptions back: {status}"
    );
    assert_eq!(status["subscriptions_active"], WATCHERS + 1);
    let ivr = status["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["uri"] == "sip:ivr@contoso.com")
        .unwrap();
    assert_eq!(
        ivr["registered"], true,
        "the app's registration is back: {ivr}"
    );
    assert_eq!(ivr["availability"], "online");

    // Each dialog is re-notified once, its CSeq carrying on, spread over
    // the two-second window rather than in one burst.
    let renotified = notifies_until_all(&socket, Duration::from_secs(10), |_| true);
    assert_eq!(renotified.len(), WATCHERS, "every watcher re-notified");
    for (call_id, (m, _)) in &renotified {
        assert_eq!(m.cseq().unwrap().seq, first[call_id] + 1);
        assert!(
            body(m).contains("<basic>open</basic>"),
            "the endpoint's real state once its probe reported, not a start-up Offline"
        );
        assert_eq!(m.from().unwrap().tag(), Some(tags[call_id].as_str()));
        let state = std::str::from_utf8(m.values_named("Subscription-State").next().unwrap())
            .unwrap()
            .to_owned();
        let left: u64 = state.trim_start_matches("active;expires=").parse().unwrap();
        assert!(
            (3500..3600).contains(&left),
            "the expiry carries on: {state}"
        );
    }
    let times: Vec<Instant> = renotified.values().map(|(_, at)| *at).collect();
    let spread = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    assert!(
        spread >= Duration::from_millis(1200),
        "re-notifies paced over the window, not a storm: all within {spread:?}"
    );
    assert!(restarted_at.elapsed() < Duration::from_secs(15));

    // Presence changes reach every restored dialog, baresip's included.
    healthy.store(false, Ordering::SeqCst);
    let offline = notifies_until_all(&socket, Duration::from_secs(10), |m| {
        body(m).contains("<basic>closed</basic>")
    });
    assert_eq!(offline.len(), WATCHERS, "every watcher hears the change");
    for (call_id, (m, _)) in &offline {
        assert_eq!(m.cseq().unwrap().seq, first[call_id] + 2);
    }
    watcher.expect_status("Help Desk", "Offline", Duration::from_secs(10));

    // A watcher refreshes with the To tag it was given before the crash.
    socket
        .send_to(
            subscribe(w, 7, 2, Some(&tags["persist-7"])).as_bytes(),
            server.udp,
        )
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let answer = loop {
        assert!(Instant::now() < deadline, "no answer to the refresh");
        let Some(m) = receive_answering(&socket) else {
            continue;
        };
        if m.status().is_some() && m.call_id().unwrap() == "persist-7" {
            break m;
        }
    };
    assert_eq!(
        answer.status(),
        Some(200),
        "the dialog is known after the restart"
    );
}

#[test]
fn a_damaged_store_stops_the_start_with_a_clear_error() {
    let healthy = Arc::new(AtomicBool::new(true));
    let health_port = health_server(healthy);
    let server = start(
        "persist-damaged",
        &persistent_config(free_port(), health_port),
    );
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let w = socket.local_addr().unwrap();
    socket
        .send_to(subscribe(w, 1, 1, None).as_bytes(), server.udp)
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let dir = server.dir.clone();
    drop(server);

    // Overwrite every file of the store with garbage of the same length.
    let store = dir.join("porchlight-data");
    let mut damaged = 0;
    let mut stack = vec![store.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.file_name().unwrap() != "lock" {
                let len = std::fs::metadata(&path).unwrap().len() as usize;
                std::fs::write(&path, vec![0xA5u8; len.max(16)]).unwrap();
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0, "the store has files");
    let out = Command::new(env!("CARGO_BIN_EXE_porchlight"))
        .args(["serve", "--config"])
        .arg(dir.join("porchlight.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not start");
    assert!(
        stderr.contains(&store.display().to_string()) && stderr.contains("store"),
        "the error names the store: {stderr}"
    );
    assert!(
        stderr.contains("move it aside") || stderr.contains("Move the directory aside"),
        "the error says what to do: {stderr}"
    );
    assert!(store.exists(), "nothing is deleted");
}

#[test]
fn an_admins_presence_setting_survives_a_restart() {
    let server = start("persist-admin", &config(&[], ""));
    let token = std::fs::read_to_string(server.dir.join("porchlight-admin.token")).unwrap();
    let url = |s: &Server| {
        format!(
            "http://{}/api/v1/endpoints/sip:helpdesk@contoso.com/presence",
            s.admin.unwrap()
        )
    };
    ureq::put(&url(&server))
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .send_json(serde_json::json!({"availability": "dnd", "note": "Maintenance until 14:00"}))
        .unwrap();
    let mut server = server;
    server.kill_9();
    let server = start_with_file(&server.dir.join("porchlight.toml"), server.dir.clone());
    let helpdesk = |status: &serde_json::Value| {
        status["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["uri"] == "sip:helpdesk@contoso.com")
            .unwrap()
            .clone()
    };
    let view = helpdesk(&status(&server));
    assert_eq!(view["availability"], "do-not-disturb", "{view}");
    assert_eq!(view["note"], "Maintenance until 14:00");
    assert_eq!(view["set_by_admin"], true);

    // Cleared, it stays cleared across the next restart.
    ureq::delete(&url(&server))
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .call()
        .unwrap();
    let mut server = server;
    server.kill_9();
    let server = start_with_file(&server.dir.join("porchlight.toml"), server.dir.clone());
    let view = helpdesk(&status(&server));
    assert_eq!(view["availability"], "online", "{view}");
    assert_eq!(view["set_by_admin"], false);

    // Set again, then the endpoint is removed: its setting goes with it,
    // and an endpoint added again under the URI starts from its own state.
    ureq::put(&url(&server))
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .send_json(serde_json::json!({"availability": "away"}))
        .unwrap();
    let mut server = server;
    server.kill_9();
    let file = server.dir.join("porchlight.toml");
    let configured = std::fs::read_to_string(&file).unwrap();
    let without = configured.replace("sip:helpdesk@contoso.com", "sip:frontdesk@contoso.com");
    std::fs::write(&file, &without).unwrap();
    let mut server = start_with_file(&file, server.dir.clone());
    server.kill_9();
    std::fs::write(&file, &configured).unwrap();
    let server = start_with_file(&file, server.dir.clone());
    let view = helpdesk(&status(&server));
    assert_eq!(view["availability"], "online", "{view}");
    assert_eq!(view["set_by_admin"], false);
}

#[test]
fn an_apps_publication_survives_kill_9() {
    let text = config(
        &[(
            "digest_algorithms = [\"SHA-256\", \"MD5\"]",
            "digest_algorithms = [\"MD5\"]",
        )],
        "\n[[endpoint]]\nuri = \"sip:desk@contoso.com\"\ndisplay_name = \"Desk\"\n\
         [endpoint.registration]\npassword = \"s3cret\"\n",
    );
    let server = start("persist-publish", &text);
    let desk = |server: &Server| {
        status(server)["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["uri"] == "sip:desk@contoso.com")
            .unwrap()
            .clone()
    };
    let wait_for = |server: &Server, availability: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let view = desk(server);
            if view["availability"] == availability {
                return view;
            }
            assert!(Instant::now() < deadline, "never {availability}: {view}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // The app registers, publishes itself open (baresip's presence module,
    // RFC 3903 with digest), then closed.
    let app = Baresip::start(
        &temp_dir("persist-publish-app"),
        free_port(),
        &["account", "presence"],
        &format!(
            "<sip:desk@contoso.com>;auth_pass=s3cret;outbound=\"sip:{}\";regint=600;pubint=600",
            server.udp
        ),
        "",
    );
    app.expect("200 OK", Duration::from_secs(10));
    wait_for(&server, "online");
    app.command("/presence_offline");
    wait_for(&server, "offline");
    drop(app);
    // Past a flush interval, then a crash: the registration alone would
    // say Online; the publication, restored, still says Offline.
    std::thread::sleep(Duration::from_millis(500));
    let mut server = server;
    server.kill_9();
    // While it is down, the commands show what its store will bring back.
    let file = server.dir.join("porchlight.toml");
    let said = porchlight_ok(&file, &["status"]);
    assert!(said.contains("the node is not running"), "{said}");
    assert!(
        said.contains("registered contacts      1 (of 1 endpoints)"),
        "{said}"
    );
    // baresip publishes anew rather than modifying, so there may be two.
    let publications = said
        .lines()
        .find_map(|l| l.strip_prefix("publications "))
        .unwrap_or_default();
    assert!(
        publications.trim_start().starts_with(['1', '2'])
            && publications.ends_with("(of 1 endpoints)"),
        "{said}"
    );
    let said = porchlight_ok(&file, &["endpoint", "show", "sip:desk@contoso.com"]);
    assert!(said.contains("  registered sip:desk"), "{said}");
    assert!(said.contains("published offline"), "{said}");
    let server = start_with_file(&file, server.dir.clone());
    let view = desk(&server);
    assert_eq!(view["registered"], true, "{view}");
    assert_eq!(view["availability"], "offline", "{view}");
}
