//! HTTP digest authentication for endpoints that REGISTER (RFC 3261 §22,
//! RFC 8760): SHA-256 offered first, MD5 for older stacks, `qop=auth`.
//! Nonces are stateless — a timestamp sealed with a server secret — so a
//! challenge costs no memory and survives nothing it should not.

use md5::Md5;
use porchlight_sip::AuthValue;
use sha2::{Digest, Sha256};

/// The digest algorithms we offer, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// RFC 8760 `SHA-256`.
    Sha256,
    /// RFC 2617 `MD5`.
    Md5,
}

impl Algorithm {
    /// Both, strongest first: the default offer.
    pub const ALL: [Algorithm; 2] = [Algorithm::Sha256, Algorithm::Md5];

    /// The token in `algorithm=`.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    /// Parses a configured algorithm name (`SHA-256`, `MD5`).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Algorithm::from_token(Some(name))
    }

    fn from_token(token: Option<&str>) -> Option<Algorithm> {
        match token {
            None => Some(Algorithm::Md5),
            Some(t) if t.eq_ignore_ascii_case("MD5") => Some(Algorithm::Md5),
            Some(t) if t.eq_ignore_ascii_case("SHA-256") => Some(Algorithm::Sha256),
            _ => None,
        }
    }

    fn hex(self, input: &str) -> String {
        let bytes: Vec<u8> = match self {
            Algorithm::Sha256 => Sha256::digest(input.as_bytes()).to_vec(),
            Algorithm::Md5 => Md5::digest(input.as_bytes()).to_vec(),
        };
        let mut out = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }
}

/// Why credentials were not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Good credentials.
    Valid,
    /// Right password, old nonce: challenge again with `stale=true`.
    Stale,
    /// Wrong, missing or malformed.
    Invalid,
}

/// Issues and checks digest challenges for one realm.
#[derive(Debug)]
pub struct DigestAuth {
    realm: String,
    secret: u64,
    nonce_lifetime_secs: u64,
    algorithms: Vec<Algorithm>,
    /// The highest nonce count seen per live nonce, so a captured answer
    /// cannot be replayed. A mutex because checking borrows immutably.
    counts: std::sync::Mutex<std::collections::HashMap<String, (u64, u32)>>,
    serial: std::sync::atomic::AtomicU64,
}

