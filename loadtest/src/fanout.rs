//! `notify-fanout`: how long one presence change takes to reach many
//! subscribers (the target: 1,000 subscribers of one user within 200 ms
//! p99).
//!
//! The first user of the CSV is the watched one (it must have no binding
//! at the start: offline); each of the next `subscribers` users is one
//! phone — its own UDP socket or WSS connection — that subscribes to the
//! watched user's `presence` (SUBSCRIBE → 401 → SUBSCRIBE with credentials
//! → 200, then the initial NOTIFY, which must say `closed`) and answers
//! every NOTIFY with 200 at once. Then the watched user's presence is
//! changed `changes` times, `spacing` apart, from its own UDP phone: a
//! registration makes it `open`, an unregistration (Expires 0) `closed`
//! (ADR 0014: presence is what the log records, a function of bindings).
//!
//! For each (change, subscriber) pair the NOTIFY of the change is the
//! first NOTIFY the subscriber receives after the change's triggering
//! request was sent, before the next change's, whose PIDF `<basic>` shows
//! the new state. Its latency is measured
//! - from the send of the triggering request: the REGISTER with
//!   credentials (the 401 round trip before it is not counted) — what a
//!   user sees, including the registration's durable write;
//! - from the arrival of that REGISTER's 200 OK at the watched phone —
//!   the fan-out alone (can be negative: the NOTIFYs and the 200 leave
//!   after the same commit);
//! - on UDP also "on the wire": from the send to the kernel's receive
//!   timestamp of the NOTIFY (SO_TIMESTAMPNS), which leaves out the time
//!   the NOTIFY waited for this client's own tasks to run (the client
//!   shares the machine's cores with the node).
//!
//! A pair with no such NOTIFY is missing (a failure); a NOTIFY in the
//! window showing the old state is counted as stale.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use tokio::sync::{watch, Semaphore};

use crate::phone::{self, Incoming, Kind, Msg, Phone, Registration};

pub struct Options {
    pub kind: Kind,
    /// The node's SIP UDP address (the watched user's phone).
    pub target: SocketAddr,
    /// Where subscribers connect: the UDP address, or the WSS one.
    pub subscriber_target: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub domain: String,
    pub users: Vec<(String, String)>,
    pub subscribers: usize,
    pub changes: usize,
    pub spacing: Duration,
    pub sources: usize,
    pub concurrency: usize,
    pub expires: u32,
    pub budget: Duration,
}

/// One NOTIFY a subscriber received.
struct Notice {
    at: Instant,
    wire_at: Option<SystemTime>,
    basic: String,
}

/// One change of the watched user's presence.
struct Change {
    expected: &'static str,
    sent: Instant,
    sent_system: SystemTime,
    answered: Instant,
}

const RESPONSE_WAIT: Duration = Duration::from_secs(10);

/// `<basic>` of a PIDF body.
fn basic(m: &Msg) -> String {
    m.body()
        .split("<basic>")
        .nth(1)
        .and_then(|r| r.split("</basic>").next())
        .unwrap_or("?")
        .to_owned()
}

struct Subscription {
    watched: String,
    user: String,
    password: String,
    domain: String,
    call_id: String,
    from_tag: String,
    to_tag: Option<String>,
    cseq: u32,
    expires: u32,
}

impl Subscription {
    fn text(&mut self, phone: &Phone, authorization: Option<&str>) -> String {
        self.cseq += 1;
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        format!(
            "SUBSCRIBE sip:{w} SIP/2.0\r\n{via}\r\nMax-Forwards: 70\r\n\
             From: <sip:{u}@{d}>;tag={ft}\r\nTo: <sip:{w}>{to_tag}\r\n\
             Call-ID: {cid}\r\nCSeq: {cseq} SUBSCRIBE\r\nContact: <{contact}>\r\n\
             Event: presence\r\nAccept: application/pidf+xml\r\nExpires: {e}\r\n{auth}\
             User-Agent: dialtone-load\r\nContent-Length: 0\r\n\r\n",
            w = self.watched,
            via = phone.via(),
            u = self.user,
            d = self.domain,
            ft = self.from_tag,
            cid = self.call_id,
            cseq = self.cseq,
            contact = phone.contact_uri(&self.user),
            e = self.expires,
        )
    }

