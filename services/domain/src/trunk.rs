//! SIP trunks: how a domain reaches a carrier (ADR 0028). What a trunk's
//! settings are and what makes them valid; the calls over a trunk are the
//! B2BUA's.
//!
//! A trunk lives in its domain's aggregate ([`crate::domain`]), as ring
//! groups and conference rooms do: the domain's dial plan names trunks,
//! and one actor deciding both is what makes "a trunk a rule uses cannot be
//! deleted" hold without a cross-aggregate race. Trunk names are a
//! namespace of their own (a trunk is never dialled, so `carrier` may also
//! be a user's name). Trunks are few and change rarely: whole-value events
//! (`TrunkCreated/Updated/Deleted`) keep the domain stream small.
//!
//! The carrier's password is never here in clear: the actors encrypt it
//! with the operator's key before the command is made ([`SealedSecret`],
//! the domain takes no keys and no randomness), the events carry the
//! ciphertext only, and exports leave even that out
//! ([`crate::event::redact_secrets`]).

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::number::E164;
use crate::{Error, Result};

/// Most gateways of one trunk.
pub const MAX_GATEWAYS: usize = 16;
/// Most inbound source entries (addresses or networks) of one trunk.
pub const MAX_INBOUND_SOURCES: usize = 64;
/// Registration expiry when none is given, and its bounds (seconds).
pub const DEFAULT_REGISTER_EXPIRY_SECS: u32 = 3600;
pub const MIN_REGISTER_EXPIRY_SECS: u32 = 60;
pub const MAX_REGISTER_EXPIRY_SECS: u32 = 86_400;
/// Bounds of a trunk's concurrent calls limit.
pub const MAX_MAX_CALLS: u32 = 100_000;
/// Longest credential field (username, realm, password) in bytes.
pub const MAX_CREDENTIAL_LEN: usize = 128;

/// How SIP is carried to a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    pub fn parse(input: &str) -> Result<Self> {
        match input.trim().to_ascii_lowercase().as_str() {
            "udp" => Ok(Transport::Udp),
            "tcp" => Ok(Transport::Tcp),
            "tls" => Ok(Transport::Tls),
            other => Err(Error::invalid(
                "transport",
                format!("unknown transport '{other}' (udp, tcp or tls)"),
            )),
        }
    }
}

/// One of a trunk's gateways: where calls are sent, tried in the trunk's
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gateway {
    /// `sip:host[:port]` or `sips:host[:port]` (host: a name, an IPv4
    /// address or a bracketed IPv6 address), as written, lower-cased.
    pub uri: String,
    pub transport: Transport,
}

impl Gateway {
    /// Parses a gateway URI with its transport (`sips:` needs TLS; without
    /// a transport, `sips:` means TLS and `sip:` UDP).
    pub fn parse(uri: &str, transport: Option<Transport>) -> Result<Self> {
        let field = "gateways";
        let text = uri.trim();
        let lower = text.to_ascii_lowercase();
        let (secure, rest) = if let Some(rest) = lower.strip_prefix("sips:") {
            (true, rest)
        } else if let Some(rest) = lower.strip_prefix("sip:") {
            (false, rest)
        } else {
            return Err(Error::invalid(
                field,
                format!("'{text}' is not a SIP URI (sip:host[:port] or sips:host[:port])"),
            ));
        };
        if rest.contains('@') || rest.contains(';') || rest.contains('?') {
            return Err(Error::invalid(
                field,
                format!(
                    "'{text}': give the gateway's host and port only (sip:host[:port]); \
                     the user part and parameters are set by the trunk's policies"
                ),
            ));
        }
        check_host_port(rest)
            .map_err(|reason| Error::invalid(field, format!("'{text}': {reason}")))?;
        let transport = transport.unwrap_or(if secure {
            Transport::Tls
        } else {
            Transport::Udp
        });
        if secure && transport != Transport::Tls {
            return Err(Error::invalid(
                field,
                format!(
                    "'{text}' is a sips: URI, which needs transport tls (not {})",
                    transport.as_str()
                ),
            ));
        }
        Ok(Gateway {
            uri: lower,
            transport,
        })
    }
}

