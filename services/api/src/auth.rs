//! Authentication and scoping of API calls.
//!
//! Every Dialtone service is served behind an [`Authenticator`]: a tonic
//! interceptor that reads `authorization: Bearer <token>`, answers
//! UNAUTHENTICATED when it is missing, malformed, unknown or revoked, and
//! otherwise puts the caller's [`Access`] into the request's extensions.
//! The services read it back with [`access`] and keep a domain token to its
//! domain: anything else is NOT_FOUND to it, with the same message an
//! absent resource gives ([`not_found_domain`], [`not_found_user`]).
//!
//! Tokens ([`Tokens`]): the admin token of the node's configuration (held
//! only as its SHA-256) and the tokens of the log's `tokens` stream
//! (`dialtone_domain::token`): `dt_<id>_<secret>`, where only the SHA-256
//! of the secret is stored. Comparisons of hashes are constant-time. The
//! table is rebuilt from the log at start and updated in memory by every
//! create and revoke, so a revocation holds from the next call on.

use std::sync::{Arc, RwLock};

use dialtone_actors::{DomainRef, UserRef};
use dialtone_domain::event::Event;
use dialtone_domain::token::{self, Scope};
use dialtone_domain::{DomainId, Timestamp};
use dialtone_eventlog::{ExpectedVersion, NewEvent, SharedStore};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::{Request, Status};
use uuid::Uuid;

use crate::status;

/// What an authenticated caller may see and change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Everything, including tokens.
    Admin,
    /// One domain and its users.
    Domain(DomainId),
}

impl Access {
    /// The one domain this access is limited to (`None`: all of them).
    pub fn domain(self) -> Option<DomainId> {
        match self {
            Access::Admin => None,
            Access::Domain(id) => Some(id),
        }
    }

    /// Whether this access may see `domain`.
    pub fn sees(self, domain: DomainId) -> bool {
        match self {
            Access::Admin => true,
            Access::Domain(id) => id == domain,
        }
    }

    /// Whether this access may see an event (or anything) carrying this
    /// domain id; things without one (tokens) are for admins only.
    pub fn sees_id(self, domain: Option<Uuid>) -> bool {
        match self {
            Access::Admin => true,
            Access::Domain(id) => domain == Some(id.0),
        }
    }

    /// PERMISSION_DENIED unless admin (for what is never a domain's own
    /// business: creating domains, managing tokens).
    pub fn require_admin(self, what: &str) -> Result<(), Status> {
        match self {
            Access::Admin => Ok(()),
            Access::Domain(_) => Err(Status::permission_denied(format!(
                "{what} needs an admin token; this token is limited to one domain"
            ))),
        }
    }

    /// NOT_FOUND (as for a domain that does not exist) unless this access
    /// may see `domain`.
    pub fn check_domain(self, domain: &DomainRef) -> Result<(), Status> {
        if self.sees(domain.id()) {
            Ok(())
        } else {
            Err(not_found_domain(domain))
        }
    }
}

/// The caller's access, as the [`Authenticator`] recorded it. Services
/// served without one (the crate's own tests and benchmarks serve them
/// bare) are unrestricted; [`crate::serve_with`] always puts it in front
/// of every Dialtone service.
pub fn access<T>(request: &Request<T>) -> Access {
    request
        .extensions()
        .get::<Access>()
        .copied()
        .unwrap_or(Access::Admin)
}

/// The answer for a domain that does not exist, word for word.
pub fn not_found_domain(domain: &DomainRef) -> Status {
    Status::not_found(match domain {
        DomainRef::Id(id) => format!("domain {id} not found"),
        DomainRef::Name(name) => format!("domain {name} not found"),
    })
}

/// The answer for a user that does not exist, word for word.
pub fn not_found_user(user: &UserRef) -> Status {
    Status::not_found(match user {
        UserRef::Id(id) => format!("user {id} not found"),
        UserRef::Address(address) => format!("user {address} not found"),
    })
}

/// The answer for a stream a domain token may not read.
pub fn not_found_stream(stream: &str) -> Status {
    Status::not_found(format!("stream {stream} not found"))
}

