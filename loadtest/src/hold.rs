//! `hold-clients`: many registered phones held open, the way real phones
//! sit on a registrar: one client = one user = one UDP socket or one WSS
//! connection, registered with digest (REGISTER → 401 → REGISTER with
//! credentials → 200; RFC 5626 outbound contact), then kept alive for the
//! hold time with the keep-alives of its transport (STUN Binding requests
//! on UDP, WebSocket Pings on WSS; see `phone.rs`), re-registering at 80 %
//! of its expiry if the hold outlasts it.
//!
//! A client fails when its registration fails, its connection drops, or a
//! keep-alive goes unanswered until the next one is due. With `--node-pid`
//! it records the node's VmRSS and VmHWM before connecting (the
//! provisioned baseline), once every client is registered, every 10 s of
//! the hold, and at its end (before any client closes): the figures of
//! `transport-memory.sh`.
//!
//! Clients are spread over `sources` loopback addresses (127.1.x.y), as
//! phones come from many addresses: the node limits connections (256) and
//! messages per source address. Connections and registrations are made at
//! most `concurrency` at a time, so that TLS handshakes queue in the
//! client rather than time out in the node.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

use crate::phone::{self, Incoming, Kind, Phone, Registration};

pub struct Options {
    pub kind: Kind,
    pub target: SocketAddr,
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub domain: String,
    pub users: Vec<(String, String)>,
    pub clients: usize,
    pub expires: u32,
    pub keepalive: Duration,
    pub hold: Duration,
    pub sources: usize,
    pub concurrency: usize,
    pub node_pid: Option<u32>,
}

/// What one client saw.
#[derive(Default)]
struct ClientReport {
    registered: bool,
    error: Option<String>,
    disconnected: Option<String>,
    keepalives_sent: u64,
    keepalives_answered: u64,
    keepalives_unanswered: u64,
    refreshes: u64,
}

const RESPONSE_WAIT: Duration = Duration::from_secs(10);

