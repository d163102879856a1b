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
mod stream;
pub mod stun;
mod udp;

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
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        }
    }

    /// Reliable transports do not retransmit (RFC 3261 s.17).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp)
    }

    /// The transport a Via's sent-protocol or a URI's `transport`
    /// parameter names, when it is one we serve. `None` for the others
    /// (TLS, SCTP, WS, ...): a message for them cannot be sent, and
    /// pretending they are UDP would send it to a port nobody reads.
    pub fn parse(name: &str) -> Option<Transport> {
        if name.eq_ignore_ascii_case("UDP") {
            Some(Transport::Udp)
        } else if name.eq_ignore_ascii_case("TCP") {
            Some(Transport::Tcp)
        } else {
            None
        }
    }
}

/// Where a response goes by Via `via` (the one below ours): `received` and
/// `rport` when present (we add them when forwarding), else sent-by
/// (RFC 3261 s.18.2.2). `None` for a host name without `received`.
pub fn response_destination(via: &Via<'_>) -> Option<(Transport, SocketAddr)> {
    let transport = Transport::parse(via.transport)?;
    let mut ip: Option<IpAddr> = host_ip(via.host);
    let mut port = via.port.unwrap_or(5060);
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
/// (no DNS: contacts and Record-Routes of phones carry addresses).
pub fn uri_destination(uri: &str) -> Option<(Transport, SocketAddr)> {
    let u = Uri::parse(uri)?;
    let ip = host_ip(u.host)?;
    // No `transport` parameter: UDP (RFC 3263 s.4.1, for an IP address).
    let transport = match crate::wire::message::param(u.params, "transport").flatten() {
        Some(t) => Transport::parse(t)?,
        None => Transport::Udp,
    };
    Some((transport, SocketAddr::new(ip, u.port.unwrap_or(5060))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_we_do_not_serve_are_not_taken_for_udp() {
        assert_eq!(Transport::parse("udp"), Some(Transport::Udp));
        assert_eq!(Transport::parse("TCP"), Some(Transport::Tcp));
        assert_eq!(Transport::parse("TLS"), None);
        assert_eq!(Transport::parse("WSS"), None);
        assert_eq!(uri_destination("sip:bob@10.0.0.2:5071;transport=tls"), None);
        assert_eq!(
            uri_destination("sip:bob@10.0.0.2"),
            Some((Transport::Udp, "10.0.0.2:5060".parse().unwrap()))
        );
        let via = Via::parse("SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bKx").unwrap();
        assert_eq!(response_destination(&via), None);
    }
}
