//! The TCP framer: feeding a stream in arbitrary chunks must frame the same
//! messages as feeding it whole, and never index out of bounds.
#![no_main]

use dialtone_sip::frame::{check, Frame};
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fn frames(stream: &[u8], chunk: usize) -> Vec<Result<Frame, ()>> {
    let mut out = Vec::new();
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    loop {
        match check(&buf, MAX) {
            Ok(Some(f)) => {
                let n = match f {
                    Frame::Message(n) | Frame::KeepAlive(n) => n,
                };
                assert!(n > 0 && n <= buf.len());
                out.push(Ok(f));
                buf.drain(..n);
            }
            Ok(None) => {
                if fed >= stream.len() {
                    return out;
                }
                let end = (fed + chunk).min(stream.len());
                buf.extend_from_slice(&stream[fed..end]);
                fed = end;
            }
            Err(_) => {
                out.push(Err(()));
                return out;
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let chunk = usize::from(data[0]) + 1;
    let stream = &data[1..];
    let whole = frames(stream, usize::MAX / 2);
    let pieces = frames(stream, chunk);
    // Keep-alive runs may be split differently; compare the messages.
    let msgs = |v: &[Result<Frame, ()>]| {
        v.iter()
            .filter(|f| !matches!(f, Ok(Frame::KeepAlive(_))))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(msgs(&whole), msgs(&pieces));
});
