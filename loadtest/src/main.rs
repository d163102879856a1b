//! `dialtone-load`: load tools for a running node.
//!
//! - `create-users`: N `CreateUser` calls over C concurrent gRPC clients;
//!   prints the rate, latency percentiles and failures.
//! - `provision-csv`: creates the users of a SIPp users CSV (the format of
//!   the benchmark harness's `sipp/gen-users.sh`, see `docs/performance.md`),
//!   idempotently: the provisioning hook for the SIP benchmarks.
//! - `forward-csv`: gives the users of such a CSV a `busy` forwarding rule
//!   to the user K lines further down (`loadtest/forward-bench.sh`).
//! - `register-latency`, `hold-clients`, `notify-fanout`: SIP clients (see
//!   their modules).

mod fanout;
mod hold;
mod phone;
mod register;
mod seed;

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dialtone_api::auth::Bearer;
use dialtone_api::pb::provisioning_service_client::ProvisioningServiceClient;
use dialtone_api::pb::{CreateDomainRequest, CreateUserRequest, SetForwardingRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Code;

type Client = ProvisioningServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Parser)]
#[command(
    name = "dialtone-load",
    about = "Load tools for a running Dialtone node"
)]
struct Args {
    /// gRPC address of the node.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// API token (admin, or scoped to the domain used); default: none.
    #[arg(long, env = "DIALTONE_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create users as fast as possible and report the rate.
    CreateUsers {
        #[arg(long, default_value = "load.example.com")]
        domain: String,
        #[arg(long, default_value_t = 20_000)]
        users: usize,
        /// Concurrent clients (each with its own HTTP/2 connection).
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        /// Prefix of the generated user names (change it between runs).
        #[arg(long, default_value = "u")]
        prefix: String,
    },
    /// Write a large history straight into a data directory's event log
    /// (the node must not be running): one domain, N users, each with
    /// `events_per_user` events. For recovery and memory benchmarks.
    SeedLog {
        #[arg(long)]
        data_dir: std::path::PathBuf,
        #[arg(long, default_value = "seed.example.com")]
        domain: String,
        #[arg(long, default_value_t = 100_000)]
        users: usize,
        /// Events in each user's stream (UserCreated + updates).
        #[arg(long, default_value_t = 9)]
        events_per_user: usize,
    },
    /// REGISTER response times seen by a client, to the microsecond: UDP
    /// (or TLS) clients register the users of a SIPp users CSV (REGISTER,
    /// 401, REGISTER with credentials, 200) at a fixed rate. The users must
    /// exist (`provision-csv`). Does not use `--server`. Ends with a
    /// verdict (pass, clean) and a `summary k=v ...` line.
    RegisterLatency {
        /// The node's SIP address (UDP; with --tls its SIP TLS address).
        #[arg(long)]
        target: std::net::SocketAddr,
        /// Register over TLS: each client opens one connection and reuses
        /// it for all its registrations (as phones do). No kernel receive
        /// timestamps then: the "on the wire" figures are empty.
        #[arg(long)]
        tls: bool,
        /// PEM certificates to trust for --tls (the node's, when
        /// self-signed) [default: the system's roots].
        #[arg(long, requires = "tls")]
        tls_ca: Option<std::path::PathBuf>,
        #[arg(long)]
        domain: String,
        /// Users CSV (`user;password...`, first line skipped).
        #[arg(long)]
        csv: std::path::PathBuf,
        /// Registrations started per second.
        #[arg(long, default_value_t = 8_000)]
        rate: u32,
        #[arg(long, default_value_t = 20)]
        seconds: u32,
        /// Concurrent UDP clients (each one registration at a time).
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Answer the MD5 challenge (as SIPp does) instead of SHA-256.
        #[arg(long)]
        md5: bool,
        /// The run passes with fewer failed registrations than this, in %
        /// of those started.
        #[arg(long, default_value_t = 1.0)]
        fail_pct: f64,
        /// ... and an achieved rate of at least this fraction of --rate.
        #[arg(long, default_value_t = 0.95)]
        min_rate_frac: f64,
        /// A passing run is clean when the p99 of the whole registration is
        /// at most this (ms).
        #[arg(long, default_value_t = 100.0)]
        clean_p99_ms: f64,
    },
    /// Registers N users, one phone each (a UDP socket or a WSS
    /// connection), and holds them with keep-alives; with --node-pid,
    /// records the node's memory (VmRSS, VmHWM) along the way. The users
    /// must exist (`provision-csv`). Does not use `--server`.
    HoldClients {
        #[arg(long, value_enum, default_value = "udp")]
        transport: phone::Kind,
        /// The node's SIP UDP address, or its WSS address.
        #[arg(long)]
        target: std::net::SocketAddr,
        #[arg(long)]
        domain: String,
        /// Users CSV (`user;password...`, first line skipped): client i is
        /// user i.
        #[arg(long)]
        csv: std::path::PathBuf,
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// PEM certificates to trust for WSS (the node's, when
        /// self-signed) [default: the system's roots].
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// Expires of each registration (refreshed at 80 % of it).
        #[arg(long, default_value_t = 600)]
        expires: u32,
        /// Seconds between two keep-alives of a client (STUN on UDP,
        /// WebSocket Ping on WSS); the default is inside 80-100 % of the
        /// 29 s Flow-Timer the node gives UDP flows (ADR 0016).
        #[arg(long, default_value_t = 25)]
        keepalive_secs: u64,
        /// How long every client is held after the last one registered.
        #[arg(long, default_value_t = 60)]
        hold_secs: u64,
        /// Loopback source addresses to spread clients over (127.1.x.y)
        /// [default: one per 200 clients, under the node's 256 connections
        /// per source].
        #[arg(long)]
        sources: Option<usize>,
        /// Clients connecting and registering at the same time.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// The node's process id: sample its VmRSS/VmHWM (same machine).
        #[arg(long)]
        node_pid: Option<u32>,
    },
    /// N phones (users 2..N+1 of the CSV) subscribe to the presence of the
    /// first user, whose presence then changes `changes` times; reports
    /// the time each change takes to reach each subscriber. The users must
    /// exist and the first must have no binding. Does not use `--server`.
    NotifyFanout {
        #[arg(long, value_enum, default_value = "udp")]
        transport: phone::Kind,
        /// The node's SIP UDP address (subscribers with --transport udp,
        /// and the watched user's phone always).
        #[arg(long)]
        target: std::net::SocketAddr,
        /// The node's WSS address, for --transport wss.
        #[arg(long)]
        wss_target: Option<std::net::SocketAddr>,
        #[arg(long)]
        domain: String,
        #[arg(long)]
        csv: std::path::PathBuf,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 20)]
        changes: usize,
        /// Milliseconds between two changes.
        #[arg(long, default_value_t = 1000)]
        spacing_ms: u64,
        /// Expires asked for each subscription (the node grants at most
        /// its --sip-subscribe-max-expires, 600 s by default).
        #[arg(long, default_value_t = 600)]
        expires: u32,
        /// Loopback source addresses to spread subscribers over [default:
        /// one per 25 subscribers, inside the node's SUBSCRIBE burst per
        /// source].
        #[arg(long)]
        sources: Option<usize>,
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long)]
        tls_ca: Option<std::path::PathBuf>,
        /// The p99 budget judged, from the triggering request's send.
        #[arg(long, default_value_t = 200)]
        budget_ms: u64,
    },
    /// Create the users of a SIPp users CSV (`user;password;callee`).
    ProvisionCsv {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        csv: std::path::PathBuf,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Set forwarding on busy for the users of a SIPp users CSV: the user
    /// on line i forwards to the user on line i + K (same domain, by
    /// username); users with no line i + K get no rule. Idempotent (sets
    /// the same rule again). The users must exist (`provision-csv`).
    ForwardCsv {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        csv: std::path::PathBuf,
        /// K: how many lines further down the busy target is.
        #[arg(long)]
        busy_to_offset: usize,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bearer = token(args.token.as_deref())?;
    match args.command {
        Command::CreateUsers {
            domain,
            users,
            concurrency,
            prefix,
        } => {
            let names: Vec<(String, String)> = (0..users)
                .map(|i| (format!("{prefix}{i:07}"), format!("password-{i:07}")))
                .collect();
            run(
                &args.server,
                bearer.clone(),
                &domain,
                names,
                concurrency,
                true,
            )
            .await
        }
        Command::SeedLog {
            data_dir,
            domain,
            users,
            events_per_user,
        } => seed::run(&data_dir, &domain, users, events_per_user).await,
        Command::RegisterLatency {
            target,
            tls,
            tls_ca,
            domain,
            csv,
            rate,
            seconds,
            clients,
            md5,
            fail_pct,
            min_rate_frac,
            clean_p99_ms,
        } => {
            let users = read_users_csv(&csv)?;
            let tls = if tls {
                let ca =
                    match &tls_ca {
                        Some(path) => Some(std::fs::read(path).with_context(|| {
                            format!("cannot read the TLS CA {}", path.display())
                        })?),
                        None => None,
                    };
                Some(register::Tls { ca })
            } else {
                None
            };
            register::run(register::Options {
                target,
                tls,
                domain,
                users,
                rate,
                seconds,
                uas: clients,
                md5,
                verdict: register::Verdict {
                    fail_pct,
                    min_rate_frac,
                    clean_p99_ms,
                },
            })
            .await
        }
        Command::HoldClients {
            transport,
            target,
            domain,
            csv,
            clients,
            tls_ca,
            expires,
            keepalive_secs,
            hold_secs,
            sources,
            concurrency,
            node_pid,
        } => {
            let tls = client_tls(transport, tls_ca.as_deref())?;
            hold::run(hold::Options {
                kind: transport,
                target,
                tls,
                domain,
                users: read_users_csv(&csv)?,
                clients,
                expires,
                keepalive: Duration::from_secs(keepalive_secs.max(1)),
                hold: Duration::from_secs(hold_secs),
                sources: sources.unwrap_or(clients.div_ceil(200)).max(1),
                concurrency,
                node_pid,
            })
            .await
        }
        Command::NotifyFanout {
            transport,
            target,
            wss_target,
            domain,
            csv,
            subscribers,
            changes,
            spacing_ms,
            expires,
            sources,
            concurrency,
            tls_ca,
            budget_ms,
        } => {
            let tls = client_tls(transport, tls_ca.as_deref())?;
            let subscriber_target = match transport {
                phone::Kind::Udp => target,
                phone::Kind::Wss => wss_target.context("--transport wss needs --wss-target")?,
            };
            fanout::run(fanout::Options {
                kind: transport,
                target,
                subscriber_target,
                tls,
                domain,
                users: read_users_csv(&csv)?,
                subscribers,
                changes,
                spacing: Duration::from_millis(spacing_ms),
                sources: sources.unwrap_or(subscribers.div_ceil(25)).max(1),
                concurrency,
                expires,
                budget: Duration::from_millis(budget_ms),
            })
            .await
        }
        Command::ProvisionCsv {
            domain,
            csv,
            concurrency,
        } => {
            let names = read_users_csv(&csv)?;
            run(
                &args.server,
                bearer.clone(),
                &domain,
                names,
                concurrency,
                false,
            )
            .await
        }
        Command::ForwardCsv {
            domain,
            csv,
            busy_to_offset,
            concurrency,
        } => {
            let users = read_users_csv(&csv)?;
            let rules = busy_rules(&users, busy_to_offset);
            anyhow::ensure!(
                !rules.is_empty(),
                "no user of {} has a line {busy_to_offset} further down",
                csv.display()
            );
            forward(&args.server, bearer.clone(), &domain, rules, concurrency).await
        }
    }
}

/// (user, busy target) for each user of `users` that has a user `offset`
/// places further down.
fn busy_rules(users: &[(String, String)], offset: usize) -> Vec<(String, String)> {
    if offset == 0 {
        return Vec::new();
    }
    users
        .iter()
        .zip(users.iter().skip(offset))
        .map(|((from, _), (to, _))| (from.clone(), to.clone()))
        .collect()
}

/// Sets each (user, target) busy rule over `concurrency` clients.
async fn forward(
    server: &str,
    token: Bearer,
    domain: &str,
    rules: Vec<(String, String)>,
    concurrency: usize,
) -> anyhow::Result<()> {
    let total = rules.len();
    let concurrency = concurrency.max(1);
    let mut chunks = vec![Vec::new(); concurrency];
    for (i, rule) in rules.into_iter().enumerate() {
        chunks[i % concurrency].push(rule);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut client = connect(server, token.clone()).await?;
        let domain = domain.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0usize;
            for (user, target) in chunk {
                let result = client
                    .set_forwarding(SetForwardingRequest {
                        user: format!("{user}@{domain}"),
                        busy: Some(target),
                        ..Default::default()
                    })
                    .await;
                if let Err(e) = result {
                    failed += 1;
                    if failed <= 3 {
                        eprintln!("set forwarding of {user} failed: {e}");
                    }
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for task in tasks {
        failed += task.await?;
    }
    println!(
        "set busy forwarding for {total} users in {domain} ({failed} failed) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    anyhow::ensure!(failed == 0, "{failed} rules failed");
    Ok(())
}

/// The TLS client configuration for WSS phones; `None` for UDP.
fn client_tls(
    kind: phone::Kind,
    ca: Option<&std::path::Path>,
) -> anyhow::Result<Option<std::sync::Arc<rustls::ClientConfig>>> {
    if kind == phone::Kind::Udp {
        return Ok(None);
    }
    let pem = match ca {
        Some(path) => Some(
            std::fs::read(path)
                .with_context(|| format!("cannot read the TLS CA {}", path.display()))?,
        ),
        None => None,
    };
    Ok(Some(phone::tls_config(pem.as_deref())?))
}

fn token(token: Option<&str>) -> anyhow::Result<Bearer> {
    Ok(match token {
        Some(token) => Bearer::new(token)?,
        None => Bearer::none(),
    })
}

async fn connect(server: &str, token: Bearer) -> anyhow::Result<Client> {
    let channel = Channel::from_shared(server.to_owned())?
        .connect()
        .await
        .with_context(|| format!("cannot connect to {server}"))?;
    Ok(ProvisioningServiceClient::with_interceptor(channel, token))
}

async fn run(
    server: &str,
    token: Bearer,
    domain: &str,
    users: Vec<(String, String)>,
    concurrency: usize,
    report: bool,
) -> anyhow::Result<()> {
    let mut client = connect(server, token.clone()).await?;
    match client
        .create_domain(CreateDomainRequest {
            name: domain.to_owned(),
            ..Default::default()
        })
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Code::AlreadyExists => {}
        Err(e) => anyhow::bail!("cannot create domain {domain}: {e}"),
    }
    let total = users.len();
    let concurrency = concurrency.max(1);
    let chunks: Vec<Vec<(String, String)>> = {
        let mut chunks = vec![Vec::new(); concurrency];
        for (i, user) in users.into_iter().enumerate() {
            chunks[i % concurrency].push(user);
        }
        chunks
    };
    let started = Instant::now();
    let mut tasks = Vec::new();
    for chunk in chunks {
        let mut client = connect(server, token.clone()).await?;
        let domain = domain.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(chunk.len());
            let (mut failed, mut existed) = (0usize, 0usize);
            for (username, password) in chunk {
                let t = Instant::now();
                let result = client
                    .create_user(CreateUserRequest {
                        domain: domain.clone(),
                        request_id: format!("load-{domain}-{username}"),
                        username,
                        password,
                        ..Default::default()
                    })
                    .await;
                latencies.push(t.elapsed());
                match result {
                    Ok(_) => {}
                    Err(e) if e.code() == Code::AlreadyExists => existed += 1,
                    Err(e) => {
                        failed += 1;
                        if failed <= 3 {
                            eprintln!("create failed: {e}");
                        }
                    }
                }
            }
            (latencies, failed, existed)
        }));
    }
    let mut latencies: Vec<Duration> = Vec::with_capacity(total);
    let (mut failed, mut existed) = (0, 0);
    for task in tasks {
        let (l, f, e) = task.await?;
        latencies.extend(l);
        failed += f;
        existed += e;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| percentile_ms(&latencies, p);
    let rate = total as f64 / elapsed.as_secs_f64();
    if report {
        println!(
            "create_users total={total} concurrency={concurrency} elapsed_s={:.2} rate_per_s={rate:.0} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} already_existed={existed} failed={failed}",
            elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(1.0)
        );
    } else {
        println!("provisioned {total} users in {domain} ({existed} existed already, {failed} failed) in {:.1} s", elapsed.as_secs_f64());
    }
    anyhow::ensure!(failed == 0, "{failed} creates failed");
    Ok(())
}

/// (user, password) pairs of a SIPp users CSV (the first line is SIPp's
/// `SEQUENTIAL`/`RANDOM` header).
fn read_users_csv(csv: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    let text =
        std::fs::read_to_string(csv).with_context(|| format!("cannot read {}", csv.display()))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(';');
            Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
        })
        .filter(|(user, _)| !user.is_empty())
        .collect())
}

/// The `p` quantile (nearest rank) of sorted latencies, in milliseconds; 0
/// for none.
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    nearest_rank(sorted, p).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// The nearest-rank `p` quantile (0 < p <= 1) of ascending `sorted`.
fn nearest_rank<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied()
}

#[cfg(test)]
mod tests {
    use super::busy_rules;

    #[test]
    fn busy_rules_point_k_lines_down() {
        let users: Vec<(String, String)> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|u| ((*u).to_owned(), format!("pw-{u}")))
            .collect();
        let pairs = |rules: Vec<(String, String)>| {
            rules
                .into_iter()
                .map(|(f, t)| format!("{f}->{t}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(pairs(busy_rules(&users, 2)), ["a->c", "b->d", "c->e"]);
        assert!(busy_rules(&users, 0).is_empty());
        assert!(busy_rules(&users, 5).is_empty());
    }
}