impl Gateway {
    /// Parses a gateway as written in the API and CLI:
    /// `sip:host[:port][;transport=udp|tcp|tls]`.
    pub fn parse_written(written: &str) -> Result<Self> {
        let text = written.trim();
        match text.split_once(';') {
            None => Gateway::parse(text, None),
            Some((uri, param)) => {
                let value = param
                    .trim()
                    .strip_prefix("transport=")
                    .ok_or_else(|| {
                        Error::invalid(
                            "gateways",
                            format!("'{text}': the only parameter a gateway takes is ;transport=udp|tcp|tls"),
                        )
                    })?;
                Gateway::parse(uri, Some(Transport::parse(value)?))
            }
        }
    }
}

impl fmt::Display for Gateway {
    /// The written form, with the transport when it is not the URI's
    /// default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = if self.uri.starts_with("sips:") {
            Transport::Tls
        } else {
            Transport::Udp
        };
        if self.transport == default {
            f.write_str(&self.uri)
        } else {
            write!(f, "{};transport={}", self.uri, self.transport.as_str())
        }
    }
}

/// `host[:port]`: a DNS name, an IPv4 address or `[IPv6]`, and a port
/// 1-65535.
fn check_host_port(text: &str) -> std::result::Result<(), String> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest
            .split_once(']')
            .ok_or_else(|| "an IPv6 address must be closed with ']'".to_owned())?;
        if v6.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("'{v6}' is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("unexpected '{p}' after the address"))?,
            ),
        };
        (None, port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(text), None),
        }
    };
    if let Some(host) = host {
        check_host(host)?;
    }
    if let Some(port) = port {
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => return Err(format!("port '{port}' is not 1 to 65535")),
        }
    }
    Ok(())
}

/// A DNS name or an IPv4 address (an IPv6 address must be bracketed).
fn check_host(host: &str) -> std::result::Result<(), String> {
    if host.is_empty() {
        return Err("the host is missing".into());
    }
    if host.contains(':') {
        return Err(format!(
            "'{host}': an IPv6 address is written in brackets, [{host}]"
        ));
    }
    if host.len() > 253 {
        return Err("the host name is longer than 253 characters".into());
    }
    let labels_ok = host.trim_end_matches('.').split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    if !labels_ok {
        return Err(format!("'{host}' is not a host name or an IPv4 address"));
    }
    // All-numeric labels must make an IPv4 address (`10.0.0.300` is a typo,
    // not a name).
    if host.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && host.parse::<std::net::Ipv4Addr>().is_err()
    {
        return Err(format!("'{host}' is not an IPv4 address"));
    }
    Ok(())
}

/// A secret encrypted with the operator's key (AEAD), with the id of the
/// key that sealed it so that keys can rotate: `aead$<key id>$<nonce
/// hex>$<ciphertext hex>`. Only the actors seal and open it; the domain
/// stores it as it is. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SealedSecret {
    key_id: String,
    nonce: Vec<u8>,
    ciphertext: Vec<u8>,
}

impl SealedSecret {
    /// Nonce length of the AEAD (96 bits).
    pub const NONCE_LEN: usize = 12;
    const SCHEME: &'static str = "aead";

    pub fn new(key_id: &str, nonce: Vec<u8>, ciphertext: Vec<u8>) -> Result<Self> {
        let valid_id = !key_id.is_empty()
            && key_id.len() <= 64
            && key_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_id {
            return Err(Error::invalid("key_id", "1 to 64 letters, digits or '-'"));
        }
        if nonce.len() != Self::NONCE_LEN {
            return Err(Error::invalid(
                "nonce",
                format!("must be {} bytes", Self::NONCE_LEN),
            ));
        }
        if ciphertext.is_empty() {
            return Err(Error::invalid("ciphertext", "must not be empty"));
        }
        Ok(SealedSecret {
            key_id: key_id.to_owned(),
            nonce,
            ciphertext,
        })
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    pub fn nonce(&self) -> &[u8] {
        &self.nonce
    }

    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }
}

impl fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealedSecret(key {}, <redacted>)", self.key_id)
    }
}

impl TryFrom<String> for SealedSecret {
    type Error = Error;

