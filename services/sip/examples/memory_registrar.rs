//! The gateway over an in-memory registry, for SIPp runs against the SIP
//! layer alone (no actors, no event log).
//!
//! `cargo run --release -p dialtone-sip --example memory_registrar -- 127.0.0.1:5070 example.test 10000`
//! serves users `user000000`.. with passwords `pw000000x`.. (the user
//! files of the SIPp benchmark harness: "SIPp harness" in
//! `docs/performance.md`).

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dialtone_sip::auth::digest::{ha1, Algorithm};
use dialtone_sip::{
    BackendError, CurrentContact, Gateway, GatewayConfig, Lookup, RegisterOutcome, RegisterRequest,
    RegistrarBackend, RegistrarOnly, UserCredentials,
};

struct Memory {
    domain: String,
    users: HashMap<String, UserCredentials>,
    bindings: Mutex<HashMap<String, Vec<(String, Instant)>>>,
}

#[async_trait::async_trait]
impl RegistrarBackend for Memory {
    async fn credentials(&self, domain: &str, user: &str) -> Result<Lookup, BackendError> {
        if domain != self.domain {
            return Ok(Lookup::UnknownDomain);
        }
        Ok(match self.users.get(user) {
            Some(c) => Lookup::Found(c.clone()),
            None => Lookup::UnknownUser(dialtone_sip::DigestAlgorithms::SHA256_MD5),
        })
    }

    async fn register(&self, r: RegisterRequest) -> Result<RegisterOutcome, BackendError> {
        let now = Instant::now();
        let mut all = self
            .bindings
            .lock()
            .map_err(|_| BackendError::Internal("poisoned".into()))?;
        let list = all.entry(r.user).or_default();
        if r.remove_all {
            list.clear();
        }
        for c in r.changes {
            list.retain(|(u, _)| *u != c.uri);
            if c.expires_secs > 0 {
                list.push((c.uri, now + Duration::from_secs(c.expires_secs.into())));
            }
        }
        list.retain(|(_, t)| *t > now);
        let contacts = list
            .iter()
            .map(|(u, t)| CurrentContact {
                uri: u.clone(),
                expires_in_secs: (*t - now).as_secs() as u32,
                q: None,
            })
            .collect();
        Ok(RegisterOutcome::Ok {
            contacts,
            message_waiting: None,
        })
    }

    async fn contacts(&self, _d: &str, user: &str) -> Result<Vec<CurrentContact>, BackendError> {
        let now = Instant::now();
        let all = self
            .bindings
            .lock()
            .map_err(|_| BackendError::Internal("poisoned".into()))?;
        Ok(all
            .get(user)
            .map(|l| {
                l.iter()
                    .map(|(u, t)| CurrentContact {
                        uri: u.clone(),
                        expires_in_secs: t.saturating_duration_since(now).as_secs() as u32,
                        q: None,
                    })
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().unwrap_or("127.0.0.1:5070".into()).parse()?;
    let domain = args.next().unwrap_or("example.test".into());
    let n: usize = args.next().unwrap_or("10000".into()).parse()?;
    let users = (0..n)
        .map(|i| {
            let user = format!("user{i:06}");
            let pw = format!("pw{i:06}x");
            let c = UserCredentials {
                algorithms: dialtone_sip::DigestAlgorithms::SHA256_MD5,
                ha1_md5: Some(ha1(Algorithm::Md5, &user, &domain, &pw)),
                ha1_sha256: ha1(Algorithm::Sha256, &user, &domain, &pw),
                disabled: false,
            };
            (user, c)
        })
        .collect();
    let registry = Arc::new(RegistrarOnly(Memory {
        domain,
        users,
        bindings: Mutex::new(HashMap::new()),
    }));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let cfg = GatewayConfig {
            listen: vec![listen],
            challenge_md5_first: std::env::var_os("MD5_FIRST").is_some(),
            udp_receivers: std::env::var("UDP_RECEIVERS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2),
            ..GatewayConfig::default()
        };
        let gw = Gateway::start(cfg, registry).await?;
        eprintln!("listening on {:?}", gw.local_addrs());
        tokio::signal::ctrl_c().await?;
        gw.shutdown().await;
        Ok(())
    })
}
