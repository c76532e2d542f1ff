//! HEP version 3, the encapsulation Homer, sngrep and the SIP servers
//! around them use to carry a copy of each message to a capture server:
//! "HEP3", the packet's length, then type–length–value chunks. Pure
//! encoding, no I/O.
//!
//! Chunk order matters to some receivers: sngrep reads a fixed prefix
//! (family, protocol, ports, time, protocol type, agent) and the two
//! addresses before looking for the payload, so the chunks go out in that
//! order, and the correlation chunk, which such readers skip, comes after
//! the payload.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::{SystemTime, UNIX_EPOCH};

use porchlight_link::Protocol;

/// One message as it crossed a socket.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    /// How it travelled (TLS is carried as TCP, the IP protocol).
    pub protocol: Protocol,
    /// Who sent it.
    pub source: SocketAddr,
    /// Who it was for.
    pub destination: SocketAddr,
    /// When it was received or sent.
    pub at: SystemTime,
    /// The capture agent's number, telling capture servers which node saw it.
    pub agent_id: u32,
    /// The message's bytes.
    pub payload: &'a [u8],
}

/// Chunk types of the generic vendor (0), from the HEP3 specification.
mod chunk {
    pub const IP_FAMILY: u16 = 0x0001;
    pub const IP_PROTOCOL: u16 = 0x0002;
    pub const IPV4_SOURCE: u16 = 0x0003;
    pub const IPV4_DESTINATION: u16 = 0x0004;
    pub const IPV6_SOURCE: u16 = 0x0005;
    pub const IPV6_DESTINATION: u16 = 0x0006;
    pub const SOURCE_PORT: u16 = 0x0007;
    pub const DESTINATION_PORT: u16 = 0x0008;
    pub const SECONDS: u16 = 0x0009;
    pub const MICROSECONDS: u16 = 0x000a;
    pub const PROTOCOL_TYPE: u16 = 0x000b;
    pub const AGENT_ID: u16 = 0x000c;
    pub const PAYLOAD: u16 = 0x000f;
    pub const CORRELATION_ID: u16 = 0x0011;
}

/// The protocol type of SIP payloads.
const PROTOCOL_TYPE_SIP: u8 = 1;
/// Address families as HEP carries them (the Linux values).
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// IP protocol numbers.
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const CHUNK_HEADER: usize = 6;

/// The HEP3 packet carrying `packet`, or None when the message is too
/// large for one (a HEP3 length is 16 bits).
pub fn encode(packet: &Packet) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(packet.payload.len() + 160);
    out.extend_from_slice(b"HEP3\0\0");
    let (source, destination) = (packet.source.ip(), packet.destination.ip());
    let both_v4 = match (source.to_canonical(), destination.to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => Some((s, d)),
        _ => None,
    };
    let ip_protocol = match packet.protocol {
        Protocol::Udp => IPPROTO_UDP,
        Protocol::Tcp | Protocol::Tls => IPPROTO_TCP,
    };
    let since_epoch = packet.at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let family = if both_v4.is_some() { AF_INET } else { AF_INET6 };
    push(&mut out, chunk::IP_FAMILY, &[family]);
    push(&mut out, chunk::IP_PROTOCOL, &[ip_protocol]);
    push(
        &mut out,
        chunk::SOURCE_PORT,
        &packet.source.port().to_be_bytes(),
    );
    push(
        &mut out,
        chunk::DESTINATION_PORT,
        &packet.destination.port().to_be_bytes(),
    );
    // A 32-bit second count lasts until 2106.
    let seconds = since_epoch.as_secs() as u32;
    push(&mut out, chunk::SECONDS, &seconds.to_be_bytes());
    push(
        &mut out,
        chunk::MICROSECONDS,
        &since_epoch.subsec_micros().to_be_bytes(),
    );
    push(&mut out, chunk::PROTOCOL_TYPE, &[PROTOCOL_TYPE_SIP]);
    push(&mut out, chunk::AGENT_ID, &packet.agent_id.to_be_bytes());
    match both_v4 {
        Some((s, d)) => {
            push(&mut out, chunk::IPV4_SOURCE, &s.octets());
            push(&mut out, chunk::IPV4_DESTINATION, &d.octets());
        }
        None => {
            push(&mut out, chunk::IPV6_SOURCE, &as_v6(source).octets());
            push(
                &mut out,
                chunk::IPV6_DESTINATION,
                &as_v6(destination).octets(),
            );
        }
    }
    push(&mut out, chunk::PAYLOAD, packet.payload);
    if let Some(call_id) = call_id(packet.payload) {
        push(&mut out, chunk::CORRELATION_ID, call_id);
    }
    let length = u16::try_from(out.len()).ok()?;
    out[4..6].copy_from_slice(&length.to_be_bytes());
    Some(out)
}

fn push(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
    // Oversized chunks make the whole packet too long, caught by the caller.
    let length = (CHUNK_HEADER + data.len()).min(usize::from(u16::MAX)) as u16;
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&kind.to_be_bytes());
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(data);
}