    fn try_from(text: String) -> Result<Self> {
        let bad = || {
            Error::invalid(
                "password",
                "not a sealed secret (aead$key$nonce$ciphertext)",
            )
        };
        let mut parts = text.split('$');
        let (Some(scheme), Some(key_id), Some(nonce), Some(ciphertext), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(bad());
        };
        if scheme != Self::SCHEME {
            return Err(bad());
        }
        let nonce = hex::decode(nonce).map_err(|_| bad())?;
        let ciphertext = hex::decode(ciphertext).map_err(|_| bad())?;
        SealedSecret::new(key_id, nonce, ciphertext)
    }
}

impl From<SealedSecret> for String {
    fn from(s: SealedSecret) -> Self {
        format!(
            "{}${}${}${}",
            SealedSecret::SCHEME,
            s.key_id,
            hex::encode(&s.nonce),
            hex::encode(&s.ciphertext)
        )
    }
}

/// The digest credentials Dialtone answers a carrier's 401/407 with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    /// Encrypted with the operator's key; never returned.
    pub password: SealedSecret,
    /// Answer challenges of this realm only; `None`: any realm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

/// What goes into the user part of the From header of a call to the
/// carrier.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum FromUser {
    /// The caller ID the caller-ID policy presents (the default).
    CallerId,
    /// The credentials' username (carriers that identify the account so).
    Username,
    /// Always this user part.
    Fixed(String),
}

impl FromUser {
    /// `caller_id`, `username`, or anything else as the fixed user part.
    pub fn parse(input: &str) -> Result<Self> {
        let text = input.trim();
        Ok(match text {
            "caller_id" => FromUser::CallerId,
            "username" => FromUser::Username,
            _ => FromUser::Fixed(text.to_owned()),
        })
    }
}

impl fmt::Display for FromUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FromUser::CallerId => f.write_str("caller_id"),
            FromUser::Username => f.write_str("username"),
            FromUser::Fixed(u) => f.write_str(u),
        }
    }
}

/// Which caller ID the carrier sees.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "value")]
pub enum CallerIdPolicy {
    /// The calling user's own caller ID (its `caller_id` setting); the
    /// default.
    User,
    /// Always this number (a company's main number).
    Fixed(E164),
    /// Anonymous (RFC 3323 privacy: `From: "Anonymous"
    /// <sip:anonymous@anonymous.invalid>`).
    Anonymous,
}

impl CallerIdPolicy {
    /// `user`, `anonymous`, or an E.164 number.
    pub fn parse(input: &str) -> Result<Self> {
        let text = input.trim();
        match text.to_ascii_lowercase().as_str() {
            "user" => Ok(CallerIdPolicy::User),
            "anonymous" => Ok(CallerIdPolicy::Anonymous),
            _ => E164::parse(text).map(CallerIdPolicy::Fixed).map_err(|_| {
                Error::invalid(
                    "caller_id",
                    format!("'{text}' is not user, anonymous or an E.164 number (+15550001)"),
                )
            }),
        }
    }
}

impl fmt::Display for CallerIdPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerIdPolicy::User => f.write_str("user"),
            CallerIdPolicy::Fixed(n) => write!(f, "{n}"),
            CallerIdPolicy::Anonymous => f.write_str("anonymous"),
        }
    }
}

/// A codec a trunk offers to the carrier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Codec {
    #[serde(rename = "PCMU")]
    Pcmu,
    #[serde(rename = "PCMA")]
    Pcma,
}

impl Codec {
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    pub fn parse(input: &str) -> Result<Self> {
        match input.trim().to_ascii_uppercase().as_str() {
            "PCMU" => Ok(Codec::Pcmu),
            "PCMA" => Ok(Codec::Pcma),
            other => Err(Error::invalid(
                "codecs",
                format!("unknown codec '{other}' (PCMU or PCMA)"),
            )),
        }
    }
}

/// An address or network calls from the carrier may come from: an IPv4 or
/// IPv6 address, or a network in CIDR form (`203.0.113.0/24`,
/// `2001:db8::/32`). Stored normalised (`address/prefix`, host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    pub fn parse(input: &str) -> Result<Self> {
        let field = "inbound_sources";
        let text = input.trim();
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| {
            Error::invalid(
                field,
                format!("'{text}' is not an IP address or a network (a.b.c.d/n, x::/n)"),
            )
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    return Err(Error::invalid(
                        field,
                        format!("'{text}': the prefix length must be 0 to {max}"),
                    ))
                }
            },
        };
        if prefix_len == 0 {
            return Err(Error::invalid(
                field,
                format!("'{text}' admits every address; list the carrier's networks"),
            ));
        }
        let network = mask(addr, prefix_len);
        if network != addr {
            return Err(Error::invalid(
                field,
                format!("'{text}' has host bits set; the network is {network}/{prefix_len}"),
            ));
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }

    /// Whether `address` is in this network (an IPv4-mapped IPv6 address
    /// counts as its IPv4 address).
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = match address {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(address),
            v4 => v4,
        };
        address.is_ipv4() == self.network.is_ipv4()
            && mask(address, self.prefix_len) == self.network
    }
}

fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    match addr {
        IpAddr::V4(v4) => {
            let bits = u32::from(v4);
            let m = u32::MAX
                .checked_shl(32 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V4((bits & m).into())
        }
        IpAddr::V6(v6) => {
            let bits = u128::from(v6);
            let m = u128::MAX
                .checked_shl(128 - u32::from(prefix_len))
                .unwrap_or(0);
            IpAddr::V6((bits & m).into())
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl TryFrom<String> for Cidr {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        Cidr::parse(&s)
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> Self {
        c.to_string()
    }
}

/// A trunk's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trunk {
    /// Tried in this order (the next on 408, 480, 503, 504, timeouts and
    /// transport errors). At least one.
    pub gateways: Vec<Gateway>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<Credentials>,
    /// Register to the carrier (needs credentials).
    pub register: bool,
    pub register_expiry_secs: u32,
    /// The host of the From header; `None`: the gateway's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_domain: Option<String>,
    pub from_user: FromUser,
    pub caller_id: CallerIdPolicy,
    /// Offered in this order. At least one.
    pub codecs: Vec<Codec>,
    /// Calls over the trunk at once; `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u32>,
    /// Where calls from the carrier may come from; a call from anywhere
    /// else is not the carrier's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inbound_sources: Vec<Cidr>,
}

impl Trunk {
    /// Whether a call from `address` comes from this trunk's carrier.
    pub fn admits(&self, address: IpAddr) -> bool {
        self.inbound_sources.iter().any(|c| c.contains(address))
    }
}

/// The credentials part of a [`TrunkPatch`]. On update, a username or
/// realm without a password keeps the sealed password in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CredentialsPatch {
    pub username: Option<String>,
    pub password: Option<SealedSecret>,
    /// `Some(None)` removes the realm.
    pub realm: Option<Option<String>>,
}

/// A change of a trunk: `None` keeps a setting (or takes its default, for
/// a new trunk); for credentials, `Some(None)` removes them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkPatch {
    pub gateways: Option<Vec<Gateway>>,
    pub credentials: Option<Option<CredentialsPatch>>,
    pub register: Option<bool>,
    pub register_expiry_secs: Option<u32>,
    pub from_domain: Option<Option<String>>,
    pub from_user: Option<FromUser>,
    pub caller_id: Option<CallerIdPolicy>,
    pub codecs: Option<Vec<Codec>>,
    pub max_calls: Option<Option<u32>>,
    pub inbound_sources: Option<Vec<Cidr>>,
}

