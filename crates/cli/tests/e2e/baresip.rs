//! baresip (Debian `baresip-core`) as a real watcher: its presence module
//! subscribes to an endpoint and reports Online; the app behind the
//! endpoint is a second baresip that registers with digest credentials.
//! When the app dies its registration expires and the watcher sees
//! Offline; when the app's health URL recovers the watcher sees Online again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;

#[test]
fn baresip_watcher_follows_registration_and_health() {
    let healthy = Arc::new(AtomicBool::new(false));
    let health_port = health_server(healthy.clone());
    // libre 1.0 answers only the first challenge, and only MD5: this
    // endpoint offers MD5 alone, while the node's default (SHA-256 first)
    // stays for every other endpoint.
    let endpoint = format!(
        "\n[endpoint.registration]\npassword = \"s3cret\"\ndigest_algorithms = [\"MD5\"]\n\
         [endpoint.health]\nurl = \"http://127.0.0.1:{health_port}/health\"\ninterval_secs = 1\ntimeout_ms = 500\nfailures = 1\n"
    );
    let text = config(
        &[
            (
                "min_notify_interval_ms = 5000",
                "min_notify_interval_ms = 500",
            ),
            // Registrations short enough to watch one lapse.
            (
                "[registrar]\nmin_expires = 60",
                "[registrar]\nmin_expires = 5",
            ),
        ],
        "\n[[endpoint]]\nuri = \"sip:queue@contoso.com\"\ndisplay_name = \"Queue\"\n\
         [endpoint.registration]\npassword = \"other\"\n",
    );
    // Put the endpoint's sub-tables right after its keys.
    let text = text.replace(
        "note = \"Ask me anything\"\n",
        &format!("note = \"Ask me anything\"\n{endpoint}"),
    );
    let server = start("baresip", &text);
    let dir = temp_dir("baresip-peers");

    let app = Baresip::start(
        &dir.join("app"),
        free_port(),
        &["account"],
        &format!(
            "<sip:helpdesk@contoso.com>;auth_pass=s3cret;outbound=\"sip:{}\";regint=6",
            server.udp
        ),
        "",
    );
    app.expect("200 OK", Duration::from_secs(10));
    let challenges = |aor: &str| {
        let answers = udp_exchange(
            server.udp,
            &request("REGISTER", aor, &format!("Contact: <{aor}>\r\n")),
            Duration::from_millis(500),
        );
        let challenge = answers.last().expect("an answer to REGISTER");
        assert_eq!(challenge.status(), Some(401));
        challenge
            .values_named("WWW-Authenticate")
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect::<Vec<_>>()
    };
    let own = challenges("sip:helpdesk@contoso.com");
    assert!(
        own.len() == 1 && own[0].contains("algorithm=MD5"),
        "{own:?}"
    );
    let others = challenges("sip:queue@contoso.com");
    assert!(
        others.len() == 2
            && others[0].contains("algorithm=SHA-256")
            && others[1].contains("algorithm=MD5"),
        "{others:?}"
    );

    let watcher = Baresip::start(
        &dir.join("watcher"),
        free_port(),
        &["account", "contact", "presence"],
        "<sip:alice@127.0.0.1>;regint=0",
        &format!("\"Help Desk\" <sip:helpdesk@{}>;presence=p2p", server.udp),
    );
    watcher.expect("Subscribing to 1 contacts", Duration::from_secs(10));

    // The app dies without unregistering; its binding lapses.
    drop(app);
    watcher.expect(
        "changed status from Online to Offline",
        Duration::from_secs(20),
    );

    // The health URL recovers.
    healthy.store(true, Ordering::SeqCst);
    watcher.expect(
        "changed status from Offline to Online",
        Duration::from_secs(10),
    );
}
