//! baresip (Debian `baresip-core`) as a real watcher: its presence module
//! subscribes to an endpoint and reports Online; the app behind the
//! endpoint is a second baresip that registers with digest credentials.
//! When the app dies its registration expires and the watcher sees
//! Offline; when the app's health URL recovers the watcher sees Online again.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use common::*;

struct Baresip {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Baresip {
    /// Starts baresip with a config directory holding `config`, `accounts`
    /// and `contacts`.
    fn start(
        dir: &Path,
        listen_port: u16,
        modules: &[&str],
        account: &str,
        contacts: &str,
    ) -> Baresip {
        std::fs::create_dir_all(dir).unwrap();
        let mut config =
            format!("sip_listen 127.0.0.1:{listen_port}\nmodule_path /usr/lib/baresip/modules\n");
        for m in modules {
            config.push_str(&format!("module_app {m}.so\n"));
        }
        std::fs::write(dir.join("config"), config).unwrap();
        std::fs::write(dir.join("accounts"), format!("{account}\n")).unwrap();
        std::fs::write(dir.join("contacts"), format!("{contacts}\n")).unwrap();
        let mut child = Command::new("baresip")
            .arg("-f")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("baresip is installed (scripts/test.sh installs baresip-core)");
        let (tx, lines) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { break };
                    // Drop the colour escapes baresip puts around status words.
                    let plain: String = line
                        .replace("\u{1b}[32m", "")
                        .replace("\u{1b}[31m", "")
                        .replace("\u{1b}[;m", "");
                    if tx.send(plain).is_err() {
                        break;
                    }
                }
            });
        }
        Baresip { child, lines }
    }

    /// Waits for a line containing `needle`, returning every line seen.
    fn expect(&self, needle: &str, within: Duration) -> Vec<String> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "baresip never printed {needle:?}; it printed:\n{}",
            seen.join("\n")
        );
    }
}

/// An app health URL that answers 200 or 503 as the test decides.
fn health_server(healthy: Arc<AtomicBool>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let status = if healthy.load(Ordering::SeqCst) {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    port
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn baresip_watcher_follows_registration_and_health() {
    let healthy = Arc::new(AtomicBool::new(false));
    let health_port = health_server(healthy.clone());
    let endpoint = format!(
        "\n[endpoint.registration]\npassword = \"s3cret\"\n\
         [endpoint.health]\nurl = \"http://127.0.0.1:{health_port}/health\"\ninterval_secs = 1\ntimeout_ms = 500\nfailures = 1\n"
    );
    let text = config(
        &[
            (
                "uri = \"sip:helpdesk@porchlight.test\"",
                "uri = \"sip:helpdesk@contoso.com\"",
            ),
            (
                "min_notify_interval_ms = 5000",
                "min_notify_interval_ms = 500",
            ),
            // Registrations short enough to watch one lapse.
            (
                "[registrar]\nmin_expires = 60",
                "[registrar]\nmin_expires = 5",
            ),
            // libre 1.0 answers only MD5 challenges.
            (
                "digest_algorithms = [\"SHA-256\", \"MD5\"]",
                "digest_algorithms = [\"MD5\"]",
            ),
        ],
        "",
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
        free_udp_port(),
        &["account"],
        &format!(
            "<sip:helpdesk@contoso.com>;auth_pass=s3cret;outbound=\"sip:{}\";regint=6",
            server.udp
        ),
        "",
    );
    app.expect("200 OK", Duration::from_secs(10));

    let watcher = Baresip::start(
        &dir.join("watcher"),
        free_udp_port(),
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
