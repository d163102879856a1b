//! A short fuzz run on the stable toolchain, inside `cargo test`:
//! the suite's version of `scripts/fuzz-smoke`, which needs cargo-fuzz and
//! libFuzzer and so stays outside `scripts/test`.
//!
//! Each test feeds one fuzz target body of [`dialtone_sip::fuzzing`] (the
//! same functions the cargo-fuzz targets in `fuzz/` call):
//! 1. every seed under `fuzz/seeds/<target>/`, and for `message` and `frame`
//!    every RFC 4475 torture message (`tests/rfc4475/*.dat`; for `frame`
//!    behind a chunk-size byte), and for `digest` the digest header values
//!    found in those messages;
//! 2. then a deterministic stream of mutated inputs from a small mutator
//!    (xorshift PRNG; byte flips, inserted / deleted / duplicated ranges,
//!    splices of two inputs, SIP tokens, numbers at the edges of integer
//!    types, very long runs, line edits, truncation) for a time budget of
//!    4 s per target, capped at [`EXECS_PER_SEC`] executions per second of
//!    budget so that a fast machine doesn't turn it into a long run.
//!
//! There is no coverage feedback: this is a smoke test that keeps obvious
//! panics (a slice index on a short header, an overflow on a large number)
//! out of the suite, not a replacement for the long libFuzzer runs.
//!
//! Any panic fails the test, with the input (escaped, and saved to a file
//! that `cargo fuzz run <target> <file>` takes), the seed and the execution
//! number. The stream depends only on the seed, so a failure reproduces
//! with the same seed. Overrides: `FUZZ_SMOKE_SEED` (decimal or `0x` hex)
//! and `FUZZ_SMOKE_SECS` (seconds per target, fractions allowed; the cap
//! scales with it).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dialtone_sip::fuzzing;

/// The seed when `FUZZ_SMOKE_SEED` is not set ("dialtone" in ASCII).
const DEFAULT_SEED: u64 = 0x6469_616c_746f_6e65;
/// Seconds of mutated inputs per target when `FUZZ_SMOKE_SECS` is not set.
const DEFAULT_SECS: f64 = 4.0;
/// At most this many mutated executions per second of budget.
const EXECS_PER_SEC: f64 = 100_000.0;
/// Longest input the mutator makes for `message` and `digest`: twice the
/// fuzz runs' `-max_len` (4,096), for the very long runs.
const MAX_LEN: usize = 8192;
/// Longest input for `frame`: just over its 4,096-byte limit, so that an
/// endless header section is cut off too (libFuzzer's 4,096 never gets
/// there), and no longer, as the framer's cost grows with the square of the
/// length when the stream is fed byte by byte.
const FRAME_MAX_LEN: usize = 4200;
/// Longest input for `websocket`: past its 1,024-byte message limit with
/// room for several frames.
const WEBSOCKET_MAX_LEN: usize = 4200;

#[test]
fn message() {
    let mut corpus = seeds("message");
    corpus.extend(rfc4475().into_iter().map(|(_, m)| m));
    run("message", fuzzing::message, corpus, MAX_LEN);
}

#[test]
fn digest() {
    let mut corpus = seeds("digest");
    // The digest header values of the message seeds and RFC 4475 messages,
    // so the mutator starts from more than two shapes of parameter list.
    let messages = seeds("message")
        .into_iter()
        .chain(rfc4475().into_iter().map(|(_, m)| m));
    for m in messages {
        corpus.extend(digest_values(&m));
    }
    run("digest", fuzzing::digest, corpus, MAX_LEN);
}

#[test]
fn frame() {
    let mut corpus = seeds("frame");
    // The first byte picks the chunk size; vary it over the messages so both
    // small chunks (split inside a header) and large ones are fed.
    const CHUNKS: [u8; 5] = [0, 1, 6, 63, 255];
    for (i, (_, m)) in rfc4475().into_iter().enumerate() {
        let mut input = vec![CHUNKS[i % CHUNKS.len()]];
        input.extend_from_slice(&m);
        corpus.push(input);
    }
    run("frame", fuzzing::frame, corpus, FRAME_MAX_LEN);
}

#[test]
fn websocket() {
    let corpus = seeds("websocket");
    run("websocket", fuzzing::websocket, corpus, WEBSOCKET_MAX_LEN);
}

