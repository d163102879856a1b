//! `register-latency`: REGISTER response times as a client sees them, to the
//! microsecond (SIPp's clock here advances in steps of 4 ms, too coarse for
//! a 5 ms target; docs/performance.md).
//!
//! `uas` UDP clients share the users of a SIPp users CSV and together start
//! `rate` registrations per second on a fixed schedule (open loop: a slow
//! answer does not delay the next registration of the other clients, and the
//! whole-registration time is counted from the scheduled start, so a client
//! that falls behind shows it instead of hiding it). Each registration is
//! REGISTER → 401 → REGISTER with credentials → 200, each response timed
//! from its request's send, twice: when this client's task saw it, and "on
//! the wire", to the kernel's receive timestamp of the response
//! (SO_TIMESTAMPNS). The client shares the machine's cores with the node;
//! the wire figure leaves out the time the response waited for the client
//! to be scheduled, which is not the server's (a capture on `lo` gives the
//! same, see docs/performance.md).
//!
//! For a throughput ladder each run ends with a verdict, by the rules of the
//! SIPp harness (docs/performance.md): the step *passes* when fewer than
//! `fail_pct` % of the registrations started failed (an error response, a
//! broken connection or no answer within 5 s) and the achieved rate is at
//! least `min_rate_frac` x the offered rate; it is *clean* when, besides, the
//! p99 of the whole registration is at most `clean_p99_ms`. The achieved
//! rate is the harness's too: successful registrations / the window in
//! which the load was carried (the time by which 99 % of the registrations
//! had ended, minus the mean registration time, divided by 0.99, and at
//! least the step's length), so a few stragglers do not sink a step but a
//! server that falls behind does. The last line, `summary k=v ...`, is for
//! scripts.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use dialtone_sip::auth::digest::Algorithm;
use dialtone_sip::test_ua::{Register, TestUa};

/// What one client measured.
#[derive(Default)]
struct Measured {
    challenge: Vec<Duration>,
    authenticated: Vec<Duration>,
    challenge_wire: Vec<Duration>,
    authenticated_wire: Vec<Duration>,
    whole: Vec<Duration>,
    /// When each registration ended (successfully or not), from the start.
    ended: Vec<Duration>,
    /// No answer within the test UA's timeout.
    timed_out: u64,
    /// A response other than the expected 401 then 200.
    rejected: u64,
    /// The connection broke, or a response could not be used.
    broken: u64,
    late_starts: u64,
}

impl Measured {
    fn failed(&self) -> u64 {
        self.timed_out + self.rejected + self.broken
    }
}

/// The pass and clean rules of a step (see the module's doc).
#[derive(Clone, Copy)]
pub struct Verdict {
    pub fail_pct: f64,
    pub min_rate_frac: f64,
    pub clean_p99_ms: f64,
}

/// Registering over TLS instead of UDP.
#[derive(Clone)]
pub struct Tls {
    /// PEM certificates to trust (`None`: the system's roots).
    pub ca: Option<Vec<u8>>,
}

