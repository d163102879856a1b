//! Configuration of `dialtone serve`: defaults, then a TOML file, then
//! `DIALTONE_*` environment variables, then command-line flags (clap reads
//! flags and env together; a flag wins over its variable).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use dialtone_domain::domain::DigestAlgorithms;
use serde::Deserialize;

/// The effective configuration of a node.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub data_dir: PathBuf,
    pub grpc_addr: SocketAddr,
    pub metrics_addr: Option<SocketAddr>,
    pub node_name: String,
    pub min_password_length: usize,
    /// Seconds an idle actor stays in memory.
    pub actor_idle_secs: u64,
    /// Arbiter threads for actors (0: one per core).
    pub actor_threads: usize,
    /// SIP listen addresses (UDP and TCP each); empty: no SIP.
    pub sip_addrs: Vec<SocketAddr>,
    /// host[:port] put in Via/Record-Route/Contact; default: the first SIP address.
    pub sip_advertised: Option<String>,
    pub sip_min_expires: u32,
    pub sip_max_expires: u32,
    pub sip_default_expires: u32,
    pub sip_nonce_lifetime_secs: u64,
    /// The digest algorithms of a new domain whose request names none, in
    /// challenge order (each domain then has its own).
    pub sip_digest_algorithms: DigestAlgorithms,
    /// Deprecated: put the MD5 challenge first for every domain offering
    /// both MD5 and SHA-256 (each domain's order is its setting now).
    pub sip_challenge_md5_first: bool,
    /// An unanswered call is given up after this many seconds (480).
    pub sip_no_answer_secs: u64,
    /// An answered call is ended by the proxy after this many seconds.
    pub sip_max_call_secs: u64,
    /// How calls are connected: `proxy` (forking proxy) or `b2bua`.
    pub sip_call_mode: dialtone_sip::proxy::CallMode,
    /// Where the media plane (voicemail) binds its RTP ports; `None`: the
    /// first SIP listen address's IP.
    pub media_addr: Option<std::net::IpAddr>,
    /// The address written in SDP for the media plane, when `media_addr` is
    /// not reachable as it is (0.0.0.0, a NAT); `None`: `media_addr`.
    pub media_advertised: Option<std::net::IpAddr>,
    /// RTP ports (even ones; RTCP on the odd one above).
    pub rtp_ports: std::ops::RangeInclusive<u16>,
    /// A media session that hears nothing for this long ends its call.
    pub rtp_timeout_secs: u64,
    /// Most forwards in a chain of call forwarding (0: forwarding off).
    pub sip_max_forward_hops: usize,
    /// Testing: forwarding schedules run on a clock starting at this
    /// moment (µs since the epoch) instead of the wall clock.
    pub test_clock: Option<i64>,
    /// Failed authentications of one user from one address that lock it out there (0: never).
    pub sip_lockout_user_failures: u32,
    /// Failed authentications from one address that lock the address out (0: never).
    pub sip_lockout_source_failures: u32,
    /// Window of the failure counts, seconds.
    pub sip_lockout_window_secs: u64,
    /// Cooling-off of a lock-out, seconds.
    pub sip_lockout_secs: u64,
    /// Messages per second per source address (0: no limit).
    pub sip_source_rate: u32,
    /// Shortest SIP subscription accepted, seconds; shorter gets 423.
    pub sip_subscribe_min_expires: u32,
    /// Longest SIP subscription granted (and the default), seconds.
    pub sip_subscribe_max_expires: u32,
    /// Live SIP subscriptions one subscriber may hold; more get 503 with Retry-After.
    pub sip_subscribe_max_per_user: usize,
    /// Live SIP subscriptions in one domain; more get 503 with Retry-After.
    pub sip_subscribe_max_per_domain: usize,
    /// SUBSCRIBEs per second one source address may send (bursts of four times that); more get 503 with Retry-After; 0 = no limit.
    pub sip_subscribe_rate: u32,
    /// A live subscriber this many events behind the head is ended (0: never).
    pub subscription_max_lag: u64,
    /// The API's admin token; `None`: the one in `<data_dir>/admin.token`,
    /// made on first start.
    pub admin_token: Option<Secret>,
    /// The operator's key that seals carrier passwords (ADR 0028): 32
    /// raw bytes, or base64 keys one per line (the first seals, all open);
    /// `None`: trunks with credentials are refused.
    pub secrets_key_file: Option<PathBuf>,
    /// Serve gRPC over TLS with this certificate chain (PEM) ...
    pub grpc_tls_cert: Option<PathBuf>,
    /// ... and this private key (PEM).
    pub grpc_tls_key: Option<PathBuf>,
    /// SIP over TLS listen address; needs the SIP TLS certificate and key.
    pub sip_tls_addr: Option<SocketAddr>,
    /// SIP over WebSocket listen address.
    pub sip_ws_addr: Option<SocketAddr>,
    /// SIP over secure WebSocket listen address (the SIP TLS certificate).
    pub sip_wss_addr: Option<SocketAddr>,
    /// Certificate chain (PEM) served on SIP TLS and WSS, reloaded on
    /// change and SIGHUP ...
    pub sip_tls_cert: Option<PathBuf>,
    /// ... and its private key (PEM).
    pub sip_tls_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted besides the platform's roots when the
    /// node opens a SIP TLS connection.
    pub sip_tls_ca: Option<PathBuf>,
    /// A TLS handshake or WebSocket upgrade not done in this many seconds
    /// is given up.
    pub sip_tls_handshake_secs: u64,
    /// Connections (TCP, TLS, WS, WSS together) one source address may hold.
    pub sip_max_connections_per_source: usize,
    /// Connections (TCP, TLS, WS, WSS together) the node holds at most.
    pub sip_max_connections: usize,
    /// Seconds between sweeps of orphaned voicemail audio (0: never sweep).
    pub blob_sweep_interval_secs: u64,
    /// Seconds after start-up before the first sweep.
    pub blob_sweep_delay_secs: u64,
    /// A blob younger than this many seconds is never swept: the event
    /// naming it may still be on its way to the log.
    pub blob_sweep_grace_secs: u64,
}

