//! The HTTP health probe of an application: a plain `GET` whose 2xx means
//! the app is up. Runs as one small task per probed endpoint, reporting
//! verdicts to the event loop; it never touches presence state itself.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// One probe's report: the endpoint's slot, the probe's number (a probe
/// replaced when its endpoint changes may still have one report queued,
/// which the number lets the loop ignore), and whether the app is up.
pub type Verdict = (usize, u64, bool);

/// Probes `url` every `interval` and sends verdicts until the receiver
/// goes away or the task is aborted.
pub async fn run(
    endpoint: usize,
    probe_number: u64,
    url: String,
    interval: Duration,
    timeout: Duration,
    verdicts: mpsc::Sender<Verdict>,
) {
    loop {
        let healthy = matches!(
            tokio::time::timeout(timeout, probe(&url)).await,
            Ok(Ok(status)) if (200..300).contains(&status)
        );
        if verdicts
            .send((endpoint, probe_number, healthy))
            .await
            .is_err()
        {
            return;
        }
        tokio::time::sleep(interval).await;
    }
}

/// One GET; returns the status code.
async fn probe(url: &str) -> std::io::Result<u16> {
    let invalid = || std::io::Error::new(std::io::ErrorKind::InvalidInput, "not an http:// URL");
    let rest = url.strip_prefix("http://").ok_or_else(invalid)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let address = if authority.contains(':') && !authority.ends_with(']') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut stream = TcpStream::connect(address).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {}\r\nConnection: close\r\n\r\n",
        porchlight_node::uas::SERVER
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") && head.len() < 4096 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .filter(|_| line.starts_with("HTTP/"))
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}
