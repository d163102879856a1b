//! Hot paths of the gateway: parse, digest verify, and one authenticated
//! REGISTER (401 + 200) through `Core::handle` with an in-memory registry
//! (no sockets).

use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use dialtone_sip::auth::digest::{self, ha1, Algorithm, Credentials};
use dialtone_sip::core::Core;
use dialtone_sip::wire::message::{Message, Name, NameAddr};
use dialtone_sip::wire::response::Source;
use dialtone_sip::{
    BackendError, CurrentContact, GatewayConfig, Lookup, RegisterOutcome, RegisterRequest,
    RegistrarBackend, RegistrarOnly, Transport, UserCredentials,
};

const SIPP_REGISTER: &str = "REGISTER sip:example.test SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1234-1-2\r\n\
Max-Forwards: 70\r\n\
From: <sip:user000001@example.test>;tag=1234R1\r\n\
To: <sip:user000001@example.test>\r\n\
Call-ID: 1-1234@127.0.0.1\r\n\
CSeq: 2 REGISTER\r\n\
Contact: <sip:user000001@127.0.0.1:5090>\r\n\
Authorization: Digest username=\"user000001\",realm=\"example.test\",cnonce=\"6b8b4567\",nc=00000001,qop=auth,uri=\"sip:example.test\",nonce=\"000001a216b72833ceaedd807ff716dec8e3115cd29d3414367f1e6852d9f4a2\",response=\"89ba1cce72865bf91a1a5812c5d2754f\",algorithm=MD5,opaque=\"6508f8499878e0d9\"\r\n\
Expires: 3600\r\n\
User-Agent: sipp-bench\r\n\
Content-Length: 0\r\n\r\n";

struct One {
    creds: UserCredentials,
}

#[async_trait::async_trait]
impl RegistrarBackend for One {
    async fn credentials(&self, _d: &str, _u: &str) -> Result<Lookup, BackendError> {
        Ok(Lookup::Found(self.creds.clone()))
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

fn parse(c: &mut Criterion) {
    c.bench_function("parse_register", |b| {
        b.iter(|| {
            let m = Message::parse(black_box(SIPP_REGISTER.as_bytes())).unwrap();
            let via = m.top_via().unwrap();
            let n = m.list(Name::Contact).filter_map(NameAddr::parse).count();
            black_box((via.branch(), m.cseq().unwrap(), m.call_id().unwrap(), n));
        })
    });
}

fn digest_verify(c: &mut Criterion) {
    let h = digest::authorization(
        Algorithm::Sha256,
        "user000001",
        "example.test",
        "pw000001x",
        "000001a216b72833ceaedd807ff716dec8e3115cd29d3414367f1e6852d9f4a2",
        Some("op"),
        "REGISTER",
        "sip:example.test",
        1,
        "6b8b4567",
    );
    let ha1_sha = ha1(Algorithm::Sha256, "user000001", "example.test", "pw000001x");
    c.bench_function("digest_parse_verify_sha256", |b| {
        b.iter(|| {
            let c = Credentials::parse(black_box(&h)).unwrap();
            assert!(c.verify(&ha1_sha, "REGISTER"));
        })
    });
}

fn register_through_core(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (user, realm, pw) = ("user000001", "example.test", "pw000001x");
    let registry = Arc::new(RegistrarOnly(One {
        creds: UserCredentials {
            algorithms: dialtone_sip::DigestAlgorithms::SHA256_MD5,
            ha1_md5: Some(ha1(Algorithm::Md5, user, realm, pw)),
            ha1_sha256: ha1(Algorithm::Sha256, user, realm, pw),
            disabled: false,
        },
    }));
    let cfg = GatewayConfig {
        challenge_md5_first: true,
        ..GatewayConfig::default()
    };
    let core = Core::new(cfg, registry);
    let src = Source {
        addr: "127.0.0.1:5061".parse::<SocketAddr>().unwrap(),
        reliable: false,
    };
    let make = |branch: &str, cseq: u32, auth: Option<&str>| {
        let mut s = format!(
            "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch={branch}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:user000001@example.test>;tag=1234R1\r\n\
             To: <sip:user000001@example.test>\r\nCall-ID: 1-1234@127.0.0.1\r\nCSeq: {cseq} REGISTER\r\n\
             Contact: <sip:user000001@127.0.0.1:5090>\r\n"
        );
        if let Some(a) = auth {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        s.push_str("Expires: 3600\r\nUser-Agent: sipp-bench\r\nContent-Length: 0\r\n\r\n");
        s
    };
    let mut i = 0u64;
    c.bench_function("register_401_then_200_core", |b| {
        b.iter(|| {
            i += 1;
            let first = make(&format!("z9hG4bK-{i}-a"), 1, None);
            let challenge = rt
                .block_on(core.handle(
                    first.as_bytes(),
                    dialtone_sip::Flow::new(Transport::Udp, src.addr),
                ))
                .unwrap();
            let text = String::from_utf8_lossy(&challenge.bytes);
            let start = text.find("nonce=\"").unwrap() + 7;
            let nonce = &text[start..start + 64];
            let auth = digest::authorization(
                Algorithm::Md5,
                user,
                realm,
                pw,
                nonce,
                None,
                "REGISTER",
                "sip:example.test",
                1,
                "6b8b4567",
            );
            let second = make(&format!("z9hG4bK-{i}-b"), 2, Some(&auth));
            let ok = rt
                .block_on(core.handle(
                    second.as_bytes(),
                    dialtone_sip::Flow::new(Transport::Udp, src.addr),
                ))
                .unwrap();
            assert!(ok.bytes.starts_with(b"SIP/2.0 200"));
        })
    });
}

criterion_group!(benches, parse, digest_verify, register_through_core);
criterion_main!(benches);