/// The domain a stream belongs to, from its first events' envelopes
/// (`None`: an empty stream or one of no domain, such as `tokens`).
pub async fn stream_domain(store: &SharedStore, stream: &str) -> Result<Option<Uuid>, Status> {
    if let Some(id) = DomainId::from_stream(stream) {
        return Ok(Some(id.0));
    }
    let first = store
        .read_stream(stream, 0, 2)
        .await
        .map_err(status::from_store)?;
    Ok(first.iter().find_map(|e| e.domain_id))
}

const MISSING: &str = "missing credentials: send the metadata `authorization: Bearer <token>` \
     (CLI: --token or DIALTONE_TOKEN; the admin token is in <data-dir>/admin.token)";
const MALFORMED: &str = "malformed authorization metadata: expected `Bearer <token>`";
const REFUSED: &str = "invalid token: unknown, revoked or mistyped";

/// Prefix of the tokens the node issues: `dt_<id, 32 hex>_<secret, 64 hex>`.
const PREFIX: &str = "dt_";

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn from_hex(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

fn now_us() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// 256 random bits, hex.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A token as it may be shown: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: Uuid,
    pub scope: Scope,
    pub description: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

fn info(id: Uuid, t: &token::Token) -> TokenInfo {
    TokenInfo {
        id,
        scope: t.scope.clone(),
        description: t.description.clone(),
        created_at: t.created_at,
        revoked_at: t.revoked_at,
    }
}

struct Table {
    state: token::Tokens,
    /// The `tokens` stream's version the state reflects.
    version: Option<u64>,
}

struct Inner {
    store: SharedStore,
    admin: Option<[u8; 32]>,
    table: RwLock<Table>,
    /// One create or revoke at a time: the stream has one writer.
    write: tokio::sync::Mutex<()>,
}

/// The token table (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

impl Tokens {
    /// The table of the log's `tokens` stream, plus `admin_token` (if any)
    /// as an admin token that is not in the log.
    pub async fn load(store: SharedStore, admin_token: Option<&str>) -> crate::Result<Tokens> {
        let (state, version) = read_table(&store).await?;
        Ok(Tokens {
            inner: Arc::new(Inner {
                store,
                admin: admin_token.map(|t| sha256(t.as_bytes())),
                table: RwLock::new(Table { state, version }),
                write: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The access `token` gives, if any.
    pub fn authenticate(&self, token: &str) -> Option<Access> {
        let presented = sha256(token.as_bytes());
        if let Some(admin) = &self.inner.admin {
            if bool::from(presented.ct_eq(admin)) {
                return Some(Access::Admin);
            }
        }
        let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
        let id = Uuid::try_parse(id).ok()?;
        let table = self.inner.table.read().ok()?;
        let entry = table.state.tokens.get(&id)?;
        let stored = from_hex(&entry.secret_sha256)?;
        let matches = bool::from(sha256(secret.as_bytes()).ct_eq(&stored));
        if !matches || entry.revoked_at.is_some() {
            return None;
        }
        Some(match &entry.scope {
            Scope::Admin => Access::Admin,
            Scope::Domain(name) => Access::Domain(DomainId::for_name(name)),
        })
    }

    /// Creates a token; returns it and its bearer string (shown once).
    pub async fn create(
        &self,
        scope: Scope,
        description: String,
    ) -> Result<(TokenInfo, String), Status> {
        let id = Uuid::new_v4();
        let secret = random_secret();
        let command = token::Command::Create {
            token_id: id,
            scope,
            secret_sha256: hex::encode(sha256(secret.as_bytes())),
            description,
        };
        let state = self.run(&command).await?;
        let token = state
            .tokens
            .get(&id)
            .map(|t| info(id, t))
            .ok_or_else(|| Status::internal("token missing after its creation"))?;
        Ok((token, format!("{PREFIX}{}_{secret}", id.simple())))
    }

    /// Revokes a token (a revoked one stays revoked; nothing is written).
    pub async fn revoke(&self, id: Uuid) -> Result<TokenInfo, Status> {
        let state = self.run(&token::Command::Revoke { token_id: id }).await?;
        state
            .tokens
            .get(&id)
            .map(|t| info(id, t))
            .ok_or_else(|| Status::not_found(format!("token {id} not found")))
    }

    /// Every token, oldest first.
    pub fn list(&self) -> Vec<TokenInfo> {
        let Ok(table) = self.inner.table.read() else {
            return Vec::new();
        };
        let mut tokens: Vec<TokenInfo> = table
            .state
            .tokens
            .iter()
            .map(|(id, t)| info(*id, t))
            .collect();
        tokens.sort_by_key(|t| (t.created_at, t.id));
        tokens
    }

    fn snapshot(&self) -> Result<(token::Tokens, Option<u64>), Status> {
        let table = self
            .inner
            .table
            .read()
            .map_err(|_| Status::internal("token table poisoned"))?;
        Ok((table.state.clone(), table.version))
    }

    /// Decides `command`, appends its events (durably), then applies them.
    async fn run(&self, command: &token::Command) -> Result<token::Tokens, Status> {
        let _writer = self.inner.write.lock().await;
        let (state, version) = self.snapshot()?;
        let now = now_us();
        let events = token::decide(&state, command, now).map_err(status::from_domain)?;
        if events.is_empty() {
            return Ok(state);
        }
        let mut new = Vec::with_capacity(events.len());
        for e in &events {
            let event = Event::Token(e.clone());
            new.push(NewEvent {
                event_id: Uuid::new_v4(),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at_us: now,
                domain_id: None,
                user_id: None,
                correlation_id: None,
                data: event
                    .to_data()
                    .map_err(|e| Status::internal(format!("cannot encode a token event: {e}")))?,
            });
        }
        let expected = version.map_or(ExpectedVersion::NoStream, ExpectedVersion::Exact);
        let appended = self.inner.store.append(token::STREAM, expected, new).await;
        let outcome = match appended {
            Ok(outcome) => outcome,
            Err(e) => {
                // Another writer (or a failed append): start again from the log.
                if let Ok((state, version)) = read_table(&self.inner.store).await {
                    if let Ok(mut table) = self.inner.table.write() {
                        *table = Table { state, version };
                    }
                }
                return Err(status::from_store(e));
            }
        };
        let state = events.iter().fold(state, token::evolve);
        let mut table = self
            .inner
            .table
            .write()
            .map_err(|_| Status::internal("token table poisoned"))?;
        *table = Table {
            state: state.clone(),
            version: Some(outcome.last_version),
        };
        Ok(state)
    }
}

/// Reads the `tokens` stream into a table.
async fn read_table(store: &SharedStore) -> crate::Result<(token::Tokens, Option<u64>)> {
    const PAGE: usize = 1000;
    let mut state = token::Tokens::default();
    let mut version = None;
    let mut from = 0;
    loop {
        let page = store.read_stream(token::STREAM, from, PAGE).await?;
        for e in &page {
            match Event::from_stored(&e.event_type, e.schema_version, &e.data) {
                Ok(Event::Token(event)) => state = token::evolve(state, &event),
                Ok(_) => {
                    return Err(crate::Error::Corrupt(format!(
                        "{} event at version {} of stream {}",
                        e.event_type,
                        e.version,
                        token::STREAM
                    )))
                }
                Err(err) => {
                    return Err(crate::Error::Corrupt(format!(
                        "stream {} version {}: {err}",
                        token::STREAM,
                        e.version
                    )))
                }
            }
            version = Some(e.version);
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = last.version + 1,
            _ => return Ok((state, version)),
        }
    }
}

/// The interceptor in front of every Dialtone service (see the module
/// documentation).
#[derive(Clone)]
pub struct Authenticator {
    tokens: Tokens,
}

impl Authenticator {
    pub fn new(tokens: Tokens) -> Self {
        Authenticator { tokens }
    }
}

fn refuse(message: &'static str, reason: &'static str) -> Status {
    metrics::counter!("dialtone_api_auth_failures_total", "reason" => reason).increment(1);
    Status::unauthenticated(message)
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let value = request
            .metadata()
            .get("authorization")
            .ok_or_else(|| refuse(MISSING, "missing"))?;
        let value = value
            .to_str()
            .map_err(|_| refuse(MALFORMED, "malformed"))?
            .trim();
        let (scheme, token) = value
            .split_once(' ')
            .ok_or_else(|| refuse(MALFORMED, "malformed"))?;
        if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
            return Err(refuse(MALFORMED, "malformed"));
        }
        let access = self
            .tokens
            .authenticate(token.trim())
            .ok_or_else(|| refuse(REFUSED, "refused"))?;
        request.extensions_mut().insert(access);
        Ok(request)
    }
}

/// The client side: adds `authorization: Bearer <token>` to every call
/// (`InterceptedService::new(channel, Bearer::new(token)?)`, or
/// `XClient::with_interceptor`).
#[derive(Clone, Default)]
pub struct Bearer {
    value: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bearer")
            .field("token", &self.value.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Bearer {
    /// Sends `token`; an invalid token (not visible ASCII) is an error.
    pub fn new(token: &str) -> crate::Result<Self> {
        let value = format!("Bearer {}", token.trim())
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| crate::Error::Token("a token is printable ASCII without spaces"))?;
        Ok(Bearer { value: Some(value) })
    }

    /// Sends nothing (for the calls that need no token: health).
    pub fn none() -> Self {
        Bearer { value: None }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.value {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use dialtone_domain::DomainName;
    use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
    use tonic::service::Interceptor as _;

    use super::*;

    async fn store(dir: &tempfile::TempDir) -> SharedStore {
        Arc::new(SqliteStore::open(&dir.path().join("events.db"), SqliteOptions::new("t")).unwrap())
    }

    fn call(tokens: &Tokens, header: Option<&str>) -> Result<Access, Status> {
        let mut request = Request::new(());
        if let Some(h) = header {
            request
                .metadata_mut()
                .insert("authorization", h.parse().unwrap());
        }
        let request = Authenticator::new(tokens.clone()).call(request)?;
        Ok(access(&request))
    }

    #[tokio::test]
    async fn admin_token_and_issued_tokens_authenticate_until_revoked() {
        let dir = tempfile::tempdir().unwrap();
        let store = store(&dir).await;
        let tokens = Tokens::load(store.clone(), Some("s3cret-admin"))
            .await
            .unwrap();
        assert_eq!(
            call(&tokens, Some("Bearer s3cret-admin")).ok(),
            Some(Access::Admin)
        );
        assert_eq!(
            call(&tokens, Some("bearer s3cret-admin")).ok(),
            Some(Access::Admin)
        );
        for bad in [
            None,
            Some("s3cret-admin"),
            Some("Basic s3cret-admin"),
            Some("Bearer "),
        ] {
            let err = call(&tokens, bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        assert_eq!(
            call(&tokens, Some("Bearer s3cret-admin2"))
                .unwrap_err()
                .code(),
            tonic::Code::Unauthenticated
        );

        let name = DomainName::parse("example.com").unwrap();
        let (info, secret) = tokens
            .create(Scope::Domain(name.clone()), "robot".into())
            .await
            .unwrap();
        assert!(secret.starts_with("dt_"));
        let domain = Access::Domain(DomainId::for_name(&name));
        assert_eq!(
            call(&tokens, Some(&format!("Bearer {secret}"))).ok(),
            Some(domain)
        );
        // A wrong secret for a known id is refused.
        let mut wrong = secret.clone();
        wrong.pop();
        wrong.push(if secret.ends_with('0') { '1' } else { '0' });
        assert!(call(&tokens, Some(&format!("Bearer {wrong}"))).is_err());

        // Rebuilt from the log: same table, and the secret is not in it.
        let reloaded = Tokens::load(store.clone(), None).await.unwrap();
        assert_eq!(reloaded.authenticate(&secret), Some(domain));
        assert_eq!(reloaded.authenticate("s3cret-admin"), None);
        let raw = store.read_all(1, 100).await.unwrap();
        let secret_part = secret.rsplit('_').next().unwrap();
        assert!(raw.iter().all(|e| !e.data.contains(secret_part)));

        let revoked = tokens.revoke(info.id).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(tokens.authenticate(&secret), None);
        // Idempotent, and unknown ids are NOT_FOUND.
        tokens.revoke(info.id).await.unwrap();
        assert_eq!(
            tokens.revoke(Uuid::new_v4()).await.unwrap_err().code(),
            tonic::Code::NotFound
        );
        let reloaded = Tokens::load(store, None).await.unwrap();
        assert_eq!(reloaded.authenticate(&secret), None);
        let listed = reloaded.list();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].id == info.id && listed[0].revoked_at.is_some());
    }
}
