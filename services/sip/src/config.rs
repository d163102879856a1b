//! The gateway's settings: what `node` fills from its configuration.

use std::net::SocketAddr;
use std::time::Duration;

use crate::auth::nonce;
use crate::{Error, Result};

/// Gateway settings. `Default` serves a single machine; `node` fills it from
/// its configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Addresses to listen on, each for both UDP and TCP (port 0: any free
    /// port, the same for UDP and TCP).
    pub listen: Vec<SocketAddr>,
    /// `host[:port]` this server puts in Via/Record-Route/Contact (for the
    /// proxy, later). `None`: the first listen address.
    pub advertised: Option<String>,
    /// Below this (and above 0) a REGISTER gets 423 with Min-Expires.
    pub min_expires: u32,
    /// Longer requested expiries are clamped to this.
    pub max_expires: u32,
    /// Expiry when the REGISTER gives none.
    pub default_expires: u32,
    /// How long a nonce is accepted (then 401 with stale=true).
    pub nonce_lifetime: Duration,
    /// How many used nonces the nc replay table remembers.
    pub nonce_table_capacity: usize,
    /// Server secret for nonces. Give the same secret to every node (and
    /// keep it across restarts) so that nonces stay valid.
    pub secret: Vec<u8>,
    /// Largest message accepted on TCP (and on UDP, capped at the datagram
    /// limit); larger ones get 513 or are dropped.
    pub max_message_size: usize,
    /// UDP receive tasks per socket.
    pub udp_receivers: usize,
    /// UDP socket receive buffer (SO_RCVBUF) to absorb bursts.
    pub udp_recv_buffer: usize,
    /// Time allowed for one backend call before 503.
    pub backend_timeout: Duration,
    /// Bound on live server transactions.
    pub transaction_capacity: usize,
    /// Bound on bytes of responses kept for retransmissions.
    pub transaction_memory: usize,
    /// Put the MD5 challenge before the SHA-256 one. RFC 8760 s.2.4 wants
    /// the preferred algorithm first (the default, SHA-256), but some
    /// clients only read the first challenge: SIPp 3.6.1 then fails with
    /// "authentication must use MD5 or AKAv1-MD5". Set this for them.
    pub challenge_md5_first: bool,
    /// `Server` header value (None: no header).
    pub server_header: Option<String>,
    /// A TCP connection idle this long is closed.
    pub tcp_idle_timeout: Duration,
    /// Connections beyond this are closed at once.
    pub max_tcp_connections: usize,
    /// Open connections from one source IP address beyond this are closed
    /// at once (one host cannot take every connection slot; a NAT with
    /// many phones behind it needs a higher value).
    pub max_connections_per_source: usize,
    /// Messages being handled at once over all UDP sockets; beyond it the
    /// receive loops wait (the kernel buffer then fills and drops, and UDP
    /// clients retransmit): backpressure instead of unbounded tasks.
    pub max_udp_in_flight: usize,
    /// The same per TCP connection (reading pauses).
    pub max_tcp_in_flight_per_connection: usize,
    /// A call nobody answers is given up after this: `480`, cause
    /// `no_answer` (the proxy's Timer C).
    pub no_answer_timeout: Duration,
    /// An answered call still up after this is ended by the proxy (BYE to
    /// both sides, cause `timeout`): phones that vanish leave no call open.
    pub max_call_duration: Duration,
    /// Per-source rate limit and lock-outs after failed authentications.
    pub guard: crate::guard::GuardConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
            advertised: None,
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            nonce_lifetime: nonce::DEFAULT_LIFETIME,
            nonce_table_capacity: nonce::DEFAULT_TABLE_CAPACITY,
            secret: rand::random::<[u8; 32]>().to_vec(),
            max_message_size: 64 * 1024,
            udp_receivers: 2,
            udp_recv_buffer: 4 * 1024 * 1024,
            backend_timeout: Duration::from_secs(5),
            transaction_capacity: 200_000,
            transaction_memory: 64 * 1024 * 1024,
            challenge_md5_first: false,
            server_header: Some("Dialtone".to_owned()),
            tcp_idle_timeout: Duration::from_secs(600),
            max_tcp_connections: 10_000,
            max_connections_per_source: 64,
            max_udp_in_flight: 65_536,
            max_tcp_in_flight_per_connection: 1_024,
            no_answer_timeout: Duration::from_secs(60),
            max_call_duration: Duration::from_secs(4 * 3600),
            guard: crate::guard::GuardConfig::default(),
        }
    }
}

impl GatewayConfig {
    pub(crate) fn validate(&self) -> Result<()> {
        if self.listen.is_empty() {
            return Err(Error::Config("no listen address".into()));
        }
        if self.min_expires > self.max_expires {
            return Err(Error::Config("min_expires > max_expires".into()));
        }
        if self.default_expires < self.min_expires || self.default_expires > self.max_expires {
            return Err(Error::Config(
                "default_expires outside [min_expires, max_expires]".into(),
            ));
        }
        if self.secret.len() < 16 {
            return Err(Error::Config("secret shorter than 16 bytes".into()));
        }
        Ok(())
    }
}
