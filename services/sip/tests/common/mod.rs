//! An in-memory `SipBackend` for the gateway tests.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dialtone_sip::auth::digest::{ha1, Algorithm};
use dialtone_sip::{
    BackendError, CurrentContact, DigestAlgorithms, Gateway, GatewayConfig, GatewayHandle, Lookup,
    RegisterOutcome, RegisterRequest, SipBackend, UserCredentials,
};

pub const DOMAIN: &str = "example.test";

#[derive(Clone)]
pub struct User {
    pub password: String,
    pub disabled: bool,
    pub md5: bool,
}

struct Binding {
    uri: String,
    until: Instant,
    q: Option<u16>,
    call_id: String,
    cseq: u32,
}

#[derive(Default)]
pub struct FakeBackend {
    domains: Mutex<HashMap<String, bool>>, // name -> suspended
    users: Mutex<HashMap<(String, String), User>>,
    bindings: Mutex<HashMap<(String, String), Vec<Binding>>>,
    pub register_calls: AtomicUsize,
    pub credential_calls: AtomicUsize,
    pub last_request: Mutex<Option<RegisterRequest>>,
    pub fail: AtomicBool,
    pub delay: Mutex<Duration>,
    /// Call steps recorded, in order.
    pub calls: Mutex<Vec<dialtone_sip::CallRecord>>,
    /// Lock-outs reported.
    pub lockouts: Mutex<Vec<dialtone_sip::guard::Lockout>>,
    /// Connections reported closed.
    pub closed_flows: Mutex<Vec<dialtone_sip::ConnectionId>>,
}

impl FakeBackend {
    pub fn new() -> Arc<FakeBackend> {
        let r = Arc::new(FakeBackend::default());
        r.add_domain(DOMAIN, false);
        r.add_user(DOMAIN, "alice", "alice-pw", false, true);
        r.add_user(DOMAIN, "bob", "bob-pw", false, true);
        r.add_user(DOMAIN, "dave", "dave-pw", true, true);
        r.add_user(DOMAIN, "sha", "sha-pw", false, false);
        r.add_domain("suspended.test", true);
        r.add_user("suspended.test", "carol", "carol-pw", false, true);
        r
    }

    pub fn add_domain(&self, d: &str, suspended: bool) {
        self.domains.lock().unwrap().insert(d.into(), suspended);
    }

    pub fn add_user(&self, d: &str, u: &str, pw: &str, disabled: bool, md5: bool) {
        self.users.lock().unwrap().insert(
            (d.into(), u.into()),
            User {
                password: pw.into(),
                disabled,
                md5,
            },
        );
    }

    fn current(&self, key: &(String, String)) -> Vec<CurrentContact> {
        let now = Instant::now();
        let mut b = self.bindings.lock().unwrap();
        let list = b.entry(key.clone()).or_default();
        list.retain(|b| b.until > now);
        list.iter()
            .map(|b| CurrentContact {
                uri: b.uri.clone(),
                expires_in_secs: (b.until - now).as_secs_f64().round() as u32,
                q: b.q,
            })
            .collect()
    }
}

#[async_trait::async_trait]
impl SipBackend for FakeBackend {
    async fn watch(&self, _: &str, _: &str) -> Result<dialtone_sip::backend::Watch, BackendError> {
        // Nobody's presence or calls are kept here.
        Ok(dialtone_sip::backend::Watch::UnknownUser)
    }

    fn set_watcher(&self, _: std::sync::Arc<dyn dialtone_sip::backend::ResourceWatcher>) {}

    async fn credentials(&self, domain: &str, user: &str) -> Result<Lookup, BackendError> {
        self.credential_calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("store down".into()));
        }
        match self.domains.lock().unwrap().get(domain) {
            None => return Ok(Lookup::UnknownDomain),
            Some(true) => return Ok(Lookup::DomainSuspended),
            Some(false) => {}
        }
        let users = self.users.lock().unwrap();
        let Some(u) = users.get(&(domain.to_owned(), user.to_owned())) else {
            return Ok(Lookup::UnknownUser(DigestAlgorithms::SHA256_MD5));
        };
        Ok(Lookup::Found(UserCredentials {
            // As a domain with MD5 allowed offered before each domain chose
            // its algorithms, or SHA-256 only.
            algorithms: if u.md5 {
                DigestAlgorithms::SHA256_MD5
            } else {
                DigestAlgorithms::SHA256
            },
            ha1_md5: u
                .md5
                .then(|| ha1(Algorithm::Md5, user, domain, &u.password)),
            ha1_sha256: ha1(Algorithm::Sha256, user, domain, &u.password),
            disabled: u.disabled,
        }))
    }

    async fn register(&self, request: RegisterRequest) -> Result<RegisterOutcome, BackendError> {
        self.register_calls.fetch_add(1, Ordering::SeqCst);
        let delay = *self.delay.lock().unwrap();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("store down".into()));
        }
        *self.last_request.lock().unwrap() = Some(request.clone());
        let key = (request.domain.clone(), request.user.clone());
        {
            let mut all = self.bindings.lock().unwrap();
            let list = all.entry(key.clone()).or_default();
            if list
                .iter()
                .any(|b| b.call_id == request.call_id && b.cseq >= request.cseq)
            {
                return Ok(RegisterOutcome::CSeqOutOfOrder);
            }
            if request.remove_all {
                list.clear();
            }
            for c in &request.changes {
                list.retain(|b| b.uri != c.uri);
                if c.expires_secs > 0 {
                    list.push(Binding {
                        uri: c.uri.clone(),
                        until: Instant::now() + Duration::from_secs(c.expires_secs.into()),
                        q: c.q,
                        call_id: request.call_id.clone(),
                        cseq: request.cseq,
                    });
                }
            }
        }
        Ok(RegisterOutcome::Ok {
            contacts: self.current(&key),
            message_waiting: None,
        })
    }

    async fn contacts(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Vec<CurrentContact>, BackendError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(BackendError::Unavailable("store down".into()));
        }
        Ok(self.current(&(domain.to_owned(), user.to_owned())))
    }

    async fn route_call(
        &self,
        _caller_domain: &str,
        _callee_domain: &str,
        _callee_user: &str,
    ) -> Result<dialtone_sip::CallRoute, BackendError> {
        // The gateway tests here cover the registrar and dialog refusals;
        // calls are tested end to end through the node (tests/calls_sipp).
        Ok(dialtone_sip::CallRoute::UnknownUser)
    }

    async fn record_call(
        &self,
        records: Vec<dialtone_sip::CallRecord>,
    ) -> Result<(), BackendError> {
        self.calls.lock().unwrap().extend(records);
        Ok(())
    }

    fn lockout(&self, lockout: dialtone_sip::guard::Lockout) {
        self.lockouts.lock().unwrap().push(lockout);
    }

    fn flow_closed(&self, connection: dialtone_sip::ConnectionId) {
        self.closed_flows.lock().unwrap().push(connection);
    }
}

pub fn config() -> GatewayConfig {
    GatewayConfig {
        listen: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
        secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        ..GatewayConfig::default()
    }
}

pub async fn start(cfg: GatewayConfig) -> (GatewayHandle, Arc<FakeBackend>, SocketAddr) {
    let reg = FakeBackend::new();
    let gw = Gateway::start(cfg, reg.clone()).await.unwrap();
    let addr = gw.local_addrs()[0];
    (gw, reg, addr)
}