/// A secret setting: compared and used, never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Shortest admin token accepted from the configuration.
pub const MIN_ADMIN_TOKEN_LEN: usize = 16;

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            node_name: default_node_name(),
            min_password_length: 8,
            actor_idle_secs: 120,
            actor_threads: 0,
            sip_addrs: vec![SocketAddr::from(([0, 0, 0, 0], 5060))],
            sip_advertised: None,
            sip_min_expires: 60,
            sip_max_expires: 3600,
            sip_default_expires: 3600,
            sip_nonce_lifetime_secs: 300,
            sip_digest_algorithms: DigestAlgorithms::md5_only(),
            sip_challenge_md5_first: false,
            sip_no_answer_secs: 60,
            sip_max_call_secs: 4 * 3600,
            sip_call_mode: dialtone_sip::proxy::CallMode::Proxy,
            media_addr: None,
            media_advertised: None,
            rtp_ports: 20000..=30000,
            rtp_timeout_secs: 30,
            sip_max_forward_hops: dialtone_domain::routing::DEFAULT_MAX_FORWARD_HOPS,
            test_clock: None,
            sip_lockout_user_failures: 5,
            sip_lockout_source_failures: 20,
            sip_lockout_window_secs: 60,
            sip_lockout_secs: 300,
            sip_source_rate: 5000,
            sip_subscribe_min_expires: 60,
            sip_subscribe_max_expires: 600,
            sip_subscribe_max_per_user: 200,
            sip_subscribe_max_per_domain: 20_000,
            sip_subscribe_rate: 50,
            subscription_max_lag: 1_000_000,
            admin_token: None,
            secrets_key_file: None,
            grpc_tls_cert: None,
            grpc_tls_key: None,
            sip_tls_addr: None,
            sip_ws_addr: None,
            sip_wss_addr: None,
            sip_tls_cert: None,
            sip_tls_key: None,
            sip_tls_ca: None,
            sip_tls_handshake_secs: 10,
            sip_max_connections_per_source: 256,
            sip_max_connections: 10_000,
            blob_sweep_interval_secs: 3600,
            blob_sweep_delay_secs: 300,
            blob_sweep_grace_secs: 3600,
        }
    }
}

fn default_node_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node-1".to_owned())
}

/// The TOML file: every key optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub data_dir: Option<PathBuf>,
    pub grpc_addr: Option<SocketAddr>,
    /// "off" disables the metrics endpoint.
    pub metrics_addr: Option<String>,
    pub node_name: Option<String>,
    pub min_password_length: Option<usize>,
    pub actor_idle_secs: Option<u64>,
    pub actor_threads: Option<usize>,
    /// SIP listen addresses, or ["off"].
    pub sip_addrs: Option<Vec<String>>,
    pub sip_advertised: Option<String>,
    pub sip_min_expires: Option<u32>,
    pub sip_max_expires: Option<u32>,
    pub sip_default_expires: Option<u32>,
    pub sip_nonce_lifetime_secs: Option<u64>,
    /// `["MD5"]`, `["SHA-256", "MD5"]`, or the same comma-separated.
    pub sip_digest_algorithms: Option<NameList>,
    pub sip_challenge_md5_first: Option<bool>,
    pub sip_no_answer_secs: Option<u64>,
    pub sip_max_call_secs: Option<u64>,
    pub sip_call_mode: Option<String>,
    pub media_addr: Option<String>,
    pub media_advertised: Option<String>,
    /// `20000-30000`.
    pub rtp_ports: Option<String>,
    pub rtp_timeout_secs: Option<u64>,
    pub sip_max_forward_hops: Option<usize>,
    pub sip_lockout_user_failures: Option<u32>,
    pub sip_lockout_source_failures: Option<u32>,
    pub sip_lockout_window_secs: Option<u64>,
    pub sip_lockout_secs: Option<u64>,
    pub sip_source_rate: Option<u32>,
    pub sip_subscribe_min_expires: Option<u32>,
    pub sip_subscribe_max_expires: Option<u32>,
    pub sip_subscribe_max_per_user: Option<usize>,
    pub sip_subscribe_max_per_domain: Option<usize>,
    pub sip_subscribe_rate: Option<u32>,
    pub subscription_max_lag: Option<u64>,
    pub admin_token: Option<String>,
    pub secrets_key_file: Option<PathBuf>,
    pub grpc_tls_cert: Option<PathBuf>,
    pub grpc_tls_key: Option<PathBuf>,
    pub sip_tls_addr: Option<SocketAddr>,
    pub sip_ws_addr: Option<SocketAddr>,
    pub sip_wss_addr: Option<SocketAddr>,
    pub sip_tls_cert: Option<PathBuf>,
    pub sip_tls_key: Option<PathBuf>,
    pub sip_tls_ca: Option<PathBuf>,
    pub sip_tls_handshake_secs: Option<u64>,
    pub sip_max_connections_per_source: Option<usize>,
    pub sip_max_connections: Option<usize>,
    pub blob_sweep_interval_secs: Option<u64>,
    pub blob_sweep_delay_secs: Option<u64>,
    pub blob_sweep_grace_secs: Option<u64>,
}

/// A list in the file: a TOML array or one comma-separated string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum NameList {
    Text(String),
    List(Vec<String>),
}

fn digest_algorithms(names: &NameList) -> anyhow::Result<DigestAlgorithms> {
    let parsed = match names {
        NameList::Text(text) => DigestAlgorithms::parse_comma_separated(text),
        NameList::List(list) => DigestAlgorithms::parse(list),
    };
    parsed.map_err(|e| anyhow::anyhow!("sip_digest_algorithms: {e}"))
}

impl FileConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }
}