/// Feeds `corpus` then mutated inputs to `target`; panics (failing the
/// test) with the input when the target panics.
fn run(name: &str, target: fn(&[u8]), corpus: Vec<Vec<u8>>, max_len: usize) {
    assert!(!corpus.is_empty(), "{name}: no seed inputs");
    let (base_seed, secs) = settings();
    // One stream per target, all from one seed to report.
    let seed = base_seed ^ fnv1a(name.as_bytes());
    let ctx = Ctx {
        name,
        target,
        seed: base_seed,
    };
    let started = Instant::now();
    for (i, input) in corpus.iter().enumerate() {
        ctx.exec(input, "seed", i as u64);
    }
    let seeded = started.elapsed();

    let budget = Duration::from_secs_f64(secs);
    let cap = (secs * EXECS_PER_SEC) as u64;
    let mut rng = Rng::new(seed);
    let mut current: Vec<u8> = Vec::new();
    let mut execs = 0u64;
    let mutating = Instant::now();
    while execs < cap && mutating.elapsed() < budget {
        // Half the time start again from a seed, otherwise keep mutating the
        // last input: deep enough to stack edits, yet mostly still SIP.
        if current.is_empty() || rng.chance(2) {
            current.clone_from(rng.pick(&corpus));
        }
        for _ in 0..=rng.below(4) {
            mutate(&mut rng, &mut current, &corpus);
        }
        current.truncate(max_len);
        ctx.exec(&current, "mutated", execs);
        execs += 1;
    }
    // Straight to stderr rather than through `eprintln!`, which the test
    // harness captures: the counts show in every `cargo test` run.
    let _ = writeln!(
        std::io::stderr(),
        "fuzz_smoke {name}: {} seed inputs in {:.2} s, {execs} mutated inputs in {:.1} s \
         (seed {base_seed:#x}, cap {cap}), 0 panics",
        corpus.len(),
        seeded.as_secs_f64(),
        mutating.elapsed().as_secs_f64(),
    );
}

/// What a failing execution reports.
struct Ctx<'a> {
    name: &'a str,
    target: fn(&[u8]),
    seed: u64,
}

impl Ctx<'_> {
    /// Runs the target on `input`, the `n`th of its `kind` (seed or mutated).
    fn exec(&self, input: &[u8], kind: &str, n: u64) {
        let target = self.target;
        if std::panic::catch_unwind(|| target(input)).is_ok() {
            return;
        }
        let name = self.name;
        let file =
            std::env::temp_dir().join(format!("fuzz-smoke-{name}-{:x}-{kind}-{n}", self.seed));
        let saved = match std::fs::write(&file, input) {
            Ok(()) => file.display().to_string(),
            Err(e) => format!("not saved: {e}"),
        };
        let shown = &input[..input.len().min(2000)];
        panic!(
            "fuzz_smoke {name}: {kind} input {n} panicked (message above)\n\
             input, {} bytes ({saved}):\n\"{}\"{}\n\
             again: FUZZ_SMOKE_SEED={:#x} cargo test -p dialtone-sip --test fuzz_smoke {name}\n\
             or: cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run {name} {saved}",
            input.len(),
            shown.escape_ascii(),
            if shown.len() < input.len() { "..." } else { "" },
            self.seed,
        );
    }
}

/// The seed and seconds per target, from the environment or the defaults.
fn settings() -> (u64, f64) {
    let seed = match std::env::var("FUZZ_SMOKE_SEED") {
        Ok(v) => {
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|e| panic!("FUZZ_SMOKE_SEED={v:?}: {e}"))
        }
        Err(_) => DEFAULT_SEED,
    };
    let secs = match std::env::var("FUZZ_SMOKE_SECS") {
        Ok(v) => match v.parse::<f64>() {
            Ok(s) if s.is_finite() && s >= 0.0 => s,
            _ => panic!("FUZZ_SMOKE_SECS={v:?}: not a number of seconds"),
        },
        Err(_) => DEFAULT_SECS,
    };
    (seed, secs)
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files of `fuzz/seeds/<target>/`, in name order.
fn seeds(target: &str) -> Vec<Vec<u8>> {
    read_dir_sorted(&repo_root().join("fuzz/seeds").join(target))
        .into_iter()
        .map(|(_, bytes)| bytes)
        .collect()
}

/// The 49 RFC 4475 messages, in name order.
fn rfc4475() -> Vec<(String, Vec<u8>)> {
    let all = read_dir_sorted(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rfc4475"));
    let dat: Vec<_> = all
        .into_iter()
        .filter(|(name, _)| name.ends_with(".dat"))
        .collect();
    assert_eq!(dat.len(), 49, "RFC 4475 messages in tests/rfc4475");
    dat
}

fn read_dir_sorted(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut files: Vec<(String, Vec<u8>)> = entries
        .map(|e| {
            let path = e
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                bytes,
            )
        })
        .collect();
    // read_dir's order is the file system's: sort so the stream depends
    // only on the seed.
    files.sort();
    files
}