pub struct Options {
    pub target: SocketAddr,
    /// `Some`: over TLS, one reused connection per client.
    pub tls: Option<Tls>,
    pub domain: String,
    pub users: Vec<(String, String)>,
    pub rate: u32,
    pub seconds: u32,
    pub uas: usize,
    pub md5: bool,
    pub verdict: Verdict,
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    anyhow::ensure!(!options.users.is_empty(), "no users in the CSV");
    anyhow::ensure!(
        options.rate > 0 && options.uas > 0,
        "rate and uas must be > 0"
    );
    let total = u64::from(options.rate) * u64::from(options.seconds);
    let interval = Duration::from_secs_f64(1.0 / f64::from(options.rate));
    // Every client connects (a TLS handshake each) before the schedule
    // starts, so that the handshakes neither delay the first registrations
    // nor count as their time; one after the other, as phones coming up
    // would, and because Kamailio 5.6 with OpenSSL 3 (the comparison's
    // other server) has crashed in a TLS accept during a burst of
    // concurrent handshakes (docs/performance.md).
    let mut uas = Vec::with_capacity(options.uas);
    for _ in 0..options.uas {
        uas.push(connect(options.target, options.tls.as_ref()).await?);
    }
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::with_capacity(options.uas);
    for (client, mut ua) in uas.into_iter().enumerate() {
        let tls = options.tls.clone();
        let users = options.users.clone();
        let domain = options.domain.clone();
        let uas = options.uas as u64;
        let md5 = options.md5;
        tasks.push(tokio::spawn(async move {
            let mut measured = Measured::default();
            let mut n = client as u64;
            while n < total {
                let scheduled = start + interval.mul_f64(n as f64);
                if tokio::time::Instant::now() > scheduled + Duration::from_millis(1) {
                    measured.late_starts += 1;
                }
                tokio::time::sleep_until(scheduled).await;
                let (user, password) = &users[(n as usize) % users.len()];
                let mut register = Register::new(user, &domain)
                    .password(password)
                    .contact(&format!("sip:{user}@127.0.0.1:9"))
                    .expires(3600);
                if md5 {
                    register = register.algorithm(Algorithm::Md5);
                }
                let sent = Instant::now();
                let mut challenge_wire = None;
                let outcome = async {
                    let challenge = ua.register_once(&register).await?;
                    let challenged = Instant::now();
                    challenge_wire = ua.wire_time();
                    anyhow::ensure!(
                        challenge.code == 401,
                        "got {} to the first REGISTER",
                        challenge.code
                    );
                    let done = ua.answer(&register, &challenge).await?;
                    anyhow::ensure!(
                        done.code == 200,
                        "got {} to the authenticated REGISTER",
                        done.code
                    );
                    Ok((challenged, Instant::now()))
                }
                .await;
                match outcome {
                    Ok((challenged, done)) => {
                        measured.challenge.push(challenged - sent);
                        measured.authenticated.push(done - challenged);
                        if let (Some(c), Some(a)) = (challenge_wire, ua.wire_time()) {
                            measured.challenge_wire.push(c);
                            measured.authenticated_wire.push(a);
                        }
                        measured.whole.push(done - scheduled.into_std().min(sent));
                        measured.ended.push(done - start.into_std());
                    }
                    Err(e) => {
                        measured.ended.push(start.elapsed());
                        if measured.failed() < 3 {
                            eprintln!("client {client}: registration of {user} failed: {e}");
                        }
                        match e.downcast_ref::<dialtone_sip::Error>() {
                            Some(dialtone_sip::Error::Timeout) => measured.timed_out += 1,
                            Some(_) => measured.broken += 1,
                            None => measured.rejected += 1,
                        }
                        // A lost answer may still arrive: start afresh.
                        if let Ok(fresh) = connect(ua.server(), tls.as_ref()).await {
                            ua = fresh;
                        }
                    }
                }
                n += uas;
            }
            measured
        }));
    }
    let mut all = Measured::default();
    for task in tasks {
        let m = task.await.context("a client task failed")?;
        all.challenge.extend(m.challenge);
        all.authenticated.extend(m.authenticated);
        all.challenge_wire.extend(m.challenge_wire);
        all.authenticated_wire.extend(m.authenticated_wire);
        all.whole.extend(m.whole);
        all.ended.extend(m.ended);
        all.timed_out += m.timed_out;
        all.rejected += m.rejected;
        all.broken += m.broken;
        all.late_starts += m.late_starts;
    }
    let ok = all.whole.len() as u64;
    let failed = all.failed();
    // The mean time a registration took from its first REGISTER's send (as
    // SIPp's call length), not from its scheduled start: a backlog must
    // lengthen the window, not be subtracted from it.
    let served: Duration = all.challenge.iter().chain(&all.authenticated).sum();
    let mean_served = served.as_secs_f64() / (all.whole.len().max(1) as f64);
    let window = carried_window(&mut all.ended, mean_served, options.seconds);
    let achieved = ok as f64 / window;
    let failed_pct = if total > 0 {
        100.0 * failed as f64 / total as f64
    } else {
        0.0
    };
    let transport = if options.tls.is_some() { "TLS" } else { "UDP" };
    println!(
        "register-latency: target={} transport={transport} rate={}/s seconds={} clients={} registrations \
         attempted={total} ok={ok} failed={failed} (timed out {}, rejected {}, connection broken {}) \
         achieved={achieved:.0}/s over {window:.2} s late_starts={}",
        options.target,
        options.rate,
        options.seconds,
        options.uas,
        all.timed_out,
        all.rejected,
        all.broken,
        all.late_starts
    );
    let mut every = [&all.challenge[..], &all.authenticated[..]].concat();
    let mut every_wire = [&all.challenge_wire[..], &all.authenticated_wire[..]].concat();
    for (label, values) in [
        ("challenge (REGISTER -> 401)", &mut all.challenge),
        ("authenticated (REGISTER -> 200)", &mut all.authenticated),
        ("every REGISTER", &mut every),
        (
            "on the wire: challenge (REGISTER -> 401)",
            &mut all.challenge_wire,
        ),
        (
            "on the wire: authenticated (REGISTER -> 200)",
            &mut all.authenticated_wire,
        ),
        ("on the wire: every REGISTER", &mut every_wire),
        (
            "whole registration, from its scheduled start",
            &mut all.whole,
        ),
    ] {
        println!("{label}: {}", summary(values));
    }
    // `whole` is sorted now (summary sorts in place).
    let at = |p: f64| crate::percentile_ms(&all.whole, p);
    let (p50, p90, p99, p999, max) = (at(0.5), at(0.9), at(0.99), at(0.999), at(1.0));
    let verdict = options.verdict;
    let pass = total > 0
        && failed_pct < verdict.fail_pct
        && achieved >= verdict.min_rate_frac * f64::from(options.rate);
    let clean = pass && ok > 0 && p99 <= verdict.clean_p99_ms;
    let yes_no = |b: bool| if b { "yes" } else { "no" };
    println!(
        "summary transport={transport} offered_per_s={} seconds={} clients={} attempted={total} ok={ok} \
         failed={failed} timed_out={} rejected={} broken={} failed_pct={failed_pct:.3} \
         achieved_per_s={achieved:.1} window_s={window:.3} late_starts={} whole_p50_ms={p50:.3} \
         whole_p90_ms={p90:.3} whole_p99_ms={p99:.3} whole_p999_ms={p999:.3} whole_max_ms={max:.3} \
         pass={} clean={}",
        options.rate,
        options.seconds,
        options.uas,
        all.timed_out,
        all.rejected,
        all.broken,
        all.late_starts,
        yes_no(pass),
        yes_no(clean)
    );
    Ok(())
}

