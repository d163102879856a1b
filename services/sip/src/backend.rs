//! The boundary between the SIP gateway and the rest of Dialtone.
//!
//! The gateway knows SIP; the implementation of [`Registry`] knows users,
//! bindings and events (the lead implements it over the user actors). The
//! gateway never decides a binding rule: it parses and normalises a REGISTER
//! into a [`RegisterRequest`] and turns the [`RegisterOutcome`] into a SIP
//! response.

use std::net::SocketAddr;
use std::time::SystemTime;

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
}

/// Stored digest credentials of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCredentials {
    /// HA1 = MD5(user:realm:password), lower-case hex. `None` when MD5 is not
    /// allowed for this user: the challenge then offers SHA-256 only and an
    /// MD5 answer is refused.
    pub ha1_md5: Option<String>,
    /// HA1 = SHA-256(user:realm:password), lower-case hex.
    pub ha1_sha256: String,
    /// A disabled user gets 403, but only after proving the password (so
    /// that the response does not reveal the account to a guesser).
    pub disabled: bool,
}

/// Result of looking up `user@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not a domain we serve: 404.
    UnknownDomain,
    /// The domain is suspended: 403 for everyone in it.
    DomainSuspended,
    /// No such user in a served domain: handled exactly like a wrong
    /// password (no user enumeration).
    UnknownUser,
    Found(UserCredentials),
}

/// One contact of a REGISTER, normalised by the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactChange {
    /// The contact URI as sent (without `<>`).
    pub uri: String,
    /// Granted expiry in seconds after min/max policy; 0 removes the binding.
    pub expires_secs: u32,
    /// `q` in thousandths (q=0.5 -> 500), when given.
    pub q: Option<u16>,
    /// The other contact parameters, raw, e.g. `;+sip.instance="<urn:...>";reg-id=1`
    /// (empty when none).
    pub params: String,
}

/// A REGISTER that passed authentication and the expiry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// Lower-cased domain (= digest realm) from the Request-URI.
    pub domain: String,
    /// User part of the To URI (the address-of-record).
    pub user: String,
    pub call_id: String,
    pub cseq: u32,
    /// Contacts to add, refresh (expires > 0) or remove (expires = 0).
    pub changes: Vec<ContactChange>,
    /// `Contact: *` with `Expires: 0`: remove every binding of the user
    /// (RFC 3261 s.10.3 step 6). `changes` is then empty.
    pub remove_all: bool,
    /// Source address the request was received from (after NAT).
    pub source: SocketAddr,
    pub transport: Transport,
    pub user_agent: Option<String>,
    pub received_at: SystemTime,
}

/// A binding as listed in the 200 OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentContact {
    pub uri: String,
    /// Seconds left before the binding expires.
    pub expires_in_secs: u32,
    pub q: Option<u16>,
}

/// The backend's answer to a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The changes are durable; these are the user's bindings after them.
    Ok { contacts: Vec<CurrentContact> },
    /// Same Call-ID with a CSeq not above the stored one (RFC 3261 s.10.3
    /// step 7): the request is refused (500 with a reason phrase saying so)
    /// and nothing changed.
    CSeqOutOfOrder,
}

/// Infrastructure failure of the backend. Never answered with 200.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The store or an actor cannot take the request now (overload, store
    /// down): 503 with Retry-After.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Anything else: 500.
    #[error("backend failure: {0}")]
    Internal(String),
}

/// What the gateway needs from the rest of the system. Implementations must
/// be cheap to call concurrently: the gateway calls them from many tasks.
///
/// Used as `Arc<dyn Registry>`.
#[async_trait::async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Digest credentials of `user@domain` (domain = digest realm, lower
    /// case). Called for every REGISTER, also the first one that gets the
    /// 401 (the domain decides between 404 and a challenge).
    async fn credentials(&self, domain: &str, user: &str) -> Result<Lookup, BackendError>;

    /// Applies an authenticated REGISTER's binding changes *durably* and
    /// returns the user's contacts after it. The backend owns the binding
    /// rules: maximum contacts (the oldest is replaced), Call-ID/CSeq
    /// ordering, refresh versus new binding, and the events.
    async fn register(&self, request: RegisterRequest) -> Result<RegisterOutcome, BackendError>;

    /// The current contacts of an authenticated user (REGISTER without
    /// Contact: a query, RFC 3261 s.10.2.3).
    async fn contacts(&self, domain: &str, user: &str)
        -> Result<Vec<CurrentContact>, BackendError>;
}
