//! CPU cost of authenticated registrations through `Core::handle`, without
//! sockets: each registration is a REGISTER answered 401, then a REGISTER
//! with an MD5 `Authorization` answered 200 (what SIPp's `register_auth.xml`
//! does), over 10,000 users with an in-memory registry.
//!
//! `cargo run --release -p dialtone-sip --example register_cost -- [N]`
//!
//! For stable numbers on a shared machine count instructions instead of time:
//! `valgrind --tool=callgrind --toggle-collect='*Core*handle*' target/release/examples/register_cost 20000`
//! (the client side, building the requests and the digest, is then left out).

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use dialtone_sip::auth::digest::{ha1, response, Algorithm};
use dialtone_sip::core::Core;
use dialtone_sip::wire::response::Source;
use dialtone_sip::{
    BackendError, CurrentContact, GatewayConfig, Lookup, RegisterOutcome, RegisterRequest,
    RegistrarBackend, RegistrarOnly, Transport, UserCredentials,
};

struct Memory {
    users: HashMap<String, UserCredentials>,
}

#[async_trait::async_trait]
impl RegistrarBackend for Memory {
    async fn credentials(&self, _d: &str, user: &str) -> Result<Lookup, BackendError> {
        Ok(match self.users.get(user) {
            Some(c) => Lookup::Found(c.clone()),
            None => Lookup::UnknownUser(dialtone_sip::DigestAlgorithms::SHA256_MD5),
        })
    }
    async fn register(&self, r: RegisterRequest) -> Result<RegisterOutcome, BackendError> {
        Ok(RegisterOutcome::Ok {
            contacts: r
                .changes
                .into_iter()
                .map(|c| CurrentContact {
                    uri: c.uri,
                    expires_in_secs: c.expires_secs,
                    q: None,
                })
                .collect(),
            message_waiting: None,
        })
    }
    async fn contacts(&self, _d: &str, _u: &str) -> Result<Vec<CurrentContact>, BackendError> {
        Ok(Vec::new())
    }
}

const REALM: &str = "example.test";

fn request(i: u64, user: &str, cseq: u32, auth: Option<&str>) -> String {
    let mut s = format!(
        "REGISTER sip:example.test SIP/2.0\r\n\
         Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-4242-{i}-{cseq}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.test>;tag=4242R{i}\r\n\
         To: <sip:{user}@example.test>\r\n\
         Call-ID: {i}-4242@127.0.0.1\r\n\
         CSeq: {cseq} REGISTER\r\n\
         Contact: <sip:{user}@127.0.0.1:5090>\r\n"
    );
    if let Some(a) = auth {
        s.push_str("Authorization: ");
        s.push_str(a);
        s.push_str("\r\n");
    }
    s.push_str("Expires: 3600\r\nUser-Agent: sipp-bench\r\nContent-Length: 0\r\n\r\n");
    s
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(100_000);
    let users_n = 10_000u64;
    let names: Vec<String> = (0..users_n).map(|i| format!("user{i:06}")).collect();
    let ha1s: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(i, u)| ha1(Algorithm::Md5, u, REALM, &format!("pw{i:06}x")))
        .collect();
    let users = names
        .iter()
        .enumerate()
        .map(|(i, u)| {
            let pw = format!("pw{i:06}x");
            (
                u.clone(),
                UserCredentials {
                    algorithms: dialtone_sip::DigestAlgorithms::SHA256_MD5,
                    ha1_md5: Some(ha1s[i].clone()),
                    ha1_sha256: ha1(Algorithm::Sha256, u, REALM, &pw),
                    disabled: false,
                },
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cfg = GatewayConfig {
        challenge_md5_first: true,
        ..GatewayConfig::default()
    };
    let core = Core::new(cfg, Arc::new(RegistrarOnly(Memory { users })));
    let src = Source {
        addr: "127.0.0.1:5061".parse().expect("addr"),
        reliable: false,
    };
    let mut in_core = std::time::Duration::ZERO;
    let t = Instant::now();
    rt.block_on(async {
        for i in 0..n {
            let u = (i % users_n) as usize;
            let user = &names[u];
            let first = request(i, user, 1, None);
            let t0 = Instant::now();
            let challenge = core
                .handle(
                    first.as_bytes(),
                    dialtone_sip::Flow::new(Transport::Udp, src.addr),
                )
                .await
                .expect("401");
            in_core += t0.elapsed();
            let text = std::str::from_utf8(&challenge.bytes).expect("utf8");
            assert!(text.starts_with("SIP/2.0 401"), "{text}");
            let at = text.find("nonce=\"").expect("nonce") + 7;
            let nonce = &text[at..at + 64];
            let oat = text.find("opaque=\"").expect("opaque") + 8;
            let opaque = &text[oat..oat + 16];
            let resp = response(
                Algorithm::Md5,
                &ha1s[u],
                nonce,
                "00000001",
                "6b8b4567",
                "auth",
                "REGISTER",
                "sip:example.test",
            );
            let auth = format!(
                "Digest username=\"{user}\",realm=\"example.test\",cnonce=\"6b8b4567\",nc=00000001,\
                 qop=auth,uri=\"sip:example.test\",nonce=\"{nonce}\",response=\"{resp}\",\
                 algorithm=MD5,opaque=\"{opaque}\""
            );
            let second = request(i, user, 2, Some(&auth));
            let t0 = Instant::now();
            let ok = core
                .handle(
                    second.as_bytes(),
                    dialtone_sip::Flow::new(Transport::Udp, src.addr),
                )
                .await
                .expect("200");
            in_core += t0.elapsed();
            assert!(ok.bytes.starts_with(b"SIP/2.0 200"));
        }
    });
    let total = t.elapsed();
    println!(
        "{n} registrations: {:.2} µs each in Core::handle (401 + 200), {:.2} µs each with the client side",
        in_core.as_secs_f64() * 1e6 / n as f64,
        total.as_secs_f64() * 1e6 / n as f64
    );
}
