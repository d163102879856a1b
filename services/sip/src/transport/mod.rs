//! Flows: the transport seam between SIP logic and sockets.
//!
//! A [`Flow`] names where a message goes or came from — the transport kind,
//! the remote address and, for connection-oriented transports, the
//! connection — without saying how bytes get there. The registrar, the
//! proxy and the call engine only ever hand bytes to a flow; the transports
//! (`gateway`) turn flows into sockets. A response goes back on the flow its
//! request came on.

use std::net::{IpAddr, SocketAddr};

use crate::wire::message::{host_ip, params, Uri, Via};

pub mod gateway;
mod limits;
mod send_queue;
mod stream;
pub mod stun;
pub mod tls;
mod udp;
mod ws;

/// Names one connection of a connection-oriented transport, for as long
/// as it is open (never reused while the node runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub u64);

/// Where a message goes or came from (RFC 5626 s.4.3: a flow is the
/// transport, the local and the remote address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Flow {
    pub transport: Transport,
    /// The peer's address (after NAT: what the packets came from).
    pub remote: SocketAddr,
    /// Our address the message came in on (`None`: any of ours).
    pub local: Option<SocketAddr>,
    /// The connection it came on, for connection-oriented transports: a
    /// message sent on this flow goes on that connection while it is open,
    /// else on any connection to `remote` (opened when there is none).
    pub connection: Option<ConnectionId>,
}

impl Flow {
    /// A flow to `remote` from any local address, on no particular
    /// connection (what a stored binding or a Via names).
    pub fn new(transport: Transport, remote: SocketAddr) -> Flow {
        Flow {
            transport,
            remote,
            local: None,
            connection: None,
        }
    }

    /// The flow a message arrived on.
    pub fn received(
        transport: Transport,
        remote: SocketAddr,
        local: SocketAddr,
        connection: Option<ConnectionId>,
    ) -> Flow {
        Flow {
            transport,
            remote,
            local: Some(local),
            connection,
        }
    }

    /// Reliable transports do not retransmit (RFC 3261 s.17).
    pub fn is_reliable(self) -> bool {
        self.transport.is_reliable()
    }
}

/// The transport a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    /// SIP over TLS over TCP (RFC 3261 s.26, RFC 5630).
    Tls,
    /// SIP over WebSocket (RFC 7118), plain.
    Ws,
    /// SIP over WebSocket over TLS (RFC 7118).
    Wss,
}

impl Transport {
    /// The Via token (and what a registration records).
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
            Transport::Ws => "WS",
            Transport::Wss => "WSS",
        }
    }

    /// Reliable transports do not retransmit (RFC 3261 s.17).
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }

    /// A transport whose peers cannot be connected to: a WebSocket client
    /// (a browser) is reached only on the connection it opened, so the
    /// Via's sent-by (often `xxx.invalid`, RFC 7118 s.5.2) is never used.
    pub fn is_websocket(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }

    /// The transport a Via's sent-protocol or a URI's `transport`
    /// parameter names, when it is one we serve. `None` for the others
    /// (SCTP, ...): a message for them cannot be sent, and pretending they
    /// are UDP would send it to a port nobody reads.
    pub fn parse(name: &str) -> Option<Transport> {
        const ALL: [Transport; 5] = [
            Transport::Udp,
            Transport::Tcp,
            Transport::Tls,
            Transport::Ws,
            Transport::Wss,
        ];
        ALL.into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(name))
    }

    /// The port a URI or Via without one means (RFC 3261 s.19.1.2: 5061
    /// for TLS; RFC 7118 names none for WebSocket, whose peers are never
    /// connected to by address).
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }
}

/// Where a response goes by Via `via` (the one below ours): `received` and
/// `rport` when present (we add them when forwarding), else sent-by
/// (RFC 3261 s.18.2.2). `None` for a host name without `received`.
pub fn response_destination(via: &Via<'_>) -> Option<(Transport, SocketAddr)> {
    let transport = Transport::parse(via.transport)?;
    let mut ip: Option<IpAddr> = host_ip(via.host);
    let mut port = via.port.unwrap_or(transport.default_port());
    for (name, value) in params(via.params) {
        if name.eq_ignore_ascii_case("received") {
            if let Some(v) = value.and_then(|v| v.parse().ok()) {
                ip = Some(v);
            }
        } else if name.eq_ignore_ascii_case("rport") {
            if let Some(p) = value.and_then(|v| v.parse().ok()) {
                port = p;
            }
        }
    }
    ip.map(|ip| (transport, SocketAddr::new(ip, port)))
}