impl DigestAuth {
    /// A verifier for `realm` offering `algorithms` in that order (RFC 8760
    /// §2.4: clients take the first they support; some take the first
    /// whatever it is, so the order and the set are the admin's choice);
    /// `secret` seals nonces.
    pub fn new(
        realm: impl Into<String>,
        secret: u64,
        nonce_lifetime_secs: u64,
        algorithms: Vec<Algorithm>,
    ) -> DigestAuth {
        DigestAuth {
            realm: realm.into(),
            secret,
            nonce_lifetime_secs,
            algorithms,
            counts: Default::default(),
            serial: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// A nonce: issue time and a serial (unique per challenge, so each
    /// client's nonce counts start afresh), sealed with the secret.
    fn seal(&self, issued: u64, serial: u64) -> String {
        let mac =
            Algorithm::Sha256.hex(&format!("{}:{issued}:{serial}:{}", self.secret, self.realm));
        format!("{issued:x}.{serial:x}.{}", &mac[..24])
    }

    /// The algorithms offered to one endpoint: its own list when it has
    /// one (a legacy app that knows only MD5 does not weaken the others),
    /// else the node's.
    fn offer<'a>(&'a self, own: Option<&'a [Algorithm]>) -> &'a [Algorithm] {
        own.unwrap_or(&self.algorithms)
    }

    /// The `WWW-Authenticate` values to send, one per algorithm offered
    /// (`own`: the endpoint's list, else the node's).
    pub fn challenges(&self, now_unix: u64, stale: bool, own: Option<&[Algorithm]>) -> Vec<String> {
        let serial = self
            .serial
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nonce = self.seal(now_unix, serial);
        self.offer(own)
            .iter()
            .map(|a| {
                format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"{}",
                    self.realm,
                    a.token(),
                    if stale { ", stale=true" } else { "" }
                )
            })
            .collect()
    }

    /// Checks credentials for `method` against the user's password, in
    /// one of the algorithms offered (`own`: the endpoint's list).
    pub fn verify(
        &self,
        credentials: &AuthValue<'_>,
        method: &str,
        (username, password): (&str, &str),
        own: Option<&[Algorithm]>,
        now_unix: u64,
    ) -> Verdict {
        if !credentials.scheme.eq_ignore_ascii_case("Digest") {
            return Verdict::Invalid;
        }
        let p = |name| credentials.param(name);
        let (Some(user), Some(realm), Some(nonce), Some(uri), Some(response)) = (
            p("username"),
            p("realm"),
            p("nonce"),
            p("uri"),
            p("response"),
        ) else {
            return Verdict::Invalid;
        };
        let Some(algorithm) =
            Algorithm::from_token(p("algorithm")).filter(|a| self.offer(own).contains(a))
        else {
            return Verdict::Invalid;
        };
        if user != username || realm != self.realm {
            return Verdict::Invalid;
        }
        let mut parts = nonce.split('.');
        let mut field = || parts.next().and_then(|t| u64::from_str_radix(t, 16).ok());
        let (Some(issued), Some(serial)) = (field(), field()) else {
            return Verdict::Invalid;
        };
        if self.seal(issued, serial) != nonce {
            return Verdict::Invalid;
        }
        let ha1 = algorithm.hex(&format!("{user}:{realm}:{password}"));
        let ha2 = algorithm.hex(&format!("{method}:{uri}"));
        // We always offer qop=auth; answers without it (RFC 2069) carry no
        // nonce count, so their replays could not be told apart.
        let (Some(qop), Some(nc), Some(cnonce)) = (p("qop"), p("nc"), p("cnonce")) else {
            return Verdict::Invalid;
        };
        let Ok(count) = u32::from_str_radix(nc, 16) else {
            return Verdict::Invalid;
        };
        if !qop.eq_ignore_ascii_case("auth") {
            return Verdict::Invalid;
        }
        let expected = algorithm.hex(&format!("{ha1}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}"));
        if !expected.eq_ignore_ascii_case(response) {
            return Verdict::Invalid;
        }
        if now_unix.saturating_sub(issued) > self.nonce_lifetime_secs || issued > now_unix + 60 {
            return Verdict::Stale;
        }
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let lifetime = self.nonce_lifetime_secs;
        if counts.len() > 4096 {
            counts.retain(|_, (issued, _)| now_unix.saturating_sub(*issued) <= lifetime);
        }
        let last = counts.entry(nonce.to_owned()).or_insert((issued, 0));
        if count <= last.1 {
            return Verdict::Invalid;
        }
        last.1 = count;
        Verdict::Valid
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use porchlight_sip::{Framing, HeaderName, Limits, Message};

    /// Computes a client's answer as RFC 2617/8760 clients do.
    fn answer(challenge: &str, algorithm: Algorithm, password: &str) -> String {
        let nonce = challenge
            .split("nonce=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let ha1 = algorithm.hex(&format!("bot:contoso.com:{password}"));
        let ha2 = algorithm.hex("REGISTER:sip:contoso.com");
        let response = algorithm.hex(&format!("{ha1}:{nonce}:00000001:abc:auth:{ha2}"));
        format!(
            "Digest username=\"bot\", realm=\"contoso.com\", nonce=\"{nonce}\", uri=\"sip:contoso.com\", \
             response=\"{response}\", algorithm={}, qop=auth, nc=00000001, cnonce=\"abc\"",
            algorithm.token()
        )
    }

    fn check(auth: &DigestAuth, header: &str, now: u64) -> Verdict {
        let text = format!(
            "REGISTER sip:contoso.com SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:bot@contoso.com>;tag=1\r\n\
             To: <sip:bot@contoso.com>\r\nCall-ID: c\r\nCSeq: 1 REGISTER\r\nAuthorization: {header}\r\nContent-Length: 0\r\n\r\n"
        );
        let m = Message::parse(Bytes::from(text), Framing::Datagram, &Limits::default()).unwrap();
        let creds = m.auth(HeaderName::Authorization).next().unwrap().unwrap();
        auth.verify(&creds, "REGISTER", ("bot", "s3cret"), None, now)
    }

    #[test]
    fn sha256_and_md5_round_trip() {
        let auth = DigestAuth::new("contoso.com", 99, 300, Algorithm::ALL.to_vec());
        let challenges = auth.challenges(1000, false, None);
        assert!(challenges[0].contains("algorithm=SHA-256"));
        assert!(challenges[1].contains("algorithm=MD5"));
        for (c, a) in challenges.iter().zip(Algorithm::ALL) {
            let fresh = DigestAuth::new("contoso.com", 99, 300, Algorithm::ALL.to_vec());
            assert_eq!(check(&fresh, &answer(c, a, "s3cret"), 1010), Verdict::Valid);
            assert_eq!(
                check(&fresh, &answer(c, a, "s3cret"), 1011),
                Verdict::Invalid,
                "the same nonce count again is a replay"
            );
            assert_eq!(check(&auth, &answer(c, a, "wrong"), 1010), Verdict::Invalid);
            assert_eq!(check(&auth, &answer(c, a, "s3cret"), 2000), Verdict::Stale);
        }
        // A nonce we did not issue.
        let forged = answer(&challenges[0], Algorithm::Sha256, "s3cret")
            .replace("nonce=\"3e8.0.", "nonce=\"3e9.0.");
        assert_eq!(check(&auth, &forged, 1010), Verdict::Invalid);
        // An algorithm the admin switched off is refused.
        let md5_only = DigestAuth::new("contoso.com", 99, 300, vec![Algorithm::Md5]);
        assert_eq!(md5_only.challenges(1000, false, None).len(), 1);
        let sha = answer(&challenges[0], Algorithm::Sha256, "s3cret");
        assert_eq!(check(&md5_only, &sha, 1010), Verdict::Invalid);
        // An endpoint's own list replaces the node's, for that endpoint only.
        let own = [Algorithm::Md5];
        let challenges = auth.challenges(1000, false, Some(&own));
        assert_eq!(challenges.len(), 1);
        assert!(challenges[0].contains("algorithm=MD5"));
        // Known answer: the MD5 of the empty string.
        assert_eq!(Algorithm::Md5.hex(""), "d41d8cd98f00b204e9800998ecf8427e");
    }
}