    /// SUBSCRIBE → 401 → SUBSCRIBE with credentials → 200, then the
    /// initial NOTIFY (answered 200): its `<basic>`.
    async fn run(&mut self, phone: &mut Phone) -> anyhow::Result<String> {
        let mut early = Vec::new();
        let first = self.text(phone, None);
        phone.send(&first).await?;
        let challenge = phone
            .final_response(RESPONSE_WAIT, &mut |m| early.push(m))
            .await?;
        anyhow::ensure!(
            challenge.code() == Some(401),
            "SUBSCRIBE got {}",
            challenge.text.lines().next().unwrap_or_default()
        );
        let ch = challenge.challenge().context("no usable challenge")?;
        let uri = format!("sip:{}", self.watched);
        let (user, password) = (self.user.clone(), self.password.clone());
        let auth = phone.authorization(&ch, &user, &password, "SUBSCRIBE", &uri);
        let second = self.text(phone, Some(&auth));
        phone.send(&second).await?;
        let ok = phone
            .final_response(RESPONSE_WAIT, &mut |m| early.push(m))
            .await?;
        anyhow::ensure!(
            ok.code() == Some(200),
            "authenticated SUBSCRIBE got {}",
            ok.text.lines().next().unwrap_or_default()
        );
        self.to_tag = ok.tag_of("To");
        let notify = match early.into_iter().find(|m| m.is_request("NOTIFY")) {
            Some(n) => n,
            None => loop {
                match tokio::time::timeout(RESPONSE_WAIT, phone.recv()).await {
                    Err(_) => anyhow::bail!("no initial NOTIFY"),
                    Ok(Incoming::Sip(m)) if m.is_request("NOTIFY") => break m,
                    Ok(Incoming::Sip(_) | Incoming::KeepAliveAnswer) => {}
                    Ok(Incoming::Closed(why)) => anyhow::bail!("connection lost: {why}"),
                }
            },
        };
        phone.send(&notify.response(200, "OK")).await?;
        Ok(basic(&notify))
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct SubscriberReport {
    error: Option<String>,
    disconnected: Option<String>,
    notices: Vec<Notice>,
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.users.len() > o.subscribers,
        "{} subscribers and the watched user need {} users; the CSV has {}",
        o.subscribers,
        o.subscribers + 1,
        o.users.len()
    );
    anyhow::ensure!(
        o.kind == Kind::Udp || o.tls.is_some(),
        "WSS needs a TLS configuration"
    );
    let run_time = o.spacing.mul_f64(o.changes as f64) + Duration::from_secs(30);
    anyhow::ensure!(
        Duration::from_secs(u64::from(o.expires)) > run_time,
        "subscriptions of {} s would expire during the run (~{} s); ask for more, and raise the node's --sip-subscribe-max-expires",
        o.expires,
        run_time.as_secs()
    );
    let nofile = phone::raise_nofile();
    let (watched_user, watched_password) = o.users[0].clone();
    let watched = format!("{watched_user}@{}", o.domain);
    println!(
        "notify-fanout: transport={} target={} watched={watched} subscribers={} changes={} spacing={} ms sources={} nofile={nofile}",
        o.kind.as_str(),
        o.target,
        o.subscribers,
        o.changes,
        o.spacing.as_millis(),
        o.sources
    );

    let gate = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<Result<(), String>>();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(o.subscribers);
    for (i, (user, password)) in o
        .users
        .iter()
        .skip(1)
        .take(o.subscribers)
        .cloned()
        .enumerate()
    {
        let gate = gate.clone();
        let mut stop = stop_rx.clone();
        let ready_tx = ready_tx.clone();
        let source = phone::source_ip(i, o.sources);
        let (kind, target, tls) = (o.kind, o.subscriber_target, o.tls.clone());
        let mut sub = Subscription {
            watched: watched.clone(),
            user,
            password,
            domain: o.domain.clone(),
            call_id: format!("{:016x}@dialtone-load-sub", phone::rand_u64()),
            from_tag: format!("{:08x}", rand::random::<u32>()),
            to_tag: None,
            cseq: 0,
            expires: o.expires,
        };
        tasks.push(tokio::spawn(async move {
            let mut report = SubscriberReport::default();
            let permit = gate.acquire_owned().await;
            let setup = async {
                let mut phone = Phone::connect(kind, target, source, tls, true).await?;
                let initial = sub.run(&mut phone).await?;
                anyhow::ensure!(
                    initial == "closed",
                    "the initial NOTIFY says {initial}: the watched user must start offline"
                );
                anyhow::Ok(phone)
            };
            let setup = setup.await;
            drop(permit);
            let mut phone = match setup {
                Ok(p) => p,
                Err(e) => {
                    let e = format!("{} from {source}: {e:#}", sub.user);
                    report.error = Some(e.clone());
                    let _ = ready_tx.send(Err(e));
                    return report;
                }
            };
            let _ = ready_tx.send(Ok(()));
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    incoming = phone.recv() => match incoming {
                        Incoming::Sip(m) if m.is_request("NOTIFY") => {
                            // Answered first: a late 200 makes the node
                            // retransmit, and hold the next NOTIFY back.
                            if let Err(e) = phone.send(&m.response(200, "OK")).await {
                                report.disconnected = Some(e.to_string());
                                break;
                            }
                            report.notices.push(Notice {
                                at: m.at,
                                wire_at: m.wire_at,
                                basic: basic(&m),
                            });
                        }
                        Incoming::Sip(m) => {
                            if m.code().is_none() && !m.is_request("ACK") {
                                let _ = phone.send(&m.response(200, "OK")).await;
                            }
                        }
                        Incoming::KeepAliveAnswer => {}
                        Incoming::Closed(why) => {
                            report.disconnected = Some(why);
                            break;
                        }
                    }
                }
            }
            report
        }));
    }
    drop(ready_tx);
    let (mut ok, mut failed) = (0usize, 0usize);
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                if failed < 5 {
                    eprintln!("subscription failed: {e}");
                }
                failed += 1;
            }
        }
        if ok + failed == o.subscribers {
            break;
        }
    }
    println!(
        "subscribed ok={ok} failed={failed} in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The watched user's phone, on 127.0.0.1.
    let mut target_phone = Phone::udp(o.target, IpAddr::V4(Ipv4Addr::LOCALHOST), false).await?;
    let mut reg = Registration::new(&watched_user, &watched_password, &o.domain);
    let mut changes = Vec::with_capacity(o.changes);
    let first_change = tokio::time::Instant::now();
    for k in 0..o.changes {
        tokio::time::sleep_until(first_change + o.spacing.mul_f64(k as f64)).await;
        let (expected, expires) = if k % 2 == 0 {
            ("open", 600)
        } else {
            ("closed", 0)
        };
        let done = reg
            .run(&mut target_phone, expires, RESPONSE_WAIT, &mut |_| {})
            .await
            .with_context(|| format!("change {k}: the watched user's REGISTER"))?;
        changes.push(Change {
            expected,
            sent: done.sent,
            sent_system: done.sent_system,
            answered: done.answered,
        });
    }
    // Time for the last change's NOTIFYs (and more: a late one is
    // "missing" only if it did not come in this long).
    tokio::time::sleep(o.spacing.max(Duration::from_secs(2))).await;
    let _ = stop_tx.send(true);

    let mut from_send = Vec::new();
    let mut from_ok = Vec::new();
    let mut wire = Vec::new();
    let mut last_per_change = vec![0.0f64; changes.len()];
    let (mut missing, mut stale, mut disconnects, mut extra) = (0usize, 0usize, 0usize, 0usize);
    let mut subscribed = 0usize;
    for t in tasks {
        let r = t.await?;
        if r.error.is_some() {
            continue;
        }
        subscribed += 1;
        if let Some(why) = &r.disconnected {
            disconnects += 1;
            if disconnects <= 3 {
                eprintln!("disconnected: {why}");
            }
        }
        for (k, c) in changes.iter().enumerate() {
            let window_end = changes.get(k + 1).map(|n| n.sent);
            let in_window: Vec<&Notice> = r
                .notices
                .iter()
                .filter(|n| n.at >= c.sent && window_end.is_none_or(|e| n.at < e))
                .collect();
            match in_window.iter().position(|n| n.basic == c.expected) {
                Some(i) => {
                    let n = in_window[i];
                    stale += i;
                    extra += in_window.len() - i - 1;
                    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
                    let after_send = ms(n.at - c.sent);
                    from_send.push(after_send);
                    from_ok.push(if n.at >= c.answered {
                        ms(n.at - c.answered)
                    } else {
                        -ms(c.answered - n.at)
                    });
                    if let Some(w) = n.wire_at.and_then(|w| w.duration_since(c.sent_system).ok()) {
                        wire.push(ms(w));
                    }
                    last_per_change[k] = last_per_change[k].max(after_send);
                }
                None => {
                    missing += 1;
                    stale += in_window.len();
                }
            }
        }
    }
    let pairs = subscribed * changes.len();
    println!(
        "pairs (change, subscriber)={pairs} notified={} missing={missing} stale={stale} extra={extra} disconnects={disconnects}",
        from_send.len()
    );
    println!(
        "from the triggering REGISTER's send: {}",
        summary(&mut from_send)
    );
    println!(
        "from its 200 OK at the watched phone: {}",
        summary(&mut from_ok)
    );
    if o.kind == Kind::Udp {
        println!(
            "on the wire (kernel timestamp), from the send: {}",
            summary(&mut wire)
        );
    }
    println!(
        "last NOTIFY of each change, from the send: {}",
        summary(&mut last_per_change)
    );
    let p99 = percentile(&from_send, 0.99);
    let budget_ms = o.budget.as_secs_f64() * 1000.0;
    let pass = failed == 0 && missing == 0 && disconnects == 0 && p99 <= budget_ms;
    println!(
        "result: {} (p99 from the send {p99:.1} ms, budget {budget_ms:.0} ms; {failed} subscriptions failed, {missing} NOTIFYs missing, {disconnects} disconnects)",
        if pass { "PASS" } else { "FAIL" }
    );
    anyhow::ensure!(pass, "the fan-out missed its target");
    Ok(())
}

/// The `p` quantile (nearest rank) of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    crate::nearest_rank(sorted, p).unwrap_or(f64::NAN)
}

fn summary(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "no samples".to_owned();
    }
    values.sort_unstable_by(f64::total_cmp);
    let at = |p: f64| percentile(values, p);
    format!(
        "n={} min {:.2} ms  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        values.len(),
        values[0],
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    )
}