/// The values of the Authorization / WWW-Authenticate family of headers in
/// a message.
fn digest_values(message: &[u8]) -> Vec<Vec<u8>> {
    const NAMES: [&str; 4] = [
        "authorization",
        "proxy-authorization",
        "www-authenticate",
        "proxy-authenticate",
    ];
    message
        .split(|b| *b == b'\n')
        .filter_map(|line| {
            let colon = line.iter().position(|b| *b == b':')?;
            let name = String::from_utf8_lossy(&line[..colon])
                .trim()
                .to_ascii_lowercase();
            NAMES
                .contains(&name.as_str())
                .then(|| line[colon + 1..].trim_ascii().to_vec())
        })
        .collect()
}

/// FNV-1a, to give each target its own stream from one seed.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// xorshift64*: small, fast and deterministic; quality is not the point.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        // splitmix64 of the seed, so that nearby seeds give unrelated
        // streams and the state is never the fixed point 0.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        Rng(if z == 0 { 1 } else { z })
    }

    fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// 0..n (n > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A length for an edit, mostly small: 1, 2, 4, ... up to `max`.
    fn len(&mut self, max: usize) -> usize {
        let bits = self.below(usize::BITS as usize - max.leading_zeros() as usize + 1);
        1 + self.below((1usize << bits).min(max.max(1)))
    }
}

/// Tokens of the grammars under test: separators, quoting, line ends and
/// folding, start-line and header pieces, and bytes that are not UTF-8.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\r\n\r\n",
    b"\r\n ",
    b"\n",
    b"\r",
    b":",
    b";",
    b",",
    b"\"",
    b"\\",
    b"=",
    b"<",
    b">",
    b"@",
    b" ",
    b"\t",
    b"%",
    b"%00",
    b"[",
    b"]",
    b"[::1]",
    b"\0",
    b"\xff",
    b"\xc3\x28",
    b"\xe2\x82\xac",
    b"sip:",
    b"sips:",
    b"tel:",
    b"SIP/2.0",
    b"SIP/2.0 200 OK\r\n",
    b"SIP/2.0/UDP ",
    b"SIP/2.0/TCP ",
    b"INVITE sip:a@example.test SIP/2.0\r\n",
    b"Content-Length: 99999",
    b"Content-Length: 0",
    b"Content-Length: ",
    b"l: ",
    b"Via: ",
    b"v: ",
    b";branch=z9hG4bK",
    b";branch=",
    b";rport",
    b";received=",
    b";tag=",
    b";expires=",
    b";q=",
    b"Contact: *",
    b"m: ",
    b"CSeq: ",
    b"Max-Forwards: ",
    b"Expires: ",
    b"Call-ID: ",
    b"Authorization: Digest ",
    b"Digest ",
    b"username=",
    b"realm=",
    b"nonce=",
    b"uri=",
    b"response=",
    b"cnonce=",
    b"opaque=",
    b"qop=auth",
    b"qop=auth-int",
    b"nc=",
    b"algorithm=MD5",
    b"algorithm=SHA-256",
    b"algorithm=SHA-256-sess",
    b"userhash=true",
];

/// Numbers at the edges of the integer types a parser might use.
const NUMBERS: &[&[u8]] = &[
    b"0",
    b"1",
    b"-1",
    b"00000000000000000001",
    b"255",
    b"256",
    b"65535",
    b"65536",
    b"999999999",
    b"1000000000",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"9223372036854775807",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999999999999",
    b"1.5",
    b"1e9",
];

/// Units of the very long runs (over header, parameter and list limits).
const RUN_UNITS: &[&[u8]] = &[
    b"a",
    b" ",
    b";",
    b",",
    b"\r\n",
    b"\r\n ",
    b"0",
    b"9",
    b"%",
    b"\"",
    b"\\",
    b"a;",
    b"x=y;",
    b"x=\"y\",",
    b"<sip:a@b>,",
    b"Via: SIP/2.0/UDP h\r\n",
];

const RUN_LENGTHS: &[usize] = &[100, 255, 256, 1000, 1024, 4095, 4096, 4097, 5000];

/// Bytes that matter in the grammars, for single-byte overwrites.
const BYTES: &[u8] = b"\0\t\n\r \"%,:;<=>@[\\]\x7f\x80\xff";