/// The address and transport a SIP URI with an IP-literal host points to
/// (no DNS: contacts and Record-Routes of phones carry addresses). A
/// `sips:` URI means TLS (RFC 3261 s.19.1.2); its `transport` parameter
/// may only name a secure one (`tls`, `wss`; RFC 5630 s.3.1.3 deprecates
/// `sips:...;transport=tcp`, which we take as TLS over that TCP).
pub fn uri_destination(uri: &str) -> Option<(Transport, SocketAddr)> {
    let u = Uri::parse(uri)?;
    let ip = host_ip(u.host)?;
    let secure = u.scheme.eq_ignore_ascii_case("sips");
    // No `transport` parameter: UDP (RFC 3263 s.4.1, for an IP address),
    // TLS for `sips:`.
    let named = match crate::wire::message::param(u.params, "transport").flatten() {
        Some(t) => Some(Transport::parse(t)?),
        None => None,
    };
    let transport = match (secure, named) {
        (false, Some(t)) => t,
        (false, None) => Transport::Udp,
        (true, Some(Transport::Wss)) => Transport::Wss,
        (true, Some(Transport::Ws)) => Transport::Wss,
        (true, _) => Transport::Tls,
    };
    Some((
        transport,
        SocketAddr::new(ip, u.port.unwrap_or(transport.default_port())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_are_parsed_by_their_via_token_and_others_are_not_taken_for_udp() {
        assert_eq!(Transport::parse("udp"), Some(Transport::Udp));
        assert_eq!(Transport::parse("TCP"), Some(Transport::Tcp));
        assert_eq!(Transport::parse("tls"), Some(Transport::Tls));
        assert_eq!(Transport::parse("WS"), Some(Transport::Ws));
        assert_eq!(Transport::parse("wss"), Some(Transport::Wss));
        assert_eq!(Transport::parse("SCTP"), None);
        assert_eq!(Transport::parse("TLS-SCTP"), None);
        for t in [
            Transport::Tcp,
            Transport::Tls,
            Transport::Ws,
            Transport::Wss,
        ] {
            assert!(t.is_reliable());
            assert_eq!(Transport::parse(t.as_str()), Some(t));
        }
        assert!(!Transport::Udp.is_reliable());
        assert_eq!(
            uri_destination("sip:bob@10.0.0.2:5071;transport=sctp"),
            None
        );
        assert_eq!(
            uri_destination("sip:bob@10.0.0.2"),
            Some((Transport::Udp, "10.0.0.2:5060".parse().unwrap()))
        );
    }

    #[test]
    fn sips_and_transport_parameters_name_the_secure_transports() {
        assert_eq!(
            uri_destination("sips:bob@10.0.0.2"),
            Some((Transport::Tls, "10.0.0.2:5061".parse().unwrap()))
        );
        assert_eq!(
            uri_destination("sip:bob@10.0.0.2:5071;transport=tls"),
            Some((Transport::Tls, "10.0.0.2:5071".parse().unwrap()))
        );
        assert_eq!(
            uri_destination("sip:bob@10.0.0.2;transport=TLS"),
            Some((Transport::Tls, "10.0.0.2:5061".parse().unwrap()))
        );
        // RFC 5630: sips with transport=tcp still means TLS over TCP.
        assert_eq!(
            uri_destination("sips:bob@10.0.0.2:5062;transport=tcp"),
            Some((Transport::Tls, "10.0.0.2:5062".parse().unwrap()))
        );
        assert_eq!(
            uri_destination("sip:bob@10.0.0.2:8080;transport=ws"),
            Some((Transport::Ws, "10.0.0.2:8080".parse().unwrap()))
        );
        assert_eq!(
            uri_destination("sips:bob@10.0.0.2:8443;transport=wss"),
            Some((Transport::Wss, "10.0.0.2:8443".parse().unwrap()))
        );
        // A WebSocket contact with an .invalid host has no address.
        assert_eq!(
            uri_destination("sip:x@df7jal23ls0d.invalid;transport=ws"),
            None
        );
    }

    #[test]
    fn responses_follow_the_via_with_received_and_rport() {
        let via = Via::parse("SIP/2.0/TLS 10.0.0.1;branch=z9hG4bKx").unwrap();
        assert_eq!(
            response_destination(&via),
            Some((Transport::Tls, "10.0.0.1:5061".parse().unwrap()))
        );
        // RFC 7118: the Via host of a WebSocket client is a made-up
        // .invalid name; only received/rport (the connection) count.
        let via = Via::parse(
            "SIP/2.0/WSS df7jal23ls0d.invalid;branch=z9hG4bKx;rport=40001;received=192.0.2.7",
        )
        .unwrap();
        assert_eq!(
            response_destination(&via),
            Some((Transport::Wss, "192.0.2.7:40001".parse().unwrap()))
        );
        let via = Via::parse("SIP/2.0/WS df7jal23ls0d.invalid;branch=z9hG4bKx").unwrap();
        assert_eq!(response_destination(&via), None);
    }
}