/// Values given by flags or environment variables.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// TOML configuration file (keys as the long flags, with '_' for '-').
    #[arg(long, env = "DIALTONE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory of the embedded event log [default: ./data].
    #[arg(long, env = "DIALTONE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "DIALTONE_GRPC_ADDR")]
    pub grpc_addr: Option<SocketAddr>,
    /// Prometheus metrics listen address, or "off" [default: 127.0.0.1:9464].
    #[arg(long, env = "DIALTONE_METRICS_ADDR")]
    pub metrics_addr: Option<String>,
    /// Name of this node, recorded on every event it appends [default: $HOSTNAME or node-1].
    #[arg(long, env = "DIALTONE_NODE_NAME")]
    pub node_name: Option<String>,
    /// Minimum length of SIP passwords [default: 8].
    #[arg(long, env = "DIALTONE_MIN_PASSWORD_LENGTH")]
    pub min_password_length: Option<usize>,
    /// Seconds an idle domain/user actor stays in memory [default: 120].
    #[arg(long, env = "DIALTONE_ACTOR_IDLE_SECS")]
    pub actor_idle_secs: Option<u64>,
    /// Actor threads; 0 means one per core [default: 0].
    #[arg(long, env = "DIALTONE_ACTOR_THREADS")]
    pub actor_threads: Option<usize>,
    /// SIP listen address, UDP and TCP (repeat for several; "off" for no SIP) [default: 0.0.0.0:5060].
    #[arg(long = "sip-addr", env = "DIALTONE_SIP_ADDR", value_delimiter = ',')]
    pub sip_addrs: Vec<String>,
    /// host[:port] the server puts in Via/Record-Route/Contact [default: the first SIP address].
    #[arg(long, env = "DIALTONE_SIP_ADVERTISED")]
    pub sip_advertised: Option<String>,
    /// Shortest registration accepted, seconds; shorter gets 423 [default: 60].
    #[arg(long, env = "DIALTONE_SIP_MIN_EXPIRES")]
    pub sip_min_expires: Option<u32>,
    /// Longest registration granted, seconds; longer is clamped [default: 3600].
    #[arg(long, env = "DIALTONE_SIP_MAX_EXPIRES")]
    pub sip_max_expires: Option<u32>,
    /// Registration time when the phone asks for none, seconds [default: 3600].
    #[arg(long, env = "DIALTONE_SIP_DEFAULT_EXPIRES")]
    pub sip_default_expires: Option<u32>,
    /// How long a digest nonce stays valid, seconds [default: 300].
    #[arg(long, env = "DIALTONE_SIP_NONCE_LIFETIME_SECS")]
    pub sip_nonce_lifetime_secs: Option<u64>,
    /// Digest algorithms of new domains, in challenge order: md5, sha-256, or both comma-separated (each domain can change its own) [default: md5].
    #[arg(long, env = "DIALTONE_SIP_DIGEST_ALGORITHMS")]
    pub sip_digest_algorithms: Option<String>,
    /// Deprecated (each domain's --digest-algorithms gives the order): put MD5 first for every domain offering MD5 and SHA-256.
    #[arg(long, env = "DIALTONE_SIP_CHALLENGE_MD5_FIRST")]
    pub sip_challenge_md5_first: bool,
    /// An unanswered call is given up after this many seconds: 480, cause no_answer [default: 60].
    #[arg(long, env = "DIALTONE_SIP_NO_ANSWER_SECS")]
    pub sip_no_answer_secs: Option<u64>,
    /// An answered call still up after this many seconds is ended by the proxy (BYE both ways, cause timeout) [default: 14400].
    #[arg(long, env = "DIALTONE_SIP_MAX_CALL_SECS")]
    pub sip_max_call_secs: Option<u64>,
    /// How calls are connected: `proxy` (a forking proxy: the phones share one dialog) or `b2bua` (a back-to-back user agent: a dialog with each side, neither sees the other's addresses or identifiers) [default: proxy].
    #[arg(long, env = "DIALTONE_SIP_CALL_MODE")]
    pub sip_call_mode: Option<String>,
    /// IP address the media plane (voicemail) binds its RTP ports on [default: the first SIP listen address's IP].
    #[arg(long, env = "DIALTONE_MEDIA_ADDR")]
    pub media_addr: Option<String>,
    /// IP address written in SDP for the media plane, when the bound one is not what phones reach (0.0.0.0, NAT) [default: the media address].
    #[arg(long, env = "DIALTONE_MEDIA_ADVERTISED")]
    pub media_advertised: Option<String>,
    /// RTP port range, `LOW-HIGH` (even LOW; each call takes an even port and the odd one above for RTCP) [default: 20000-30000].
    #[arg(long, env = "DIALTONE_RTP_PORTS")]
    pub rtp_ports: Option<String>,
    /// A voicemail or conference call whose phone sends no RTP for this many seconds is ended [default: 30].
    #[arg(long, env = "DIALTONE_RTP_TIMEOUT_SECS")]
    pub rtp_timeout_secs: Option<u64>,
    /// Most forwards in one chain of call forwarding (alice -> bob -> carol is 2); a forward beyond it is not taken and the chain ends at its last target [default: 5].
    #[arg(long, env = "DIALTONE_SIP_MAX_FORWARD_HOPS")]
    pub sip_max_forward_hops: Option<usize>,
    /// For tests only: evaluate forwarding schedules on a clock that starts at this RFC 3339 moment (e.g. 2026-12-07T19:05:00Z) and runs from there; everything else keeps the wall clock.
    #[arg(long, env = "DIALTONE_TEST_CLOCK")]
    pub test_clock: Option<String>,
    /// Failed digest authentications of one user from one address (in the window) that lock that user out for that address; 0 = never [default: 5].
    #[arg(long, env = "DIALTONE_SIP_LOCKOUT_USER_FAILURES")]
    pub sip_lockout_user_failures: Option<u32>,
    /// Failed digest authentications from one address, any users (in the window), that lock the whole address out; 0 = never [default: 20].
    #[arg(long, env = "DIALTONE_SIP_LOCKOUT_SOURCE_FAILURES")]
    pub sip_lockout_source_failures: Option<u32>,
    /// Window in which failed authentications are counted, seconds [default: 60].
    #[arg(long, env = "DIALTONE_SIP_LOCKOUT_WINDOW_SECS")]
    pub sip_lockout_window_secs: Option<u64>,
    /// How long a locked-out address is refused (403), seconds [default: 300].
    #[arg(long, env = "DIALTONE_SIP_LOCKOUT_SECS")]
    pub sip_lockout_secs: Option<u64>,
    /// SIP messages per second one source address may send (bursts of twice that); more are dropped; 0 = no limit [default: 5000].
    #[arg(long, env = "DIALTONE_SIP_SOURCE_RATE")]
    pub sip_source_rate: Option<u32>,
    /// Shortest SIP subscription accepted, seconds; shorter gets 423 [default: 60].
    #[arg(long, env = "DIALTONE_SIP_SUBSCRIBE_MIN_EXPIRES")]
    pub sip_subscribe_min_expires: Option<u32>,
    /// Longest SIP subscription granted (and the default), seconds [default: 600].
    #[arg(long, env = "DIALTONE_SIP_SUBSCRIBE_MAX_EXPIRES")]
    pub sip_subscribe_max_expires: Option<u32>,
    /// Live SIP subscriptions one subscriber may hold; more get 503 with Retry-After [default: 200].
    #[arg(long, env = "DIALTONE_SIP_SUBSCRIBE_MAX_PER_USER")]
    pub sip_subscribe_max_per_user: Option<usize>,
    /// Live SIP subscriptions in one domain; more get 503 with Retry-After [default: 20000].
    #[arg(long, env = "DIALTONE_SIP_SUBSCRIBE_MAX_PER_DOMAIN")]
    pub sip_subscribe_max_per_domain: Option<usize>,
    /// SUBSCRIBEs per second one source address may send (bursts of four times that); more get 503 with Retry-After; 0 = no limit [default: 50].
    #[arg(long, env = "DIALTONE_SIP_SUBSCRIBE_RATE")]
    pub sip_subscribe_rate: Option<u32>,
    /// A live event subscriber this many events behind the head is ended with RESOURCE_EXHAUSTED and the position to resume from; 0 = never [default: 1000000].
    #[arg(long, env = "DIALTONE_SUBSCRIPTION_MAX_LAG")]
    pub subscription_max_lag: Option<u64>,
    /// The gRPC API's admin token (at least 16 printable characters) [default: <data-dir>/admin.token, made and printed once on first start].
    #[arg(long, env = "DIALTONE_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The key that seals carrier passwords of trunks: a file of 32 random bytes, or of base64 keys one per line (the first seals, the others still open older passwords) [default: none: trunks with credentials are refused].
    #[arg(long, env = "DIALTONE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,
    /// Serve gRPC over TLS with this certificate chain (PEM); needs --grpc-tls-key [default: plaintext].
    #[arg(long, env = "DIALTONE_GRPC_TLS_CERT", requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --grpc-tls-cert.
    #[arg(long, env = "DIALTONE_GRPC_TLS_KEY", requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<PathBuf>,
    /// SIP over TLS listen address, e.g. 0.0.0.0:5061; needs --sip-tls-cert and --sip-tls-key [default: off].
    #[arg(long, env = "DIALTONE_SIP_TLS_ADDR")]
    pub sip_tls_addr: Option<SocketAddr>,
    /// SIP over WebSocket (RFC 7118) listen address, e.g. 0.0.0.0:8080 [default: off].
    #[arg(long, env = "DIALTONE_SIP_WS_ADDR")]
    pub sip_ws_addr: Option<SocketAddr>,
    /// SIP over secure WebSocket listen address, e.g. 0.0.0.0:8443; uses the SIP TLS certificate [default: off].
    #[arg(long, env = "DIALTONE_SIP_WSS_ADDR")]
    pub sip_wss_addr: Option<SocketAddr>,
    /// Certificate chain (PEM, leaf first) served on SIP TLS and WSS; re-read when the file changes and on SIGHUP.
    #[arg(long, env = "DIALTONE_SIP_TLS_CERT")]
    pub sip_tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --sip-tls-cert.
    #[arg(long, env = "DIALTONE_SIP_TLS_KEY")]
    pub sip_tls_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted, besides the system's, for SIP TLS connections the node opens.
    #[arg(long, env = "DIALTONE_SIP_TLS_CA")]
    pub sip_tls_ca: Option<PathBuf>,
    /// Seconds a client has to finish its TLS handshake (and WebSocket upgrade) before it is closed [default: 10].
    #[arg(long, env = "DIALTONE_SIP_TLS_HANDSHAKE_SECS")]
    pub sip_tls_handshake_secs: Option<u64>,
    /// Connections (TCP, TLS, WS and WSS together) one source address may hold open; more are closed at once [default: 256].
    #[arg(long, env = "DIALTONE_SIP_MAX_CONNECTIONS_PER_SOURCE")]
    pub sip_max_connections_per_source: Option<usize>,
    /// Connections (TCP, TLS, WS and WSS together) the node holds open at most; more are closed at once [default: 10000].
    #[arg(long, env = "DIALTONE_SIP_MAX_CONNECTIONS")]
    pub sip_max_connections: Option<usize>,
    /// Seconds between sweeps of voicemail audio no mailbox names (orphans of a crash or a failed delete); 0 turns sweeping off [default: 3600].
    #[arg(long, env = "DIALTONE_BLOB_SWEEP_INTERVAL_SECS")]
    pub blob_sweep_interval_secs: Option<u64>,
    /// Seconds after start-up before the first sweep of orphaned voicemail audio [default: 300].
    #[arg(long, env = "DIALTONE_BLOB_SWEEP_DELAY_SECS")]
    pub blob_sweep_delay_secs: Option<u64>,
    /// Voicemail audio younger than this many seconds is never swept (its message or greeting may still be being saved); at least 60 [default: 3600].
    #[arg(long, env = "DIALTONE_BLOB_SWEEP_GRACE_SECS")]
    pub blob_sweep_grace_secs: Option<u64>,
}

