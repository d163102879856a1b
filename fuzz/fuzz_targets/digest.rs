//! The digest header parameter parser (Authorization / WWW-Authenticate)
//! and verification.
#![no_main]

use dialtone_sip::digest::{parse_params, Challenge, Credentials};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parse_params(s);
    let _ = Challenge::parse(s);
    if let Ok(c) = Credentials::parse(s) {
        let _ = c.verify("00112233445566778899aabbccddeeff", "REGISTER");
        let _ = c.verify(
            "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
            "REGISTER",
        );
    }
});