pub async fn run(o: Options) -> anyhow::Result<()> {
    anyhow::ensure!(
        o.users.len() >= o.clients,
        "{} clients need as many users; the CSV has {}",
        o.clients,
        o.users.len()
    );
    anyhow::ensure!(
        o.kind == Kind::Udp || o.tls.is_some(),
        "WSS needs a TLS configuration"
    );
    let nofile = phone::raise_nofile();
    anyhow::ensure!(
        nofile as usize > o.clients + 64,
        "open-file limit {nofile} is too low for {} clients (raise the hard limit: ulimit -Hn)",
        o.clients
    );
    println!(
        "hold-clients: transport={} target={} clients={} sources={} expires={}s keepalive={}s hold={}s concurrency={} nofile={nofile}",
        o.kind.as_str(),
        o.target,
        o.clients,
        o.sources,
        o.expires,
        o.keepalive.as_secs(),
        o.hold.as_secs(),
        o.concurrency
    );
    let sample = |phase: &str| {
        if let Some(pid) = o.node_pid {
            match phone::rss_kib(pid) {
                Ok((rss, hwm)) => {
                    println!("node_rss phase={phase} vmrss_kib={rss} vmhwm_kib={hwm}")
                }
                Err(e) => println!("node_rss phase={phase} error={e}"),
            }
        }
    };
    sample("baseline");

    let gate = Arc::new(Semaphore::new(o.concurrency.max(1)));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (registered_tx, mut registered_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(o.clients);
    for (i, (user, password)) in o.users.iter().take(o.clients).cloned().enumerate() {
        let gate = gate.clone();
        let mut stop = stop_rx.clone();
        let registered_tx = registered_tx.clone();
        let source = phone::source_ip(i, o.sources);
        let (kind, target, tls, domain) = (o.kind, o.target, o.tls.clone(), o.domain.clone());
        let (expires, keepalive) = (o.expires, o.keepalive);
        tasks.push(tokio::spawn(async move {
            let mut report = ClientReport::default();
            let mut reg = Registration::new(&user, &password, &domain);
            let permit = gate.acquire_owned().await;
            let setup = async {
                let mut phone = Phone::connect(kind, target, source, tls, false).await?;
                reg.run(&mut phone, expires, RESPONSE_WAIT, &mut |_| {})
                    .await?;
                anyhow::Ok(phone)
            };
            let setup = setup.await;
            drop(permit);
            let mut phone = match setup {
                Ok(p) => p,
                Err(e) => {
                    report.error = Some(format!("{user} from {source}: {e:#}"));
                    let _ = registered_tx.send(false);
                    return report;
                }
            };
            report.registered = true;
            let _ = registered_tx.send(true);
            // Real phones' keep-alives are not synchronised: start each
            // client's schedule at a random point of the interval.
            let mut next_keepalive = tokio::time::Instant::now()
                + keepalive.mul_f64(rand::random::<f64>().max(0.01));
            let refresh_every = Duration::from_secs(u64::from(expires) * 4 / 5);
            let mut next_refresh = tokio::time::Instant::now() + refresh_every;
            let mut awaiting = false;
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    _ = tokio::time::sleep_until(next_keepalive) => {
                        if awaiting {
                            report.keepalives_unanswered += 1;
                        }
                        if let Err(e) = phone.send_keepalive().await {
                            report.disconnected = Some(format!("keep-alive not sent: {e}"));
                            break;
                        }
                        report.keepalives_sent += 1;
                        awaiting = true;
                        next_keepalive += keepalive;
                    }
                    _ = tokio::time::sleep_until(next_refresh) => {
                        let mut answer_later = Vec::new();
                        if let Err(e) = reg.run(&mut phone, expires, RESPONSE_WAIT, &mut |m| answer_later.push(m)).await {
                            report.error = Some(format!("{user}: refresh failed: {e:#}"));
                        }
                        report.refreshes += 1;
                        next_refresh += refresh_every;
                        // A keep-alive answer that came during the refresh
                        // was skipped: do not count its keep-alive lost.
                        awaiting = false;
                        for m in answer_later {
                            let _ = phone.send(&m.response(200, "OK")).await;
                        }
                    }
                    incoming = phone.recv() => match incoming {
                        Incoming::KeepAliveAnswer => {
                            if awaiting {
                                report.keepalives_answered += 1;
                            }
                            awaiting = false;
                        }
                        // Nothing should come (no calls, no subscriptions);
                        // answer a request as a phone would.
                        Incoming::Sip(m) => {
                            if m.code().is_none() && !m.is_request("ACK") {
                                let _ = phone.send(&m.response(200, "OK")).await;
                            }
                        }
                        Incoming::Closed(why) => {
                            report.disconnected = Some(why);
                            break;
                        }
                    }
                }
            }
            // Held until every client has been looked at: the node's
            // memory is sampled before anyone closes.
            let _ = stop.wait_for(|s| *s).await;
            drop(phone);
            report
        }));
    }
    drop(registered_tx);
    let (mut ok, mut failed) = (0usize, 0usize);
    while let Some(r) = registered_rx.recv().await {
        if r {
            ok += 1;
        } else {
            failed += 1;
        }
        let done = ok + failed;
        if done % 1000 == 0 || done == o.clients {
            eprintln!(
                "  {done}/{} set up ({failed} failed) after {:.1} s",
                o.clients,
                started.elapsed().as_secs_f64()
            );
        }
        if done == o.clients {
            break;
        }
    }
    let setup_secs = started.elapsed().as_secs_f64();
    println!(
        "registered ok={ok} failed={failed} in {setup_secs:.1} s ({:.0}/s)",
        ok as f64 / setup_secs
    );
    // Let in-flight appends, snapshots and the like settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sample("registered");
    let hold_started = tokio::time::Instant::now();
    let hold_end = hold_started + o.hold;
    while tokio::time::Instant::now() < hold_end {
        let next = (tokio::time::Instant::now() + Duration::from_secs(10)).min(hold_end);
        tokio::time::sleep_until(next).await;
        if next < hold_end {
            sample(&format!("hold_{}s", hold_started.elapsed().as_secs()));
        }
    }
    sample("held");
    let _ = stop_tx.send(true);
    let mut all = ClientReport::default();
    let (mut errors, mut disconnects) = (Vec::new(), Vec::new());
    let (mut unanswered_clients, mut failures) = (0usize, 0usize);
    for t in tasks {
        let r = t.await?;
        all.keepalives_sent += r.keepalives_sent;
        all.keepalives_answered += r.keepalives_answered;
        all.keepalives_unanswered += r.keepalives_unanswered;
        all.refreshes += r.refreshes;
        if r.keepalives_unanswered > 0 {
            unanswered_clients += 1;
        }
        if !r.registered
            || r.error.is_some()
            || r.disconnected.is_some()
            || r.keepalives_unanswered > 0
        {
            failures += 1;
        }
        errors.extend(r.error);
        disconnects.extend(r.disconnected);
    }
    println!(
        "held {} s: keepalives sent={} answered={} unanswered={} (clients with one unanswered: {unanswered_clients}) refreshes={} disconnects={} errors={}",
        o.hold.as_secs(),
        all.keepalives_sent,
        all.keepalives_answered,
        all.keepalives_unanswered,
        all.refreshes,
        disconnects.len(),
        errors.len()
    );
    for e in errors.iter().take(5) {
        eprintln!("error: {e}");
    }
    for d in disconnects.iter().take(5) {
        eprintln!("disconnect: {d}");
    }
    println!(
        "result: {} ({failures} failed clients of {})",
        if failures == 0 { "PASS" } else { "FAIL" },
        o.clients
    );
    anyhow::ensure!(failures == 0, "{failures} clients failed");
    Ok(())
}