fn sip_addrs(values: &[String]) -> anyhow::Result<Vec<SocketAddr>> {
    if values.len() == 1 && values[0].eq_ignore_ascii_case("off") {
        return Ok(Vec::new());
    }
    values
        .iter()
        .map(|v| {
            v.trim()
                .parse()
                .with_context(|| format!("invalid SIP address '{v}' (ip:port or off)"))
        })
        .collect()
}

fn metrics_addr(value: &str) -> anyhow::Result<Option<SocketAddr>> {
    if value.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .with_context(|| format!("invalid metrics address '{value}' (host:port or off)"))
}

impl Config {
    /// The media plane's settings from a file or flags (each given one
    /// replaces the current value).
    fn media(
        &mut self,
        addr: Option<&str>,
        advertised: Option<&str>,
        ports: Option<&str>,
        timeout_secs: Option<u64>,
    ) -> anyhow::Result<()> {
        let ip = |what: &str, v: &str| {
            v.trim()
                .parse::<std::net::IpAddr>()
                .map_err(|_| anyhow::anyhow!("{what}: '{v}' is not an IP address"))
        };
        if let Some(v) = addr {
            self.media_addr = Some(ip("media_addr", v)?);
        }
        if let Some(v) = advertised {
            self.media_advertised = Some(ip("media_advertised", v)?);
        }
        if let Some(v) = ports {
            self.rtp_ports = parse_port_range(v)?;
        }
        if let Some(v) = timeout_secs {
            if v == 0 {
                anyhow::bail!("rtp_timeout_secs: must be at least 1");
            }
            self.rtp_timeout_secs = v;
        }
        Ok(())
    }
    /// Defaults, then the file (if any), then the overrides.
    pub fn resolve(overrides: &Overrides) -> anyhow::Result<Self> {
        let mut config = Config::default();
        if let Some(path) = &overrides.config {
            let file = FileConfig::load(path)?;
            config.apply_file(file)?;
        }
        config.apply_overrides(overrides)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_file(&mut self, file: FileConfig) -> anyhow::Result<()> {
        if let Some(v) = file.data_dir {
            self.data_dir = v;
        }
        if let Some(v) = file.grpc_addr {
            self.grpc_addr = v;
        }
        if let Some(v) = file.metrics_addr {
            self.metrics_addr = metrics_addr(&v)?;
        }
        if let Some(v) = file.node_name {
            self.node_name = v;
        }
        if let Some(v) = file.min_password_length {
            self.min_password_length = v;
        }
        if let Some(v) = file.actor_idle_secs {
            self.actor_idle_secs = v;
        }
        if let Some(v) = file.actor_threads {
            self.actor_threads = v;
        }
        if let Some(v) = file.sip_addrs {
            self.sip_addrs = sip_addrs(&v)?;
        }
        if let Some(v) = file.sip_advertised {
            self.sip_advertised = Some(v);
        }
        if let Some(v) = file.sip_min_expires {
            self.sip_min_expires = v;
        }
        if let Some(v) = file.sip_max_expires {
            self.sip_max_expires = v;
        }
        if let Some(v) = file.sip_default_expires {
            self.sip_default_expires = v;
        }
        if let Some(v) = file.sip_nonce_lifetime_secs {
            self.sip_nonce_lifetime_secs = v;
        }
        if let Some(v) = &file.sip_digest_algorithms {
            self.sip_digest_algorithms = digest_algorithms(v)?;
        }
        if let Some(v) = file.sip_challenge_md5_first {
            self.sip_challenge_md5_first = v;
        }
        if let Some(v) = file.sip_no_answer_secs {
            self.sip_no_answer_secs = v;
        }
        if let Some(v) = file.sip_max_call_secs {
            self.sip_max_call_secs = v;
        }
        if let Some(v) = &file.sip_call_mode {
            self.sip_call_mode = v.parse().map_err(anyhow::Error::msg)?;
        }
        self.media(
            file.media_addr.as_deref(),
            file.media_advertised.as_deref(),
            file.rtp_ports.as_deref(),
            file.rtp_timeout_secs,
        )?;
        if let Some(v) = file.sip_max_forward_hops {
            self.sip_max_forward_hops = v;
        }
        if let Some(v) = file.sip_lockout_user_failures {
            self.sip_lockout_user_failures = v;
        }
        if let Some(v) = file.sip_lockout_source_failures {
            self.sip_lockout_source_failures = v;
        }
        if let Some(v) = file.sip_lockout_window_secs {
            self.sip_lockout_window_secs = v;
        }
        if let Some(v) = file.sip_lockout_secs {
            self.sip_lockout_secs = v;
        }
        if let Some(v) = file.sip_source_rate {
            self.sip_source_rate = v;
        }
        if let Some(v) = file.sip_subscribe_min_expires {
            self.sip_subscribe_min_expires = v;
        }
        if let Some(v) = file.sip_subscribe_max_expires {
            self.sip_subscribe_max_expires = v;
        }
        if let Some(v) = file.sip_subscribe_max_per_user {
            self.sip_subscribe_max_per_user = v;
        }
        if let Some(v) = file.sip_subscribe_max_per_domain {
            self.sip_subscribe_max_per_domain = v;
        }
        if let Some(v) = file.sip_subscribe_rate {
            self.sip_subscribe_rate = v;
        }
        if let Some(v) = file.subscription_max_lag {
            self.subscription_max_lag = v;
        }
        if let Some(v) = file.admin_token {
            self.admin_token = Some(Secret(v));
        }
        if let Some(v) = file.secrets_key_file {
            self.secrets_key_file = Some(v);
        }
        if let Some(v) = file.grpc_tls_cert {
            self.grpc_tls_cert = Some(v);
        }
        if let Some(v) = file.grpc_tls_key {
            self.grpc_tls_key = Some(v);
        }
        if let Some(v) = file.sip_tls_addr {
            self.sip_tls_addr = Some(v);
        }
        if let Some(v) = file.sip_ws_addr {
            self.sip_ws_addr = Some(v);
        }
        if let Some(v) = file.sip_wss_addr {
            self.sip_wss_addr = Some(v);
        }
        if let Some(v) = file.sip_tls_cert {
            self.sip_tls_cert = Some(v);
        }
        if let Some(v) = file.sip_tls_key {
            self.sip_tls_key = Some(v);
        }
        if let Some(v) = file.sip_tls_ca {
            self.sip_tls_ca = Some(v);
        }
        if let Some(v) = file.sip_tls_handshake_secs {
            self.sip_tls_handshake_secs = v;
        }
        if let Some(v) = file.sip_max_connections_per_source {
            self.sip_max_connections_per_source = v;
        }
        if let Some(v) = file.sip_max_connections {
            self.sip_max_connections = v;
        }
        if let Some(v) = file.blob_sweep_interval_secs {
            self.blob_sweep_interval_secs = v;
        }
        if let Some(v) = file.blob_sweep_delay_secs {
            self.blob_sweep_delay_secs = v;
        }
        if let Some(v) = file.blob_sweep_grace_secs {
            self.blob_sweep_grace_secs = v;
        }
        Ok(())
    }

    fn apply_overrides(&mut self, o: &Overrides) -> anyhow::Result<()> {
        if let Some(v) = &o.data_dir {
            self.data_dir = v.clone();
        }
        if let Some(v) = o.grpc_addr {
            self.grpc_addr = v;
        }
        if let Some(v) = &o.metrics_addr {
            self.metrics_addr = metrics_addr(v)?;
        }
        if let Some(v) = &o.node_name {
            self.node_name = v.clone();
        }
        if let Some(v) = o.min_password_length {
            self.min_password_length = v;
        }
        if let Some(v) = o.actor_idle_secs {
            self.actor_idle_secs = v;
        }
        if let Some(v) = o.actor_threads {
            self.actor_threads = v;
        }
        if !o.sip_addrs.is_empty() {
            self.sip_addrs = sip_addrs(&o.sip_addrs)?;
        }
        if let Some(v) = &o.sip_advertised {
            self.sip_advertised = Some(v.clone());
        }
        if let Some(v) = o.sip_min_expires {
            self.sip_min_expires = v;
        }
        if let Some(v) = o.sip_max_expires {
            self.sip_max_expires = v;
        }
        if let Some(v) = o.sip_default_expires {
            self.sip_default_expires = v;
        }
        if let Some(v) = o.sip_nonce_lifetime_secs {
            self.sip_nonce_lifetime_secs = v;
        }
        if let Some(v) = o.sip_no_answer_secs {
            self.sip_no_answer_secs = v;
        }
        if let Some(v) = o.sip_max_call_secs {
            self.sip_max_call_secs = v;
        }
        if let Some(v) = &o.sip_call_mode {
            self.sip_call_mode = v.parse().map_err(anyhow::Error::msg)?;
        }
        self.media(
            o.media_addr.as_deref(),
            o.media_advertised.as_deref(),
            o.rtp_ports.as_deref(),
            o.rtp_timeout_secs,
        )?;
        if let Some(v) = o.sip_max_forward_hops {
            self.sip_max_forward_hops = v;
        }
        if let Some(v) = &o.test_clock {
            let at = time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .map_err(|e| {
                    anyhow::anyhow!("--test-clock {v:?} is not an RFC 3339 moment (such as 2026-12-07T19:05:00Z): {e}")
                })?;
            self.test_clock =
                Some(i64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(i64::MAX));
        }
        if let Some(v) = o.sip_lockout_user_failures {
            self.sip_lockout_user_failures = v;
        }
        if let Some(v) = o.sip_lockout_source_failures {
            self.sip_lockout_source_failures = v;
        }
        if let Some(v) = o.sip_lockout_window_secs {
            self.sip_lockout_window_secs = v;
        }
        if let Some(v) = o.sip_lockout_secs {
            self.sip_lockout_secs = v;
        }
        if let Some(v) = o.sip_source_rate {
            self.sip_source_rate = v;
        }
        if let Some(v) = o.sip_subscribe_min_expires {
            self.sip_subscribe_min_expires = v;
        }
        if let Some(v) = o.sip_subscribe_max_expires {
            self.sip_subscribe_max_expires = v;
        }
        if let Some(v) = o.sip_subscribe_max_per_user {
            self.sip_subscribe_max_per_user = v;
        }
        if let Some(v) = o.sip_subscribe_max_per_domain {
            self.sip_subscribe_max_per_domain = v;
        }
        if let Some(v) = o.sip_subscribe_rate {
            self.sip_subscribe_rate = v;
        }
        if let Some(v) = &o.sip_digest_algorithms {
            self.sip_digest_algorithms = digest_algorithms(&NameList::Text(v.clone()))?;
        }
        if o.sip_challenge_md5_first {
            self.sip_challenge_md5_first = true;
        }
        if let Some(v) = o.subscription_max_lag {
            self.subscription_max_lag = v;
        }
        if let Some(v) = &o.admin_token {
            self.admin_token = Some(Secret(v.clone()));
        }
        if let Some(v) = &o.secrets_key_file {
            self.secrets_key_file = Some(v.clone());
        }
        if let Some(v) = &o.grpc_tls_cert {
            self.grpc_tls_cert = Some(v.clone());
        }
        if let Some(v) = &o.grpc_tls_key {
            self.grpc_tls_key = Some(v.clone());
        }
        if let Some(v) = o.sip_tls_addr {
            self.sip_tls_addr = Some(v);
        }
        if let Some(v) = o.sip_ws_addr {
            self.sip_ws_addr = Some(v);
        }
        if let Some(v) = o.sip_wss_addr {
            self.sip_wss_addr = Some(v);
        }
        if let Some(v) = &o.sip_tls_cert {
            self.sip_tls_cert = Some(v.clone());
        }
        if let Some(v) = &o.sip_tls_key {
            self.sip_tls_key = Some(v.clone());
        }
        if let Some(v) = &o.sip_tls_ca {
            self.sip_tls_ca = Some(v.clone());
        }
        if let Some(v) = o.sip_tls_handshake_secs {
            self.sip_tls_handshake_secs = v;
        }
        if let Some(v) = o.sip_max_connections_per_source {
            self.sip_max_connections_per_source = v;
        }
        if let Some(v) = o.sip_max_connections {
            self.sip_max_connections = v;
        }
        if let Some(v) = o.blob_sweep_interval_secs {
            self.blob_sweep_interval_secs = v;
        }
        if let Some(v) = o.blob_sweep_delay_secs {
            self.blob_sweep_delay_secs = v;
        }
        if let Some(v) = o.blob_sweep_grace_secs {
            self.blob_sweep_grace_secs = v;
        }
        Ok(())
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            (1..=256).contains(&self.min_password_length),
            "min_password_length must be between 1 and 256"
        );
        anyhow::ensure!(
            self.actor_idle_secs >= 1,
            "actor_idle_secs must be at least 1"
        );
        anyhow::ensure!(
            !self.node_name.trim().is_empty(),
            "node_name must not be empty"
        );
        if let Some(Secret(token)) = &self.admin_token {
            anyhow::ensure!(
                token.len() >= MIN_ADMIN_TOKEN_LEN && token.bytes().all(|b| b.is_ascii_graphic()),
                "admin_token must be at least {MIN_ADMIN_TOKEN_LEN} printable ASCII characters without spaces"
            );
        }
        anyhow::ensure!(
            self.grpc_tls_cert.is_some() == self.grpc_tls_key.is_some(),
            "grpc_tls_cert and grpc_tls_key go together"
        );
        anyhow::ensure!(
            self.sip_tls_cert.is_some() == self.sip_tls_key.is_some(),
            "sip_tls_cert and sip_tls_key go together"
        );
        if self.sip_tls_cert.is_none() {
            anyhow::ensure!(
                self.sip_tls_addr.is_none(),
                "sip_tls_addr needs sip_tls_cert and sip_tls_key (the certificate served to phones)"
            );
            anyhow::ensure!(
                self.sip_wss_addr.is_none(),
                "sip_wss_addr needs sip_tls_cert and sip_tls_key (the certificate served to browsers)"
            );
        }
        anyhow::ensure!(
            self.sip_tls_handshake_secs >= 1,
            "sip_tls_handshake_secs must be at least 1"
        );
        anyhow::ensure!(
            self.sip_max_connections_per_source >= 1,
            "sip_max_connections_per_source must be at least 1"
        );
        anyhow::ensure!(
            self.sip_max_connections >= 1,
            "sip_max_connections must be at least 1"
        );
        // Below a minute the grace period would no longer cover a slow
        // save (a put, then an append waiting behind a busy log).
        anyhow::ensure!(
            self.blob_sweep_grace_secs >= 60,
            "blob_sweep_grace_secs must be at least 60 (a younger blob's message may still be being saved)"
        );
        Ok(())
    }
}

