//! The web console end to end in headless Chromium (Debian `chromium`,
//! driven over WebDriver by `chromedriver`): the page opens with the token
//! from its address and drops it from there, shows the endpoints with live
//! presence and watcher counts, sees the help desk flip from Online to
//! Offline when its health URL fails, sets an endpoint's presence through
//! its form, and leaves a screenshot.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::*;
use base64::Engine as _;
use serde_json::{json, Value};

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn webdriver(method: &str, url: &str, body: Option<Value>) -> Value {
    try_webdriver(method, url, body).unwrap_or_else(|e| panic!("{e}"))
}

/// A WebDriver command: its value, or what went wrong, as text.
fn try_webdriver(method: &str, url: &str, body: Option<Value>) -> Result<Value, String> {
    let request = ureq::request(method, url).timeout(Duration::from_secs(60));
    let response = match body {
        Some(body) => request.send_json(body),
        None => request.call(),
    };
    match response {
        Ok(r) => Ok(r.into_json::<Value>().unwrap()["value"].take()),
        Err(ureq::Error::Status(code, r)) => Err(format!(
            "{method} {url}: {code} {}",
            r.into_string().unwrap_or_default()
        )),
        Err(e) => Err(format!("{method} {url}: {e}")),
    }
}

impl Browser {
    fn start() -> Browser {
        let port = free_port();
        let mut driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver is installed (scripts/test.sh installs chromium-driver)");
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{base}/status")).call().is_err() {
            if Instant::now() > deadline {
                let _ = driver.kill();
                panic!("chromedriver never answered");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1200,1000"]
            }
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
        };
        let created = webdriver(
            "POST",
            &format!("{}/session", browser.base),
            Some(capabilities),
        );
        browser.session = created["sessionId"].as_str().unwrap().to_owned();
        browser
    }

    fn url(&self, path: &str) -> String {
        format!("{}/session/{}{path}", self.base, self.session)
    }

    fn open(&self, address: &str) {
        webdriver("POST", &self.url("/url"), Some(json!({ "url": address })));
    }

    fn script(&self, script: &str) -> Value {
        webdriver(
            "POST",
            &self.url("/execute/sync"),
            Some(json!({ "script": script, "args": [] })),
        )
    }

    /// Waits until `script` returns `want`, failing with what it last returned.
    fn wait_for(&self, script: &str, want: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let got = self.script(script);
            if got.as_str() == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "waited for {want:?} from {script}, last got {got}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn element(&self, css: &str) -> String {
        let found = webdriver(
            "POST",
            &self.url("/element"),
            Some(json!({ "using": "css selector", "value": css })),
        );
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Clicks the element `css` finds. The console redraws its tables as
    /// presence changes, so an element found just before a redraw is gone
    /// by the click ("stale"): it is found again, a bounded number of times.
    fn click(&self, css: &str) {
        for _ in 0..10 {
            let id = self.element(css);
            let url = self.url(&format!("/element/{id}/click"));
            match try_webdriver("POST", &url, Some(json!({}))) {
                Ok(_) => return,
                Err(e) if e.contains("stale element reference") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{css} went stale at every one of 10 clicks");
    }

    fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css);
        webdriver(
            "POST",
            &self.url(&format!("/element/{id}/value")),
            Some(json!({ "text": text })),
        );
    }

    fn screenshot(&self) -> Vec<u8> {
        let encoded = webdriver("GET", &self.url("/screenshot"), None);
        base64::engine::general_purpose::STANDARD
            .decode(encoded.as_str().unwrap())
            .unwrap()
    }
}

/// The text of one endpoint's cell, by the cell's class.
fn cell(uri: &str, class: &str) -> String {
    format!(
        "const row = document.querySelector('tr[data-endpoint=\"{uri}\"]'); \
         return row ? row.querySelector('.{class}').textContent : 'no row';"
    )
}