/// The window in which the load was carried, in seconds (the SIPp harness's
/// definition, see the module's doc): when 99 % of the registrations had
/// ended, minus the mean time one took (`mean_served`, seconds), divided by
/// 0.99; at least `seconds`. Sorts `ended`.
fn carried_window(ended: &mut [Duration], mean_served: f64, seconds: u32) -> f64 {
    let floor = f64::from(seconds).max(1e-3);
    if ended.is_empty() {
        return floor;
    }
    ended.sort_unstable();
    let i = ((ended.len() as f64 * 0.99).ceil() as usize).clamp(1, ended.len()) - 1;
    ((ended[i].as_secs_f64() - mean_served) / 0.99).max(floor)
}

/// A client: UDP with kernel receive timestamps, or one TLS connection.
async fn connect(target: SocketAddr, tls: Option<&Tls>) -> anyhow::Result<TestUa> {
    match tls {
        Some(tls) => TestUa::tls(target, tls.ca.as_deref())
            .await
            .context("open a TLS client"),
        None => {
            let mut ua = TestUa::udp(target).await.context("open a UDP client")?;
            ua.kernel_timestamps()
                .context("turn on kernel receive timestamps")?;
            Ok(ua)
        }
    }
}

fn summary(values: &mut [Duration]) -> String {
    if values.is_empty() {
        return "no samples".to_owned();
    }
    values.sort_unstable();
    let at = |p: f64| crate::percentile_ms(values, p);
    format!(
        "n={} p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
        values.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        at(1.0)
    )
}
