//! Times `Core::handle` without sockets: `cargo run --release -p dialtone-sip --example core_timing`.
use std::sync::Arc;
use std::time::Instant;

use dialtone_sip::auth::digest::{ha1, Algorithm};
use dialtone_sip::core::Core;
use dialtone_sip::wire::response::Source;
use dialtone_sip::{
    BackendError, CurrentContact, GatewayConfig, Lookup, RegisterOutcome, RegisterRequest,
    RegistrarBackend, RegistrarOnly, Transport, UserCredentials,
};

struct One(UserCredentials);

#[async_trait::async_trait]
impl RegistrarBackend for One {
    async fn credentials(&self, _d: &str, _u: &str) -> Result<Lookup, BackendError> {
        Ok(Lookup::Found(self.0.clone()))
    }
    async fn register(&self, _r: RegisterRequest) -> Result<RegisterOutcome, BackendError> {
        Ok(RegisterOutcome::Ok {
            contacts: vec![],
            message_waiting: None,
        })
    }
    async fn contacts(&self, _d: &str, _u: &str) -> Result<Vec<CurrentContact>, BackendError> {
        Ok(vec![])
    }
}

fn main() {
    let n = 200_000;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let creds = UserCredentials {
        algorithms: dialtone_sip::DigestAlgorithms::SHA256_MD5,
        ha1_md5: Some(ha1(Algorithm::Md5, "u", "example.test", "p")),
        ha1_sha256: ha1(Algorithm::Sha256, "u", "example.test", "p"),
        disabled: false,
    };
    let core = Core::new(
        GatewayConfig::default(),
        Arc::new(RegistrarOnly(One(creds))),
    );
    let src = Source {
        addr: "127.0.0.1:5061".parse().unwrap(),
        reliable: false,
    };
    for method in ["OPTIONS", "REGISTER"] {
        let msgs: Vec<String> = (0..n)
            .map(|i| format!("{method} sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-{i}\r\nMax-Forwards: 70\r\nFrom: <sip:u@example.test>;tag=1234R1\r\nTo: <sip:u@example.test>\r\nCall-ID: {i}-1234@127.0.0.1\r\nCSeq: 1 {method}\r\nContact: <sip:u@127.0.0.1:5090>\r\nExpires: 3600\r\nUser-Agent: sipp-bench\r\nContent-Length: 0\r\n\r\n"))
            .collect();
        let t = Instant::now();
        let mut bytes = 0;
        rt.block_on(async {
            for m in &msgs {
                bytes += core
                    .handle(
                        m.as_bytes(),
                        dialtone_sip::Flow::new(Transport::Udp, src.addr),
                    )
                    .await
                    .unwrap()
                    .bytes
                    .len();
            }
        });
        let dt = t.elapsed();
        println!(
            "{method}: {:.2} µs/op ({bytes})",
            dt.as_secs_f64() * 1e6 / n as f64
        );
    }
}
