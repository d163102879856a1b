//! The WebSocket deframer (RFC 6455, server side): feeding a client's
//! bytes in arbitrary chunks must give the same events as feeding them
//! whole, and never panic. The body lives in `dialtone_sip::fuzzing` so
//! that the short run in the test suite (`services/sip/tests/fuzz_smoke.rs`)
//! feeds the same code.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dialtone_sip::fuzzing::websocket(data));