/// Applies one random edit to `buf`.
fn mutate(rng: &mut Rng, buf: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    match rng.below(12) {
        // Flip one bit.
        0 if !buf.is_empty() => {
            let i = rng.below(buf.len());
            buf[i] ^= 1 << rng.below(8);
        }
        // Overwrite a byte: with a grammar byte or any byte.
        1 if !buf.is_empty() => {
            let i = rng.below(buf.len());
            buf[i] = if rng.chance(2) {
                *rng.pick(BYTES)
            } else {
                rng.next_u64() as u8
            };
        }
        // Delete a range.
        2 if !buf.is_empty() => {
            let start = rng.below(buf.len());
            let end = start + rng.len(buf.len() - start);
            buf.drain(start..end);
        }
        // Duplicate a range, at another place or right after itself.
        3 if !buf.is_empty() => {
            let start = rng.below(buf.len());
            let end = start + rng.len(buf.len() - start);
            let copy = buf[start..end].to_vec();
            let at = if rng.chance(2) {
                end
            } else {
                rng.below(buf.len() + 1)
            };
            buf.splice(at..at, copy);
        }
        // Splice: this input's head with another's tail (sometimes all of it,
        // i.e. two messages in one datagram or stream).
        4 => {
            let other = rng.pick(corpus);
            let head = if rng.chance(4) {
                buf.len()
            } else {
                rng.below(buf.len() + 1)
            };
            let tail = if rng.chance(4) {
                0
            } else {
                rng.below(other.len() + 1)
            };
            buf.truncate(head);
            buf.extend_from_slice(&other[tail..]);
        }
        // Truncate.
        5 if !buf.is_empty() => {
            let at = rng.below(buf.len());
            buf.truncate(at);
        }
        // Replace a run of digits (a Content-Length, CSeq, port, nc...) with
        // a number at an edge.
        6 => {
            let digits: Vec<usize> = (0..buf.len())
                .filter(|&i| buf[i].is_ascii_digit() && (i == 0 || !buf[i - 1].is_ascii_digit()))
                .collect();
            let number = *rng.pick(NUMBERS);
            if digits.is_empty() {
                let at = position(rng, buf);
                buf.splice(at..at, number.iter().copied());
            } else {
                let start = *rng.pick(&digits);
                let end = start
                    + buf[start..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                buf.splice(start..end, number.iter().copied());
            }
        }
        // Edit a line: drop its CR, drop it, duplicate it (two Content-Lengths,
        // two Vias), fold it, or end the headers early.
        7 => {
            let ends: Vec<usize> = (0..buf.len()).filter(|&i| buf[i] == b'\n').collect();
            if ends.is_empty() {
                buf.extend_from_slice(b"\r\n");
                return;
            }
            let k = rng.below(ends.len());
            let end = ends[k] + 1;
            let start = if k == 0 { 0 } else { ends[k - 1] + 1 };
            match rng.below(5) {
                0 if end >= 2 && buf[end - 2] == b'\r' => {
                    buf.remove(end - 2);
                }
                1 => {
                    buf.drain(start..end);
                }
                2 => {
                    let line = buf[start..end].to_vec();
                    buf.splice(end..end, line);
                }
                3 => buf.insert(end, b' '),
                _ => {
                    buf.splice(end..end, b"\r\n".iter().copied());
                }
            }
        }
        // A very long run of one unit.
        8 => {
            let unit = *rng.pick(RUN_UNITS);
            let len = if rng.chance(2) {
                *rng.pick(RUN_LENGTHS)
            } else {
                rng.len(MAX_LEN)
            };
            let run: Vec<u8> = unit.iter().copied().cycle().take(len).collect();
            let at = position(rng, buf);
            buf.splice(at..at, run);
        }
        // Insert random bytes.
        9 => {
            let n = rng.len(8);
            let bytes: Vec<u8> = (0..n).map(|_| rng.next_u64() as u8).collect();
            let at = rng.below(buf.len() + 1);
            buf.splice(at..at, bytes);
        }
        // Insert a token (the most common edit: the grammars are made of them).
        _ => {
            let token = *rng.pick(TOKENS);
            let at = position(rng, buf);
            buf.splice(at..at, token.iter().copied());
        }
    }
}

/// Where to insert: half the time anywhere, otherwise right after a
/// separator, where a token starts a new header, parameter or list item.
fn position(rng: &mut Rng, buf: &[u8]) -> usize {
    if buf.is_empty() || rng.chance(2) {
        return rng.below(buf.len() + 1);
    }
    for _ in 0..8 {
        let i = rng.below(buf.len());
        if matches!(buf[i], b'\n' | b':' | b';' | b',' | b' ' | b'=' | b'<') {
            return i + 1;
        }
    }
    rng.below(buf.len() + 1)
}