#[test]
fn the_console_shows_live_presence_and_sets_it() {
    let healthy = Arc::new(AtomicBool::new(true));
    let health_port = health_server(healthy.clone());
    let more_endpoints =
        "\n[[endpoint]]\nuri = \"sip:ivr@contoso.com\"\ndisplay_name = \"Contoso IVR\"\n\
        availability = \"online\"\n\n[[endpoint]]\nuri = \"sip:sales-queue@contoso.com\"\n\
        display_name = \"Sales queue\"\navailability = \"away\"\nnote = \"Back at 9:00\"\n";
    let server = start(
        "console",
        &config(
            &[
                (HELPDESK_NOTE, &with_health_probe(health_port)),
                ("history_interval_secs = 10", "history_interval_secs = 1"),
            ],
            more_endpoints,
        ),
    );
    let admin: SocketAddr = server.admin.unwrap();
    let token = std::fs::read_to_string(server.dir.join("porchlight-admin.token")).unwrap();

    // A watcher, so the console has a count to show.
    let watcher = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let w = watcher.local_addr().unwrap();
    let subscribe = subscribe_to_helpdesk(w, "console-watch", "c1");
    watcher.send_to(subscribe.as_bytes(), server.udp).unwrap();

    let browser = Browser::start();
    browser.open(&format!("http://{admin}/#token={}", token.trim()));
    let helpdesk = "sip:helpdesk@contoso.com";
    browser.wait_for(
        &cell(helpdesk, "availability"),
        "Online",
        Duration::from_secs(15),
    );
    browser.wait_for(&cell(helpdesk, "watchers"), "1", Duration::from_secs(10));
    // The last hour's charts, from the samples the node takes of itself
    // (one a second here): the subscription, and the NOTIFYs sent for it.
    browser.wait_for(
        "const f = document.querySelector('#chart-subscriptions'); \
         return Number(f.dataset.points) >= 2 && f.dataset.last === '1' \
         && f.querySelectorAll('polyline').length === 1 ? 'charted' : 'not yet';",
        "charted",
        Duration::from_secs(15),
    );
    browser.wait_for(
        "const f = document.querySelector('#chart-notifies'); \
         return Number(f.dataset.points) >= 1 && f.querySelectorAll('polyline').length === 2 \
         ? 'charted' : 'not yet';",
        "charted",
        Duration::from_secs(15),
    );
    // A few more samples, so the charts show a line, then a picture of them.
    browser.wait_for(
        "return Number(document.querySelector('#chart-subscriptions').dataset.points) >= 5 ? 'charted' : 'not yet';",
        "charted",
        Duration::from_secs(15),
    );
    browser.script("document.querySelector('#history').scrollIntoView(); return null;");
    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    std::fs::write(server.dir.join("console-history.png"), &png).unwrap();
    if let Ok(path) = std::env::var("PORCHLIGHT_CONSOLE_HISTORY_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }
    assert_eq!(
        browser.script("return location.href.includes('token=') ? 'kept' : 'dropped';"),
        "dropped",
        "the token leaves the address bar"
    );

    // The app's health URL fails: the console follows within a refresh.
    healthy.store(false, Ordering::SeqCst);
    browser.wait_for(
        &cell(helpdesk, "availability"),
        "Offline",
        Duration::from_secs(15),
    );

    // The form sets the IVR Busy with a note; the API agrees.
    browser.click("#presence-form select[name=endpoint] option[value=\"sip:ivr@contoso.com\"]");
    browser.click("#presence-form select[name=availability] option[value=busy]");
    browser.type_into("#presence-form input[name=note]", "In a maintenance window");
    browser.click("#presence-form button[name=set]");
    let ivr = "sip:ivr@contoso.com";
    browser.wait_for(&cell(ivr, "availability"), "Busy", Duration::from_secs(10));
    let endpoints: Value = ureq::get(&format!("http://{admin}/api/v1/endpoints"))
        .set("Authorization", &format!("Bearer {}", token.trim()))
        .call()
        .unwrap()
        .into_json()
        .unwrap();
    let ivr_view = endpoints
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["uri"] == ivr)
        .unwrap();
    assert_eq!(ivr_view["availability"], "busy");
    assert_eq!(ivr_view["note"], "In a maintenance window");
    assert_eq!(ivr_view["set_by_admin"], true);

    // The federation form: allow a partner, see blocking it refused while
    // it is allowed, take it off, block another; the API agrees each time.
    let lists = || -> Value {
        ureq::get(&format!("http://{admin}/api/v1/federation"))
            .set("Authorization", &format!("Bearer {}", token.trim()))
            .call()
            .unwrap()
            .into_json()
            .unwrap()
    };
    let listed = |domain: &str| {
        format!(
            "const li = document.querySelector('#federation-lists li[data-domain=\"{domain}\"]'); \
             return li ? li.dataset.list : 'absent';"
        )
    };
    browser.type_into("#federation-form input[name=domain]", "fabrikam.com");
    browser.click("#federation-form button[name=allow]");
    browser.wait_for(&listed("fabrikam.com"), "allowed", Duration::from_secs(10));
    assert_eq!(lists()["allowed"][0]["domain"], "fabrikam.com");
    browser.click("#federation-form button[name=block]");
    browser.wait_for(
        "return document.querySelector('#federation-result').textContent.includes('is allowed; remove it') ? 'refused' : 'not yet';",
        "refused",
        Duration::from_secs(10),
    );
    browser.click("#federation-form button[name=remove]");
    browser.wait_for(&listed("fabrikam.com"), "absent", Duration::from_secs(10));
    browser.script(
        "document.querySelector('#federation-form input[name=domain]').value = ''; return null;",
    );
    browser.type_into("#federation-form input[name=domain]", "evil.example");
    browser.click("#federation-form button[name=block]");
    browser.wait_for(&listed("evil.example"), "blocked", Duration::from_secs(10));
    let now = lists();
    assert_eq!(now["allowed"], serde_json::json!([]));
    assert_eq!(now["blocked"], serde_json::json!(["evil.example"]));
    // Not a domain: refused with what to write, nothing listed.
    browser.script(
        "document.querySelector('#federation-form input[name=domain]').value = ''; return null;",
    );
    browser.type_into(
        "#federation-form input[name=domain]",
        "https://fabrikam.com",
    );
    browser.click("#federation-form button[name=allow]");
    browser.wait_for(
        "return document.querySelector('#federation-result').textContent.includes('write a DNS name like') ? 'refused' : 'not yet';",
        "refused",
        Duration::from_secs(10),
    );
    assert_eq!(lists()["allowed"], serde_json::json!([]));

    // Who watches the help desk: the count opens the list.
    browser.click(&format!("#endpoints a[data-watchers=\"{helpdesk}\"]"));
    browser.wait_for(
        "const w = document.querySelector('#watchers'); return !w.hidden && w.textContent.includes('sip:alice@fabrikam.com') ? 'listed' : 'not yet';",
        "listed",
        Duration::from_secs(10),
    );

    // The support question: why does alice not see the help desk? The
    // form answers as the running node decides, step by step.
    browser.type_into("#explain-form input[name=from]", "sip:mallory@evil.example");
    browser.type_into("#explain-form input[name=to]", helpdesk);
    browser.type_into("#explain-form input[name=peer]", "evil.example");
    browser.click("#explain-form button[type=submit]");
    browser.wait_for(
        "const v = document.querySelector('#verdict'); return v.textContent.startsWith('Refused') && document.querySelector('#explain-steps').textContent.includes('blocked domain evil.example') ? 'explained' : 'not yet';",
        "explained",
        Duration::from_secs(10),
    );

    let png = browser.screenshot();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000);
    std::fs::write(server.dir.join("console.png"), &png).unwrap();
    if let Ok(path) = std::env::var("PORCHLIGHT_CONSOLE_SCREENSHOT") {
        std::fs::write(path, &png).unwrap();
    }

    // Back to its sources; and a tab without the token asks for it.
    browser.click("#presence-form button[name=clear]");
    browser.wait_for(
        &cell(ivr, "availability"),
        "Online",
        Duration::from_secs(10),
    );
    browser.script("sessionStorage.clear(); return null;");
    browser.open(&format!("http://{admin}/"));
    browser.wait_for(
        "return document.querySelector('#login').hidden ? 'hidden' : 'shown';",
        "shown",
        Duration::from_secs(10),
    );
}