fn as_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// The Call-ID of a message (full or compact header name), which capture
/// servers use to put a call's or subscription's messages together. Looks
/// only at the header section; anything unreadable is no Call-ID.
pub fn call_id(message: &[u8]) -> Option<&[u8]> {
    let mut lines = message.split(|&b| b == b'\n').skip(1);
    lines.find_map(|line| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // The end of the header section: stop looking.
            return Some(None);
        }
        let colon = line.iter().position(|&b| b == b':')?;
        let name = line[..colon].trim_ascii();
        (name.eq_ignore_ascii_case(b"call-id") || name.eq_ignore_ascii_case(b"i"))
            .then(|| Some(line[colon + 1..].trim_ascii()).filter(|v| !v.is_empty()))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The chunks of a HEP3 packet, in order, as (type, data).
    fn chunks(packet: &[u8]) -> Vec<(u16, &[u8])> {
        assert_eq!(&packet[..4], b"HEP3");
        let total = u16::from_be_bytes([packet[4], packet[5]]) as usize;
        assert_eq!(total, packet.len(), "the length covers the whole packet");
        let mut rest = &packet[6..];
        let mut found = Vec::new();
        while !rest.is_empty() {
            let vendor = u16::from_be_bytes([rest[0], rest[1]]);
            assert_eq!(vendor, 0);
            let kind = u16::from_be_bytes([rest[2], rest[3]]);
            let length = u16::from_be_bytes([rest[4], rest[5]]) as usize;
            found.push((kind, &rest[CHUNK_HEADER..length]));
            rest = &rest[length..];
        }
        found
    }

    const SUBSCRIBE: &[u8] = b"SUBSCRIBE sip:helpdesk@contoso.com SIP/2.0\r\n\
        Via: SIP/2.0/UDP 192.0.2.7:5062;branch=z9hG4bK1\r\ni: abc@192.0.2.7\r\n\
        CSeq: 1 SUBSCRIBE\r\nContent-Length: 0\r\n\r\n";

    fn packet(source: &str, destination: &str, payload: &[u8]) -> Vec<u8> {
        encode(&Packet {
            protocol: Protocol::Tls,
            source: source.parse().unwrap(),
            destination: destination.parse().unwrap(),
            at: UNIX_EPOCH + Duration::new(1_764_633_600, 123_456_789),
            agent_id: 7,
            payload,
        })
        .unwrap()
    }

    #[test]
    fn chunks_come_in_the_order_fixed_prefix_readers_expect() {
        let encoded = packet("192.0.2.7:5062", "198.51.100.1:5061", SUBSCRIBE);
        let found = chunks(&encoded);
        let kinds: Vec<u16> = found.iter().map(|(k, _)| *k).collect();
        assert_eq!(kinds, [1, 2, 7, 8, 9, 10, 11, 12, 3, 4, 15, 0x11]);
        assert_eq!(found[0].1, [AF_INET]);
        assert_eq!(found[1].1, [IPPROTO_TCP], "TLS travels as TCP");
        assert_eq!(found[2].1, 5062u16.to_be_bytes());
        assert_eq!(found[3].1, 5061u16.to_be_bytes());
        assert_eq!(found[4].1, 1_764_633_600u32.to_be_bytes());
        assert_eq!(found[5].1, 123_456u32.to_be_bytes());
        assert_eq!(found[7].1, 7u32.to_be_bytes());
        assert_eq!(found[8].1, [192, 0, 2, 7]);
        assert_eq!(found[9].1, [198, 51, 100, 1]);
        assert_eq!(found[10].1, SUBSCRIBE);
        assert_eq!(found[11].1, b"abc@192.0.2.7");
    }

    #[test]
    fn ipv6_and_mixed_families_travel_as_ipv6() {
        let encoded = packet("[2001:db8::1]:5060", "192.0.2.1:5060", SUBSCRIBE);
        let found = chunks(&encoded);
        assert_eq!(found.len(), 12);
        assert_eq!(found[0].1, [AF_INET6]);
        assert_eq!((found[8].0, found[9].0), (5, 6));
        assert_eq!(
            found[9].1,
            "::ffff:192.0.2.1".parse::<Ipv6Addr>().unwrap().octets()
        );
    }

    #[test]
    fn a_message_too_large_for_hep_is_refused_not_truncated() {
        let big = vec![b'x'; 65_500];
        let refused = encode(&Packet {
            protocol: Protocol::Udp,
            source: "192.0.2.7:5060".parse().unwrap(),
            destination: "192.0.2.8:5060".parse().unwrap(),
            at: SystemTime::now(),
            agent_id: 0,
            payload: &big,
        });
        assert!(refused.is_none());
    }

    #[test]
    fn call_id_is_read_from_the_header_section_only() {
        assert_eq!(call_id(SUBSCRIBE), Some(&b"abc@192.0.2.7"[..]));
        let full = b"SIP/2.0 200 OK\nCALL-ID:   x1 \nCSeq: 1 SUBSCRIBE\n\n";
        assert_eq!(call_id(full), Some(&b"x1"[..]));
        let in_body =
            b"MESSAGE sip:a@b SIP/2.0\r\nCSeq: 1 MESSAGE\r\n\r\nCall-ID: not-a-header\r\n";
        assert_eq!(call_id(in_body), None);
        assert_eq!(call_id(b"garbage"), None);
        assert_eq!(call_id(b"INVITE x SIP/2.0\r\nCall-ID:\r\n\r\n"), None);
    }
}