/// `LOW-HIGH`: an even LOW and at least one RTP/RTCP pair.
fn parse_port_range(v: &str) -> anyhow::Result<std::ops::RangeInclusive<u16>> {
    let bad =
        || anyhow::anyhow!("rtp_ports: '{v}' is not LOW-HIGH with an even LOW (e.g. 20000-30000)");
    let (low, high) = v.trim().split_once('-').ok_or_else(bad)?;
    let low: u16 = low.trim().parse().map_err(|_| bad())?;
    let high: u16 = high.trim().parse().map_err(|_| bad())?;
    if low == 0 || !low.is_multiple_of(2) || high <= low {
        return Err(bad());
    }
    Ok(low..=high)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_file_which_overrides_defaults() {
        let dir = std::env::temp_dir().join(format!("dialtone-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dialtone.toml");
        std::fs::write(
            &path,
            "data_dir = \"/srv/dialtone\"\ngrpc_addr = \"127.0.0.1:6000\"\nmetrics_addr = \"off\"\nmin_password_length = 12\n",
        )
        .unwrap();
        let overrides = Overrides {
            config: Some(path.clone()),
            grpc_addr: Some("127.0.0.1:7000".parse().unwrap()),
            ..Overrides::default()
        };
        let config = Config::resolve(&overrides).unwrap();
        assert_eq!(config.data_dir, PathBuf::from("/srv/dialtone"));
        assert_eq!(config.grpc_addr, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.metrics_addr, None);
        assert_eq!(config.min_password_length, 12);
        assert_eq!(config.admin_token, None);

        std::fs::write(&path, "admin_token = \"from-the-file-0123456789\"\n").unwrap();
        let config = Config::resolve(&overrides).unwrap();
        assert_eq!(
            config.admin_token,
            Some(Secret("from-the-file-0123456789".into()))
        );
        assert!(!format!("{config:?}").contains("from-the-file"));
        let flagged = Overrides {
            admin_token: Some("from-the-flag-0123456789".into()),
            ..overrides.clone()
        };
        let config = Config::resolve(&flagged).unwrap();
        assert_eq!(
            config.admin_token,
            Some(Secret("from-the-flag-0123456789".into()))
        );
        let short = Overrides {
            admin_token: Some("short".into()),
            ..overrides.clone()
        };
        assert!(Config::resolve(&short).is_err());
        std::fs::write(&path, "sip_call_mode = \"b2bua\"\n").unwrap();
        assert_eq!(
            Config::resolve(&overrides).unwrap().sip_call_mode,
            dialtone_sip::proxy::CallMode::B2bua
        );
        let proxy = Overrides {
            sip_call_mode: Some("proxy".into()),
            ..overrides.clone()
        };
        assert_eq!(
            Config::resolve(&proxy).unwrap().sip_call_mode,
            dialtone_sip::proxy::CallMode::Proxy
        );
        std::fs::write(&path, "sip_call_mode = \"relay\"\n").unwrap();
        assert!(Config::resolve(&overrides).is_err());
        std::fs::write(&path, "").unwrap();
        let tls_without_cert = Overrides {
            sip_tls_addr: Some("127.0.0.1:5061".parse().unwrap()),
            ..overrides.clone()
        };
        let refused = Config::resolve(&tls_without_cert).unwrap_err().to_string();
        assert!(
            refused.contains("sip_tls_addr needs sip_tls_cert"),
            "{refused}"
        );
        std::fs::write(
            &path,
            "sip_tls_addr = \"0.0.0.0:5061\"\nsip_wss_addr = \"0.0.0.0:8443\"\nsip_ws_addr = \"0.0.0.0:8080\"\nsip_tls_cert = \"/etc/dialtone/sip.pem\"\nsip_tls_key = \"/etc/dialtone/sip.key\"\nsip_tls_handshake_secs = 3\nsip_max_connections_per_source = 9\nsip_max_connections = 20000\n",
        )
        .unwrap();
        let config = Config::resolve(&overrides).unwrap();
        assert_eq!(config.sip_tls_addr, Some("0.0.0.0:5061".parse().unwrap()));
        assert_eq!(config.sip_ws_addr, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(config.sip_wss_addr, Some("0.0.0.0:8443".parse().unwrap()));
        assert_eq!(
            config.sip_tls_cert,
            Some(PathBuf::from("/etc/dialtone/sip.pem"))
        );
        assert_eq!(config.sip_tls_handshake_secs, 3);
        assert_eq!(config.sip_max_connections_per_source, 9);
        assert_eq!(config.sip_max_connections, 20_000);
        std::fs::write(&path, "unknown_key = 1\n").unwrap();
        assert!(Config::resolve(&overrides).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn blob_sweeping_has_defaults_and_a_floor_under_its_grace_period() {
        let config = Config::resolve(&Overrides::default()).unwrap();
        assert_eq!(
            (
                config.blob_sweep_interval_secs,
                config.blob_sweep_delay_secs,
                config.blob_sweep_grace_secs
            ),
            (3600, 300, 3600)
        );
        let config = Config::resolve(&Overrides {
            blob_sweep_interval_secs: Some(0),
            blob_sweep_delay_secs: Some(5),
            blob_sweep_grace_secs: Some(60),
            ..Overrides::default()
        })
        .unwrap();
        assert_eq!(
            (
                config.blob_sweep_interval_secs,
                config.blob_sweep_delay_secs,
                config.blob_sweep_grace_secs
            ),
            (0, 5, 60)
        );
        let err = Config::resolve(&Overrides {
            blob_sweep_grace_secs: Some(59),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("blob_sweep_grace_secs"), "{err}");
    }

    #[test]
    fn the_test_clock_is_an_rfc3339_moment_or_a_clear_error() {
        let config = Config::resolve(&Overrides {
            test_clock: Some("2026-12-08T19:05:00+01:00".into()),
            ..Overrides::default()
        })
        .unwrap();
        // 18:05 UTC, in microseconds.
        assert_eq!(config.test_clock, Some(1_796_753_100_000_000));
        assert_eq!(
            Config::resolve(&Overrides::default()).unwrap().test_clock,
            None
        );
        let err = Config::resolve(&Overrides {
            test_clock: Some("tuesday evening".into()),
            ..Overrides::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--test-clock")
                && err.contains("tuesday evening")
                && err.contains("RFC 3339"),
            "{err}"
        );
    }

    #[test]
    fn digest_algorithms_come_from_the_file_or_the_flag() {
        use dialtone_domain::domain::DigestAlgorithm::{Md5, Sha256};
        let dir = std::env::temp_dir().join(format!("dialtone-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("dialtone.toml");
        let overrides = Overrides {
            config: Some(path.clone()),
            ..Overrides::default()
        };
        std::fs::write(&path, "").unwrap();
        let config = Config::resolve(&overrides).unwrap();
        assert_eq!(config.sip_digest_algorithms.as_slice(), [Md5]);

        std::fs::write(&path, "sip_digest_algorithms = [\"sha-256\", \"MD5\"]\n").unwrap();
        let config = Config::resolve(&overrides).unwrap();
        assert_eq!(config.sip_digest_algorithms.as_slice(), [Sha256, Md5]);
        std::fs::write(&path, "sip_digest_algorithms = \"md5, sha-256\"\n").unwrap();
        let config = Config::resolve(&overrides).unwrap();
        assert_eq!(config.sip_digest_algorithms.as_slice(), [Md5, Sha256]);

        let flagged = Overrides {
            sip_digest_algorithms: Some("SHA-256".into()),
            ..overrides.clone()
        };
        let config = Config::resolve(&flagged).unwrap();
        assert_eq!(config.sip_digest_algorithms.as_slice(), [Sha256]);

        for bad in ["sha-1", "md5,md5", ""] {
            let flagged = Overrides {
                sip_digest_algorithms: Some(bad.into()),
                ..overrides.clone()
            };
            let err = Config::resolve(&flagged).unwrap_err().to_string();
            assert!(err.contains("sip_digest_algorithms"), "{bad:?}: {err}");
        }
        std::fs::write(&path, "sip_digest_algorithms = []\n").unwrap();
        assert!(Config::resolve(&overrides).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
