//! The short soak: `loadtest/soak.sh` in the test suite, for
//! [`SECONDS`] s against debug builds, at rates a debug node handles with
//! room to spare. About 100 s in all (setup, load, then 40 s without load).
//!
//! The script does what the 10-minute release soak does (a fresh node,
//! registrations and calls together from SIPp, memory and live objects
//! sampled, then 40 s without load) with this package's node
//! (`dialtone-under-test`, the `dialtone` program) and the debug
//! `dialtone-load` next to it in the target directory, which `scripts/test`
//! builds before `cargo test` (by hand: `cargo build -p dialtone-loadtest`).
//!
//! Rates: on the 2-core VM a debug node sustained 1,200 REGISTER/s plus 240
//! calls/s together without a failure (using ~155 % CPU), and lost 7 % of
//! the calls at 2,000 + 400; the test runs half of what it sustained, 600 +
//! 120. The test passes when the script's verdict is `pass` (failed
//! registrations and calls within SIPp's retransmission noise, 1 %; RSS
//! growth within the bound below) and, 40 s after the load, no dialogs or
//! calls are left.
//!
//! RSS: the growth is measured from the sample at [`WARM_UP`] s to the last
//! one under load, 15 s later. Not from a third of the way in, as the long
//! soak does: for the first ~34 s what the node keeps 32 s after it ends
//! (completed REGISTER transactions until Timer J, 64*T1 over UDP; ended
//! dialogs) is still piling up, which is growth by design (+25 % from 20 s
//! to 60 s in a trial, flat after 40 s). Past it, a debug node grew 2.3 to
//! 5.8 % in that window in five runs (allocator noise: the RSS 40 s after
//! the load was at times below the last sample under load). The bound is
//! [`MAX_GROWTH_PCT`] %, not the release soak's 5 %, because 15 s of a
//! debug build is too short and noisy a sample to hold to 5 %. What it
//! catches is a gross leak: 15 % of ~90 MB over the window's 9,000
//! registrations and 1,800 calls is about 1.2 KB each. Slow leaks are the
//! 10-minute release soak's job (docs/performance.md).
//!
//! Ports: SIP on 127.0.0.1:5850..5854, gRPC 5860, metrics 5861 (the script
//! uses fixed ports). No other test or load script uses these (soak.sh's
//! default is 5690, register-latency.sh's 5780), and they are below the
//! kernel's ephemeral range that `free_port()` and port 0 draw from.

use std::fs::File;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds of load.
const SECONDS: u32 = 55;
/// The RSS growth is measured from the first sample at or after this many
/// seconds: past the ~34 s that transactions and dialogs kept 32 s after
/// they end take to reach their steady number.
const WARM_UP: u32 = 40;
/// Seconds between samples.
const SAMPLE_SECS: u32 = 5;
/// REGISTER/s, from `USERS` phones re-registering.
const REG_RATE: u32 = 600;
/// Calls/s (1 s hold), from `USERS` callers to `USERS` callees.
const CPS: u32 = 120;
/// Users per set (phones, callers, callees).
const USERS: u32 = 200;
/// The script's base port (SIP); it also uses base+1..+4, +10, +11.
const PORT: u16 = 5850;
/// Largest RSS growth (%) between the warm sample and the last under load.
const MAX_GROWTH_PCT: u32 = 15;
/// The script runs about SECONDS + 50 s (provisioning, the last sample, 40 s
/// without load); past this it is stuck.
const TIMEOUT: Duration = Duration::from_secs(180);

#[test]
fn short_soak_passes_against_debug_builds() {
    let node = PathBuf::from(env!("CARGO_BIN_EXE_dialtone-under-test"));
    let load = load_binary(&node);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = tempfile::Builder::new()
        .prefix("dialtone-soak-short-")
        .tempdir()
        .unwrap();
    let console = out.path().join("console.txt");

    let started = Instant::now();
    let mut child = Command::new(root.join("loadtest/soak.sh"))
        .arg("--seconds")
        .arg(SECONDS.to_string())
        .arg("--reg-rate")
        .arg(REG_RATE.to_string())
        .arg("--cps")
        .arg(CPS.to_string())
        .arg("--users")
        .arg(USERS.to_string())
        .arg("--port")
        .arg(PORT.to_string())
        .arg("--max-growth-pct")
        .arg(MAX_GROWTH_PCT.to_string())
        .arg("--warm-up")
        .arg(WARM_UP.to_string())
        .arg("--sample-secs")
        .arg(SAMPLE_SECS.to_string())
        .arg("--node-bin")
        .arg(&node)
        .arg("--load-bin")
        .arg(&load)
        .arg("--out")
        .arg(out.path())
        .env("DIALTONE_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(File::create(&console).unwrap())
        .stderr(File::create(out.path().join("console.err")).unwrap())
        // Its own process group, so a timeout can stop the script together
        // with the node and the SIPp processes it started.
        .process_group(0)
        .spawn()
        .unwrap();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let group = format!("-{}", child.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let _ = child.wait();
            fail(out, &format!("soak.sh still running after {TIMEOUT:?}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();

    let text = std::fs::read_to_string(&console).unwrap();
    let summary = text.lines().find(|l| l.starts_with("soak ")).unwrap_or("");
    let after = text
        .lines()
        .find(|l| l.starts_with("after the load"))
        .unwrap_or("");
    // Printed past the harness's capture: the figures of every run show.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "short soak, {:.0} s: {summary}\n  {after}",
        elapsed.as_secs_f64()
    );
    if !status.success() || field(summary, "verdict") != Some("pass") {
        fail(out, &format!("soak.sh: {status}, verdict not pass"));
    }
    for (what, name) in [("dialogs", "dialogs"), ("calls", "calls_active")] {
        if field(after, name) != Some("0") {
            fail(out, &format!("{what} left 40 s after the load"));
        }
    }
}

/// `dialtone-load`, next to the node binary in the same target directory.
fn load_binary(node: &Path) -> PathBuf {
    let load = node.with_file_name(format!("dialtone-load{}", std::env::consts::EXE_SUFFIX));
    assert!(
        load.is_file(),
        "{} is missing: build it first with `cargo build -p dialtone-loadtest` \
         (scripts/test does)",
        load.display()
    );
    load
}

/// The value of `name=value` in a line of the script's output.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

/// Fails the test with the script's console output, keeping its directory
/// (node log, SIPp statistics and output) for a look.
fn fail(out: tempfile::TempDir, why: &str) -> ! {
    let dir = out.keep();
    let console = std::fs::read_to_string(dir.join("console.txt")).unwrap_or_default();
    let errors = std::fs::read_to_string(dir.join("console.err")).unwrap_or_default();
    panic!(
        "{why}\n--- soak.sh output:\n{console}--- stderr:\n{errors}--- files kept in {}",
        dir.display()
    );
}