impl TrunkPatch {
    /// The trunk after the patch, validated; `current` is `None` for a new
    /// trunk; `name` is the trunk's address, for messages.
    pub fn apply(&self, current: Option<&Trunk>, name: &str) -> Result<Trunk> {
        let mut next = match current {
            Some(t) => t.clone(),
            None => Trunk {
                gateways: vec![],
                credentials: None,
                register: false,
                register_expiry_secs: DEFAULT_REGISTER_EXPIRY_SECS,
                from_domain: None,
                from_user: FromUser::CallerId,
                caller_id: CallerIdPolicy::User,
                codecs: vec![Codec::Pcmu, Codec::Pcma],
                max_calls: None,
                inbound_sources: vec![],
            },
        };
        if let Some(g) = &self.gateways {
            next.gateways = g.clone();
        }
        match &self.credentials {
            None => {}
            Some(None) => next.credentials = None,
            Some(Some(patch)) => {
                let current = next.credentials.take();
                let password = match (&patch.password, &current) {
                    (Some(p), _) => p.clone(),
                    (None, Some(c)) => c.password.clone(),
                    (None, None) => {
                        return Err(Error::invalid(
                            "password",
                            format!("trunk {name} has no credentials yet: give a password with the username"),
                        ))
                    }
                };
                let username = match (&patch.username, &current) {
                    (Some(u), _) => u.trim().to_owned(),
                    (None, Some(c)) => c.username.clone(),
                    (None, None) => {
                        return Err(Error::invalid(
                            "username",
                            format!("trunk {name} has no credentials yet: give a username with the password"),
                        ))
                    }
                };
                let realm = match &patch.realm {
                    Some(r) => r
                        .as_ref()
                        .map(|r| r.trim().to_owned())
                        .filter(|r| !r.is_empty()),
                    None => current.and_then(|c| c.realm),
                };
                next.credentials = Some(Credentials {
                    username,
                    password,
                    realm,
                });
            }
        }
        if let Some(b) = self.register {
            next.register = b;
        }
        if let Some(e) = self.register_expiry_secs {
            next.register_expiry_secs = e;
        }
        if let Some(d) = &self.from_domain {
            next.from_domain = d
                .as_ref()
                .map(|d| d.trim().to_ascii_lowercase())
                .filter(|d| !d.is_empty());
        }
        if let Some(u) = &self.from_user {
            next.from_user = u.clone();
        }
        if let Some(c) = &self.caller_id {
            next.caller_id = c.clone();
        }
        if let Some(c) = &self.codecs {
            next.codecs = c.clone();
        }
        if let Some(m) = self.max_calls {
            next.max_calls = m;
        }
        if let Some(s) = &self.inbound_sources {
            next.inbound_sources = s.clone();
        }
        validate(&next, name)?;
        Ok(next)
    }
}

/// What any trunk must be (checked on every change).
fn validate(trunk: &Trunk, name: &str) -> Result<()> {
    if trunk.gateways.is_empty() {
        return Err(Error::invalid(
            "gateways",
            format!("trunk {name} needs at least one gateway (sip:host[:port])"),
        ));
    }
    if trunk.gateways.len() > MAX_GATEWAYS {
        return Err(Error::invalid(
            "gateways",
            format!("at most {MAX_GATEWAYS}, got {}", trunk.gateways.len()),
        ));
    }
    for (i, g) in trunk.gateways.iter().enumerate() {
        if trunk.gateways[..i].contains(g) {
            return Err(Error::invalid(
                "gateways",
                format!("{} ({}) is listed twice", g.uri, g.transport.as_str()),
            ));
        }
    }
    if let Some(c) = &trunk.credentials {
        check_text("username", &c.username, false)?;
        if let Some(realm) = &c.realm {
            check_text("realm", realm, false)?;
        }
    }
    if trunk.register && trunk.credentials.is_none() {
        return Err(Error::invalid(
            "register",
            format!("trunk {name} registers to its carrier, which needs credentials (username and password)"),
        ));
    }
    if !(MIN_REGISTER_EXPIRY_SECS..=MAX_REGISTER_EXPIRY_SECS).contains(&trunk.register_expiry_secs)
    {
        return Err(Error::invalid(
            "register_expiry_secs",
            format!(
                "must be {MIN_REGISTER_EXPIRY_SECS} to {MAX_REGISTER_EXPIRY_SECS}, got {}",
                trunk.register_expiry_secs
            ),
        ));
    }
    if let Some(d) = &trunk.from_domain {
        check_host(d).map_err(|reason| Error::invalid("from_domain", reason))?;
    }
    if let FromUser::Fixed(user) = &trunk.from_user {
        check_text("from_user", user, true)?;
    }
    if trunk.codecs.is_empty() {
        return Err(Error::invalid("codecs", "at least one (PCMU, PCMA)"));
    }
    for (i, c) in trunk.codecs.iter().enumerate() {
        if trunk.codecs[..i].contains(c) {
            return Err(Error::invalid(
                "codecs",
                format!("{} is listed twice", c.as_str()),
            ));
        }
    }
    if let Some(m) = trunk.max_calls {
        if !(1..=MAX_MAX_CALLS).contains(&m) {
            return Err(Error::invalid(
                "max_calls",
                format!("must be 1 to {MAX_MAX_CALLS} (or unset: no limit), got {m}"),
            ));
        }
    }
    if trunk.inbound_sources.len() > MAX_INBOUND_SOURCES {
        return Err(Error::invalid(
            "inbound_sources",
            format!(
                "at most {MAX_INBOUND_SOURCES}, got {}",
                trunk.inbound_sources.len()
            ),
        ));
    }
    Ok(())
}

