//! The STUN Binding keep-alive of RFC 5626 s.4.4.2: a UA using outbound
//! over UDP sends STUN Binding requests (RFC 5389) to the SIP port; we
//! answer each with a Binding success response carrying the address and
//! port we saw it come from (XOR-MAPPED-ADDRESS), which keeps the NAT's
//! mapping open and tells the UA when it changed.
//!
//! Only what that needs: no authentication, no FINGERPRINT check, no other
//! method. A STUN message starts with two zero bits, a SIP message with a
//! letter, so the two never mix on one port.

use std::net::{IpAddr, SocketAddr};

/// The fixed value of every RFC 5389 message (bytes 4-7).
const MAGIC_COOKIE: u32 = 0x2112_A442;
const HEADER_LEN: usize = 20;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const XOR_MAPPED_ADDRESS: u16 = 0x0020;

/// Whether `datagram` looks like a STUN message (RFC 5389 s.6: two zero
/// bits, a length that is a multiple of 4 and matches, the magic cookie).
pub(super) fn is_stun(datagram: &[u8]) -> bool {
    datagram.len() >= HEADER_LEN
        && datagram[0] & 0xC0 == 0
        && u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]) == MAGIC_COOKIE
        && {
            let len = usize::from(u16::from_be_bytes([datagram[2], datagram[3]]));
            len % 4 == 0 && HEADER_LEN + len == datagram.len()
        }
}

/// The Binding success response to `request` from `source`, when
/// `request` is a STUN Binding request; `None` for anything else (other
/// STUN messages are dropped).
pub(super) fn binding_response(request: &[u8], source: SocketAddr) -> Option<Vec<u8>> {
    if !is_stun(request) || u16::from_be_bytes([request[0], request[1]]) != BINDING_REQUEST {
        return None;
    }
    let transaction: &[u8] = &request[8..HEADER_LEN];
    let cookie = MAGIC_COOKIE.to_be_bytes();
    // XOR-MAPPED-ADDRESS (RFC 5389 s.15.2): the port XORed with the top of
    // the cookie, the address with the cookie (and, for IPv6, the
    // transaction id after it).
    let port = source.port() ^ (MAGIC_COOKIE >> 16) as u16;
    let mut value = vec![0u8];
    match source.ip() {
        IpAddr::V4(ip) => {
            value.push(0x01);
            value.extend_from_slice(&port.to_be_bytes());
            value.extend(ip.octets().iter().zip(cookie).map(|(a, k)| a ^ k));
        }
        IpAddr::V6(ip) => {
            value.push(0x02);
            value.extend_from_slice(&port.to_be_bytes());
            let key = cookie.iter().chain(transaction);
            value.extend(ip.octets().iter().zip(key).map(|(a, k)| a ^ k));
        }
    }
    let mut out = Vec::with_capacity(HEADER_LEN + 4 + value.len());
    out.extend_from_slice(&BINDING_SUCCESS.to_be_bytes());
    let attributes_len = 4 + value.len();
    out.extend_from_slice(&u16::try_from(attributes_len).ok()?.to_be_bytes());
    out.extend_from_slice(&cookie);
    out.extend_from_slice(transaction);
    out.extend_from_slice(&XOR_MAPPED_ADDRESS.to_be_bytes());
    out.extend_from_slice(&u16::try_from(value.len()).ok()?.to_be_bytes());
    out.extend_from_slice(&value);
    Some(out)
}

/// The address a Binding success response maps to (the client's side:
/// for tests and tools).
pub fn mapped_address(response: &[u8]) -> Option<SocketAddr> {
    if !is_stun(response) || u16::from_be_bytes([response[0], response[1]]) != BINDING_SUCCESS {
        return None;
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let transaction = &response[8..HEADER_LEN];
    let mut attrs = &response[HEADER_LEN..];
    while attrs.len() >= 4 {
        let kind = u16::from_be_bytes([attrs[0], attrs[1]]);
        let len = usize::from(u16::from_be_bytes([attrs[2], attrs[3]]));
        let value = attrs.get(4..4 + len)?;
        if kind == XOR_MAPPED_ADDRESS && len >= 8 {
            let port = u16::from_be_bytes([value[2], value[3]]) ^ (MAGIC_COOKIE >> 16) as u16;
            let ip = match (value[1], len) {
                (0x01, 8) => {
                    let mut a = [0u8; 4];
                    for (i, b) in a.iter_mut().enumerate() {
                        *b = value[4 + i] ^ cookie[i];
                    }
                    IpAddr::from(a)
                }
                (0x02, 20) => {
                    let key: Vec<u8> = cookie.iter().chain(transaction).copied().collect();
                    let mut a = [0u8; 16];
                    for (i, b) in a.iter_mut().enumerate() {
                        *b = value[4 + i] ^ key[i];
                    }
                    IpAddr::from(a)
                }
                _ => return None,
            };
            return Some(SocketAddr::new(ip, port));
        }
        // Attributes are padded to 4 bytes.
        attrs = attrs.get(4 + len.div_ceil(4) * 4..)?;
    }
    None
}

/// A Binding request with the given transaction id (for tests and
/// tools).
pub fn binding_request(transaction: [u8; 12]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN);
    out.extend_from_slice(&BINDING_REQUEST.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes());
    out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out.extend_from_slice(&transaction);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const TX: [u8; 12] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];

    #[test]
    fn rfc5769_ipv4_xor_mapped_address() {
        // RFC 5769 s.2.2: 192.0.2.1:32853 is encoded as port 0xa147 and
        // address 0xe112a643.
        let source: SocketAddr = "192.0.2.1:32853".parse().unwrap();
        let response = binding_response(&binding_request(TX), source).unwrap();
        assert_eq!(&response[0..2], &[0x01, 0x01]);
        assert_eq!(&response[8..20], &TX);
        assert_eq!(&response[20..24], &[0x00, 0x20, 0x00, 0x08]);
        assert_eq!(
            &response[24..32],
            &[0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43]
        );
        assert_eq!(mapped_address(&response), Some(source));
    }

    #[test]
    fn ipv6_round_trip() {
        let source: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
            .parse()
            .unwrap();
        let response = binding_response(&binding_request(TX), source).unwrap();
        assert_eq!(response.len(), 20 + 4 + 20);
        assert_eq!(mapped_address(&response), Some(source));
    }

    #[test]
    fn only_binding_requests_are_answered() {
        let source: SocketAddr = "192.0.2.1:5060".parse().unwrap();
        assert!(binding_response(b"OPTIONS sip:x SIP/2.0\r\n\r\n", source).is_none());
        let mut indication = binding_request(TX);
        indication[1] = 0x11; // Binding indication
        assert!(binding_response(&indication, source).is_none());
        let mut bad_cookie = binding_request(TX);
        bad_cookie[4] = 0;
        assert!(binding_response(&bad_cookie, source).is_none());
        let mut bad_length = binding_request(TX);
        bad_length.push(0);
        assert!(binding_response(&bad_length, source).is_none());
        assert!(!is_stun(b"REGISTER sip:example.com SIP/2.0\r\n"));
    }
}
