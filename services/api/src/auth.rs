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
//! stream is the token table's aggregate, written only by its actor in
//! `dialtone_actors` (create, revoke and list go there); this module makes
//! the id and the secret and sends only the hash. The actor publishes the
//! table it loaded from the log and, after every durable create or revoke,
//! before it replies, the new one ([`dialtone_actors::Facts::token`]): the
//! interceptor reads that without a message to the actor, and a revocation
//! holds from the next call on.

use std::sync::Arc;

pub use dialtone_actors::TokenInfo;
use dialtone_actors::{DomainRef, Meta, NewToken, Provisioning, TokenAccess, UserRef};
use dialtone_domain::token::Scope;
use dialtone_domain::DomainId;
use dialtone_eventlog::SharedStore;
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

/// 256 random bits, hex.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

struct Inner {
    provisioning: Provisioning,
    admin: Option<[u8; 32]>,
}

/// The token table (see the module documentation). Cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Inner>,
}

impl Tokens {
    /// The table of the log's `tokens` stream, as its actor publishes it,
    /// plus `admin_token` (if any) as an admin token that is not in the
    /// log. Waits until the actor loaded the table from the log.
    pub async fn load(
        provisioning: Provisioning,
        admin_token: Option<&str>,
    ) -> crate::Result<Tokens> {
        provisioning.load_tokens().await?;
        Ok(Tokens {
            inner: Arc::new(Inner {
                provisioning,
                admin: admin_token.map(|t| sha256(t.as_bytes())),
            }),
        })
    }

    /// The access `token` gives, if any. A map look-up under a read lock
    /// (the table the token actor published), no message to the actor.
    pub fn authenticate(&self, token: &str) -> Option<Access> {
        let presented = sha256(token.as_bytes());
        if let Some(admin) = &self.inner.admin {
            if bool::from(presented.ct_eq(admin)) {
                return Some(Access::Admin);
            }
        }
        let (id, secret) = token.strip_prefix(PREFIX)?.split_once('_')?;
        let id = Uuid::try_parse(id).ok()?;
        let entry = self.inner.provisioning.directory().facts().token(id)?;
        if !bool::from(sha256(secret.as_bytes()).ct_eq(&entry.secret_sha256)) {
            return None;
        }
        Some(match entry.access {
            TokenAccess::Admin => Access::Admin,
            TokenAccess::Domain(id) => Access::Domain(id),
        })
    }

    /// Creates a token; returns it and its bearer string (shown once).
    /// Authentication accepts it as soon as this returns.
    pub async fn create(
        &self,
        scope: Scope,
        description: String,
    ) -> Result<(TokenInfo, String), Status> {
        let id = Uuid::new_v4();
        let secret = random_secret();
        let new = NewToken {
            token_id: id,
            scope,
            secret_sha256: hex::encode(sha256(secret.as_bytes())),
            description,
        };
        let token = self
            .inner
            .provisioning
            .create_token(new, Meta::default())
            .await
            .map_err(status::from_actor)?;
        Ok((token, format!("{PREFIX}{}_{secret}", id.simple())))
    }

    /// Revokes a token (a revoked one stays revoked; nothing is written).
    /// Authentication refuses it as soon as this returns.
    pub async fn revoke(&self, id: Uuid) -> Result<TokenInfo, Status> {
        self.inner
            .provisioning
            .revoke_token(id, Meta::default())
            .await
            .map_err(status::from_actor)
    }

    /// Every token, oldest first.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, Status> {
        self.inner
            .provisioning
            .list_tokens()
            .await
            .map_err(status::from_actor)
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

    use dialtone_actors::{ActorSystem, Directory, DirectoryConfig, ProvisioningConfig};
    use dialtone_domain::DomainName;
    use dialtone_eventlog::sqlite::{SqliteOptions, SqliteStore};
    use tonic::service::Interceptor as _;

    use super::*;

    async fn store(dir: &tempfile::TempDir) -> SharedStore {
        Arc::new(SqliteStore::open(&dir.path().join("events.db"), SqliteOptions::new("t")).unwrap())
    }

    /// The token table of `store` as a (re)started node loads it: fresh
    /// actors, the table rebuilt from the log. The actor system is kept in
    /// `systems` to be shut down at the end.
    async fn load(
        store: &SharedStore,
        admin_token: Option<&str>,
        systems: &mut Vec<ActorSystem>,
    ) -> Tokens {
        let system = ActorSystem::start(1).unwrap();
        let directory = Directory::new(
            store.clone(),
            system.arbiters().to_vec(),
            DirectoryConfig::default(),
        )
        .unwrap();
        systems.push(system);
        let provisioning = Provisioning::new(directory, ProvisioningConfig::default());
        Tokens::load(provisioning, admin_token).await.unwrap()
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
        let mut systems = Vec::new();
        let tokens = load(&store, Some("s3cret-admin"), &mut systems).await;
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
        let reloaded = load(&store, None, &mut systems).await;
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
        let reloaded = load(&store, None, &mut systems).await;
        assert_eq!(reloaded.authenticate(&secret), None);
        let listed = reloaded.list().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].id == info.id && listed[0].revoked_at.is_some());
        for system in systems {
            tokio::task::spawn_blocking(move || system.shutdown())
                .await
                .unwrap();
        }
    }
}