/// A username, realm or (`user_part`) From user part: 1 to
/// [`MAX_CREDENTIAL_LEN`] bytes, no spaces, only what a SIP header carries
/// there without quoting (the user part has the stricter set of RFC 3261's
/// `user`).
fn check_text(field: &'static str, text: &str, user_part: bool) -> Result<()> {
    if text.is_empty() || text.len() > MAX_CREDENTIAL_LEN {
        return Err(Error::invalid(
            field,
            format!("must be 1 to {MAX_CREDENTIAL_LEN} characters"),
        ));
    }
    let ok = |c: char| {
        if user_part {
            c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/%".contains(c)
        } else {
            c.is_ascii_graphic() && c != '"' && c != '\\'
        }
    };
    if !text.chars().all(ok) {
        return Err(Error::invalid(
            field,
            format!("'{text}' has characters a SIP header cannot carry here"),
        ));
    }
    Ok(())
}

/// Checks a carrier password as given, before the actors seal it.
pub fn check_password(password: &str) -> Result<()> {
    if password.is_empty() || password.len() > MAX_CREDENTIAL_LEN {
        return Err(Error::invalid(
            "password",
            format!("must be 1 to {MAX_CREDENTIAL_LEN} characters"),
        ));
    }
    if password.chars().any(char::is_control) {
        return Err(Error::invalid(
            "password",
            "must not hold control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(uri: &str) -> Gateway {
        Gateway::parse(uri, None).unwrap()
    }

    fn sealed() -> SealedSecret {
        SealedSecret::new("k1", vec![7; 12], vec![1, 2, 3]).unwrap()
    }

    #[test]
    fn gateway_uris_are_checked() {
        assert_eq!(
            gw("sip:GW1.Carrier.example:5060").uri,
            "sip:gw1.carrier.example:5060"
        );
        assert_eq!(gw("sips:gw.example").transport, Transport::Tls);
        assert_eq!(gw("sip:[2001:db8::1]:5080").transport, Transport::Udp);
        assert_eq!(gw("sip:192.0.2.10").uri, "sip:192.0.2.10");
        for bad in [
            "http://gw.example",
            "gw.example",
            "sip:",
            "sip:gw.example:0",
            "sip:gw.example:70000",
            "sip:user@gw.example",
            "sip:2001:db8::1",
            "sip:10.0.0.300",
            "sip:-bad-.example",
            "sip:gw.example;transport=tcp",
        ] {
            let err = Gateway::parse(bad, None).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Invalid {
                        field: "gateways",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
        let err = Gateway::parse("sips:gw.example", Some(Transport::Udp)).unwrap_err();
        assert!(err.to_string().contains("needs transport tls"), "{err}");
    }

    #[test]
    fn written_gateways_carry_their_transport() {
        let g = Gateway::parse_written("sip:gw.example:5060;transport=tcp").unwrap();
        assert_eq!(
            (g.uri.as_str(), g.transport),
            ("sip:gw.example:5060", Transport::Tcp)
        );
        assert_eq!(g.to_string(), "sip:gw.example:5060;transport=tcp");
        assert_eq!(
            Gateway::parse_written("sips:gw.example")
                .unwrap()
                .to_string(),
            "sips:gw.example"
        );
        assert!(Gateway::parse_written("sip:gw.example;lr").is_err());
        assert!(Gateway::parse_written("sip:gw.example;transport=sctp").is_err());
        assert_eq!(
            CallerIdPolicy::parse("+15550100").unwrap().to_string(),
            "+15550100"
        );
        assert!(CallerIdPolicy::parse("5550100").is_err());
        assert_eq!(FromUser::parse("username").unwrap(), FromUser::Username);
    }

    #[test]
    fn cidrs_are_checked_and_match() {
        let net = Cidr::parse("203.0.113.0/24").unwrap();
        assert!(net.contains("203.0.113.77".parse().unwrap()));
        assert!(!net.contains("203.0.114.1".parse().unwrap()));
        assert!(net.contains("::ffff:203.0.113.9".parse().unwrap()));
        let one = Cidr::parse("198.51.100.7").unwrap();
        assert_eq!(one.to_string(), "198.51.100.7/32");
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        assert!(!v6.contains("203.0.113.77".parse().unwrap()));
        for bad in [
            "203.0.113.0/33",
            "203.0.113.5/24",
            "0.0.0.0/0",
            "::/0",
            "2001:db8::/129",
            "example.com",
            "1.2.3",
            "",
        ] {
            let err = Cidr::parse(bad).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Invalid {
                        field: "inbound_sources",
                        ..
                    }
                ),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn sealed_secrets_round_trip_and_hide_in_debug() {
        let s = sealed();
        let text: String = s.clone().into();
        assert_eq!(text, "aead$k1$070707070707070707070707$010203");
        assert_eq!(SealedSecret::try_from(text).unwrap(), s);
        assert!(!format!("{s:?}").contains("010203"));
        assert!(SealedSecret::try_from("aead$k1$07$01".to_owned()).is_err());
        assert!(SealedSecret::try_from("plain".to_owned()).is_err());
    }

    #[test]
    fn a_new_trunk_takes_defaults_and_needs_a_gateway() {
        let err = TrunkPatch::default().apply(None, "t@x").unwrap_err();
        assert!(matches!(
            err,
            Error::Invalid {
                field: "gateways",
                ..
            }
        ));
        let trunk = TrunkPatch {
            gateways: Some(vec![gw("sip:a.example"), gw("sip:b.example")]),
            ..Default::default()
        }
        .apply(None, "t@x")
        .unwrap();
        assert_eq!(trunk.codecs, vec![Codec::Pcmu, Codec::Pcma]);
        assert_eq!(trunk.register_expiry_secs, 3600);
        assert_eq!(trunk.caller_id, CallerIdPolicy::User);
        assert!(!trunk.register);
    }

    #[test]
    fn registering_needs_credentials_and_an_update_keeps_the_password() {
        let base = TrunkPatch {
            gateways: Some(vec![gw("sip:a.example")]),
            register: Some(true),
            ..Default::default()
        };
        let err = base.apply(None, "t@x").unwrap_err();
        assert!(matches!(
            err,
            Error::Invalid {
                field: "register",
                ..
            }
        ));
        let with = TrunkPatch {
            credentials: Some(Some(CredentialsPatch {
                username: Some("acct".into()),
                password: Some(sealed()),
                realm: None,
            })),
            ..base
        };
        let trunk = with.apply(None, "t@x").unwrap();
        let renamed = TrunkPatch {
            credentials: Some(Some(CredentialsPatch {
                username: Some("acct2".into()),
                ..Default::default()
            })),
            ..Default::default()
        }
        .apply(Some(&trunk), "t@x")
        .unwrap();
        let c = renamed.credentials.unwrap();
        assert_eq!(c.username, "acct2");
        assert_eq!(c.password, sealed());
        // Removing the credentials of a registering trunk is refused.
        let err = TrunkPatch {
            credentials: Some(None),
            ..Default::default()
        }
        .apply(Some(&trunk), "t@x")
        .unwrap_err();
        assert!(matches!(
            err,
            Error::Invalid {
                field: "register",
                ..
            }
        ));
    }

    #[test]
    fn duplicates_and_bounds_are_refused() {
        let base = || TrunkPatch {
            gateways: Some(vec![gw("sip:a.example")]),
            ..Default::default()
        };
        let dup = TrunkPatch {
            gateways: Some(vec![gw("sip:a.example"), gw("sip:a.example")]),
            ..Default::default()
        };
        assert!(dup.apply(None, "t").is_err());
        let codecs = TrunkPatch {
            codecs: Some(vec![Codec::Pcma, Codec::Pcma]),
            ..base()
        };
        assert!(codecs.apply(None, "t").is_err());
        let none = TrunkPatch {
            codecs: Some(vec![]),
            ..base()
        };
        assert!(none.apply(None, "t").is_err());
        let max = TrunkPatch {
            max_calls: Some(Some(0)),
            ..base()
        };
        assert!(max.apply(None, "t").is_err());
        let expiry = TrunkPatch {
            register_expiry_secs: Some(10),
            ..base()
        };
        assert!(expiry.apply(None, "t").is_err());
        let from = TrunkPatch {
            from_user: Some(FromUser::Fixed("has space".into())),
            ..base()
        };
        assert!(from.apply(None, "t").is_err());
    }
}
