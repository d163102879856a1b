//! The SIP message parser and everything the gateway derives from a parsed
//! request without IO: typed headers, the transaction key, the registrar's
//! plan, a response, and the salvage path for unparsable input.
#![no_main]

use dialtone_sip::core::salvage;
use dialtone_sip::message::{Message, Name, NameAddr, Uri};
use dialtone_sip::registrar::{plan, ExpiresPolicy};
use dialtone_sip::response::{Response, Source};
use dialtone_sip::transaction::Key;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let source = Source {
        addr: std::net::SocketAddr::from(([127, 0, 0, 1], 5060)),
        reliable: false,
    };
    match Message::parse(data) {
        Ok(m) => {
            let _ = m.top_via().map(|v| (v.branch(), v.sent_by()));
            let _ = m.from().map(|f| f.tag());
            let _ = m.to().map(|t| Uri::parse(t.uri));
            let _ = m.cseq();
            let _ = m.call_id();
            let _ = m.max_forwards();
            for c in m.list(Name::Contact) {
                if let Some(n) = NameAddr::parse(c) {
                    let _ = Uri::parse(n.uri);
                    let _ = n.param("expires");
                }
            }
            let _ = plan(&m, &ExpiresPolicy::default());
            let _ = Key::from_request(&m);
            if m.top_via().is_ok() {
                let r = Response::to(&m, &source, 400, "tag").finish();
                // What we send must parse.
                assert!(Message::parse(&r).is_ok(), "{:?}", String::from_utf8_lossy(&r));
            }
        }
        Err(_) => {
            if let Some(m) = salvage(data) {
                let _ = Response::to(&m, &source, 400, "tag").finish();
            }
        }
    }
});
