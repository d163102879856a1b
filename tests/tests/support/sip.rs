//! SIP test support: provisioning users for registration tests, reading a
//! user's registration and presence events, polling for a condition, and
//! running SIPp as an independent client.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use dialtone_api::pb::*;
use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use super::TestNode;

/// The SIP domain the registration tests use (also the digest realm).
pub const DOMAIN: &str = "example.test";
/// A password every provisioned test user gets unless told otherwise.
pub const PASSWORD: &str = "secret123";

/// Creates a domain.
pub async fn create_domain(node: &TestNode, name: &str) -> anyhow::Result<Domain> {
    Ok(node
        .provisioning()
        .await?
        .create_domain(CreateDomainRequest {
            name: name.into(),
            ..Default::default()
        })
        .await?
        .into_inner())
}

/// Creates one user (`max_contacts` 0 means the default).
pub async fn create_user(
    node: &TestNode,
    domain: &str,
    username: &str,
    password: &str,
    max_contacts: u32,
) -> anyhow::Result<User> {
    Ok(node
        .provisioning()
        .await?
        .create_user(CreateUserRequest {
            domain: domain.into(),
            username: username.into(),
            password: password.into(),
            max_contacts,
            ..Default::default()
        })
        .await
        .with_context(|| format!("creating {username}@{domain}"))?
        .into_inner())
}

/// Creates users `names` with `password`, `concurrency` at a time; returns
/// them in the order of `names`.
pub async fn create_users(
    node: &TestNode,
    domain: &str,
    names: &[String],
    password: &str,
    concurrency: usize,
) -> anyhow::Result<Vec<User>> {
    let client = node.provisioning().await?;
    let results: Vec<anyhow::Result<User>> = futures::stream::iter(names.iter().cloned())
        .map(|username| {
            let mut client = client.clone();
            let domain = domain.to_owned();
            let password = password.to_owned();
            async move {
                Ok(client
                    .create_user(CreateUserRequest {
                        domain,
                        username: username.clone(),
                        password,
                        request_id: format!("create-{username}"),
                        ..Default::default()
                    })
                    .await
                    .with_context(|| format!("creating {username}"))?
                    .into_inner())
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await;
    results.into_iter().collect()
}

/// Every event of a stream, in order.
pub async fn stream_events(node: &TestNode, stream: &str) -> anyhow::Result<Vec<EventEnvelope>> {
    let mut client = node.events().await?;
    let mut from = 0;
    let mut all = Vec::new();
    loop {
        let page = client
            .read_stream(ReadStreamRequest {
                stream: stream.to_owned(),
                from_version: from,
                max_count: 1000,
            })
            .await?
            .into_inner();
        all.extend(page.events);
        if page.end_of_stream {
            return Ok(all);
        }
        from = page.next_version;
    }
}

/// The registration and presence events of a user's stream (`user-{id}`),
/// summarised one per line, in order:
/// `ContactRegistered <uri>`, `ContactRefreshed <uri>`,
/// `ContactRemoved <uri> <reason>`, `ContactExpired <uri>`,
/// `ContactReplaced <uri> by <uri>`, `PresenceChanged <previous>-><presence>`.
pub async fn registration_events(node: &TestNode, user_id: &str) -> anyhow::Result<Vec<String>> {
    let events = stream_events(node, &format!("user-{user_id}")).await?;
    Ok(summarise(&events))
}

/// See [`registration_events`].
pub fn summarise(events: &[EventEnvelope]) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.category == "registration" || e.category == "presence")
        .map(|e| {
            let data: serde_json::Value =
                serde_json::from_str(&e.data_json).unwrap_or(serde_json::Value::Null);
            let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
            match e.r#type.as_str() {
                "ContactRegistered" => format!("ContactRegistered {}", s(&data["binding"]["uri"])),
                "ContactRefreshed" => format!("ContactRefreshed {}", s(&data["uri"])),
                "ContactRemoved" => {
                    format!("ContactRemoved {} {}", s(&data["uri"]), s(&data["reason"]))
                }
                "ContactExpired" => format!("ContactExpired {}", s(&data["uri"])),
                "ContactReplaced" => format!(
                    "ContactReplaced {} by {}",
                    s(&data["uri"]),
                    s(&data["replaced_by"])
                ),
                "PresenceChanged" => format!(
                    "PresenceChanged {}->{}",
                    s(&data["previous"]),
                    s(&data["presence"])
                ),
                other => other.to_owned(),
            }
        })
        .collect()
}

/// `StatusService.GetRegistrations`.
pub async fn registrations(
    node: &TestNode,
    user: &str,
) -> anyhow::Result<GetRegistrationsResponse> {
    Ok(node
        .status()
        .await?
        .get_registrations(GetRegistrationsRequest { user: user.into() })
        .await?
        .into_inner())
}

/// `StatusService.ListOnline`.
pub async fn online(node: &TestNode, domain: &str) -> anyhow::Result<Vec<OnlineUser>> {
    Ok(node
        .status()
        .await?
        .list_online(ListOnlineRequest {
            domain: domain.into(),
        })
        .await?
        .into_inner()
        .users)
}

/// Polls `check` every 20 ms until it returns `Some`, or fails after
/// `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bounds a whole test: fails it (instead of hanging) after `secs`.
pub async fn bounded<T>(secs: u64, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Ok(v) => v,
        Err(_) => panic!("test did not finish within {secs} s"),
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 at the time of asking: a
/// candidate only, as another process may take it before it is bound again.
/// Used only where a program must be given its port and the caller starts
/// it again on another one when the bind fails ([`spawn_sipp`],
/// [`super::TestNode::start_with_metrics`]).
pub(super) fn free_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP")
}

/// Blanks what legitimately differs between two answers to two otherwise
/// identical requests from different users: the user name, Call-ID, tags,
/// branches, nonces, opaque values and the Date. Line ends become `\n`.
pub fn normalize_response(text: &str, user: &str, call_id: &str) -> String {
    let mut out = text.replace('\r', "");
    out = out.replace(&format!("sip:{user}@"), "sip:USER@");
    if !call_id.is_empty() {
        out = out.replace(call_id, "CALL-ID");
    }
    for key in [";tag=", "branch=", "nonce=\"", "opaque=\"", "Date: "] {
        let mut result = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(at) = rest.find(key) {
            result.push_str(&rest[..at + key.len()]);
            result.push('*');
            let r = &rest[at + key.len()..];
            let end = r.find(['"', ';', ',', '\n', ' ']).unwrap_or(r.len());
            let end = if key == "Date: " {
                r.find('\n').unwrap_or(r.len())
            } else {
                end
            };
            rest = &r[end..];
        }
        result.push_str(rest);
        out = result;
    }
    out.trim().to_owned()
}

/// `names` with the shared test password: a SIPp users list.
pub fn with_password(names: &[String]) -> Vec<(String, String)> {
    names
        .iter()
        .map(|u| (u.clone(), PASSWORD.to_owned()))
        .collect()
}

/// `n` callers (`caller000`…) and `n` callees (`callee000`…) provisioned,
/// a SIPp UAS (`load_uas.xml`) listening, every callee registered (by
/// SIPp) with its contact at that UAS, and `<work_dir>/calls.csv`: the SIPp
/// injection file in which caller i calls callee i.
pub struct CallPairs {
    pub callers: Vec<String>,
    pub callees: Vec<String>,
    /// The callees' UAS, started with the `uas_args` given to
    /// [`CallPairs::provision`]; killed when dropped.
    pub uas: SippProcess,
}

impl CallPairs {
    pub async fn provision(
        node: &TestNode,
        n: usize,
        work_dir: &Path,
        uas_args: &[&str],
    ) -> anyhow::Result<Self> {
        let callers: Vec<String> = (0..n).map(|i| format!("caller{i:03}")).collect();
        let callees: Vec<String> = (0..n).map(|i| format!("callee{i:03}")).collect();
        create_users(node, DOMAIN, &callers, PASSWORD, 8).await?;
        create_users(node, DOMAIN, &callees, PASSWORD, 8).await?;
        std::fs::create_dir_all(work_dir)?;
        // The UAS first: the contacts name the port it holds.
        let uas = spawn_sipp(work_dir, Ipv4Addr::LOCALHOST, |_| {
            let mut args: Vec<OsString> =
                vec!["-sf".into(), sipp_dir().join("load_uas.xml").into()];
            args.extend(uas_args.iter().map(OsString::from));
            args
        })
        .await?;
        Sipp::new("register_auth.xml", node.sip_addr(), work_dir)
            .users(&with_password(&callees))
            .key("contact_hostport", &format!("127.0.0.1:{}", uas.port))
            .run()
            .await?
            .assert_all_successful(n as u64);
        let mut csv = String::from("SEQUENTIAL\n");
        for (caller, callee) in callers.iter().zip(&callees) {
            csv.push_str(&format!("{caller};{PASSWORD};{callee}\n"));
        }
        std::fs::write(work_dir.join("calls.csv"), csv)?;
        Ok(CallPairs {
            callers,
            callees,
            uas,
        })
    }
}

/// A SIPp process started by [`spawn_sipp`], holding its local port;
/// killed when dropped.
pub struct SippProcess {
    /// The local SIP port it holds (`-p`).
    pub port: u16,
    child: Child,
    /// Its stdout and stderr, read to the end while it runs (so that it never
    /// blocks on a full pipe).
    output: JoinHandle<String>,
}

impl SippProcess {
    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Kills it (without waiting).
    pub fn kill(&mut self) {
        let _ = self.child.start_kill();
    }

    /// Waits at most `limit` for it to exit; its exit code and output.
    pub async fn wait(mut self, limit: Duration) -> anyhow::Result<(Option<i32>, String)> {
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .context("SIPp did not exit in time")??;
        let output = (&mut self.output).await?;
        Ok((status.code(), output))
    }
}

/// Starts `sipp` in `work_dir` with the arguments `args(port)` and
/// `-i ip -p port` on a fresh local port, and returns once the process holds
/// that port (or has already run to its end).
///
/// SIPp has to be given its port: a UAS's is the one the contacts
/// registered for it name, and SIPp does not report a port it picked
/// itself. A port found free may be taken by another process before SIPp
/// binds it; SIPp then exits saying it cannot bind, and it is started again
/// on another port.
pub async fn spawn_sipp(
    work_dir: &Path,
    ip: Ipv4Addr,
    args: impl Fn(u16) -> Vec<OsString>,
) -> anyhow::Result<SippProcess> {
    let mut refused = String::new();
    for _attempt in 0..10 {
        let port = free_port()?;
        let mut child = Command::new("sipp")
            .current_dir(work_dir)
            // Its message traces are stamped in local time: in UTC, tests
            // compare them with the system clock whatever the machine's zone.
            .env("TZ", "UTC")
            .args(args(port))
            .args(["-i", &ip.to_string(), "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("running sipp (is sip-tester installed?)")?;
        let pid = child.id().context("SIPp has no process id")?;
        let output = read_output(&mut child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if holds_port(pid, ip, port) {
                return Ok(SippProcess {
                    port,
                    child,
                    output,
                });
            }
            if child.try_wait()?.is_some() {
                let text = output.await?;
                if text.contains("Unable to bind") || text.contains("Address already in use") {
                    refused = text;
                    break;
                }
                // It ran to its end (a short client run) or failed for
                // another reason, which its exit code and output tell.
                return Ok(SippProcess {
                    port,
                    child,
                    output: tokio::spawn(async move { text }),
                });
            }
            if Instant::now() >= deadline {
                bail!("SIPp neither bound {ip}:{port} nor exited within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    bail!("SIPp could not bind a local port in 10 attempts: {refused}")
}

/// stdout and stderr of `child`, read to the end in the background.
fn read_output(child: &mut Child) -> JoinHandle<String> {
    async fn read(pipe: Option<impl AsyncRead + Unpin>) -> String {
        let mut bytes = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut bytes).await;
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    tokio::spawn(async move {
        let (out, err) = tokio::join!(read(stdout), read(stderr));
        format!("{out}\n{err}")
    })
}

/// Whether process `pid` holds a UDP or TCP socket bound to `ip:port`: the
/// socket's inode (from `/proc/net/{udp,tcp}`) among its open files.
fn holds_port(pid: u32, ip: Ipv4Addr, port: u16) -> bool {
    // The kernel prints the address as the u32 in memory, network order.
    let local = format!("{:08X}:{port:04X}", u32::from_le_bytes(ip.octets()));
    let sockets: Vec<String> = ["/proc/net/udp", "/proc/net/tcp"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|table| {
            table
                .lines()
                .skip(1)
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    (fields.get(1) == Some(&local.as_str()))
                        .then(|| fields.get(9).map(|inode| format!("socket:[{inode}]")))
                        .flatten()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    if sockets.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| sockets.iter().any(|s| target.as_os_str() == s.as_str()))
}

/// The directory of this package's SIPp scenarios (`tests/sipp`).
pub fn sipp_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("sipp")
}

/// One SIPp client run against a node.
pub struct Sipp {
    scenario: PathBuf,
    target: SocketAddr,
    work_dir: PathBuf,
    users: Vec<(String, String)>,
    keys: Vec<(String, String)>,
    tcp: bool,
    calls: usize,
    rate: u32,
    timeout_secs: u64,
}

/// What a SIPp run reported.
#[derive(Debug)]
pub struct SippRun {
    /// SIPp's exit code: 0 when every call succeeded, 1 when one failed.
    pub exit_code: Option<i32>,
    /// `SuccessfulCall(C)` and `FailedCall(C)` from the `-trace_stat` file.
    pub successful: u64,
    pub failed: u64,
    /// The received messages from `-trace_msg`, in order, `\r` removed.
    pub received: Vec<String>,
    /// stdout and stderr, for failure messages.
    pub output: String,
}

impl SippRun {
    /// Panics (with SIPp's output) unless every one of `calls` calls
    /// succeeded.
    pub fn assert_all_successful(&self, calls: u64) {
        assert!(
            self.exit_code == Some(0) && self.successful == calls && self.failed == 0,
            "SIPp: exit {:?}, {} successful, {} failed of {calls}\n{}",
            self.exit_code,
            self.successful,
            self.failed,
            self.output
        );
    }
}

impl Sipp {
    /// `scenario` is a file name in [`sipp_dir`]; logs and the injection
    /// file go to `work_dir`.
    pub fn new(scenario: &str, target: SocketAddr, work_dir: &Path) -> Sipp {
        Sipp {
            scenario: sipp_dir().join(scenario),
            target,
            work_dir: work_dir.to_owned(),
            users: Vec::new(),
            keys: vec![
                ("domain".into(), DOMAIN.into()),
                ("contact_hostport".into(), "127.0.0.1:5090".into()),
                ("expires".into(), "3600".into()),
            ],
            tcp: false,
            calls: 1,
            rate: 1000,
            timeout_secs: 30,
        }
    }

    /// The injection file: one call per `(username, password)`, in order.
    pub fn users(mut self, users: &[(String, String)]) -> Self {
        self.users = users.to_vec();
        self.calls = users.len();
        self
    }

    /// `-key name value` (replaces a default of the same name).
    pub fn key(mut self, name: &str, value: &str) -> Self {
        self.keys.retain(|(k, _)| k != name);
        self.keys.push((name.into(), value.into()));
        self
    }

    /// `-t t1`: every call on one TCP connection.
    pub fn tcp(mut self) -> Self {
        self.tcp = true;
        self
    }

    /// Calls per second.
    pub fn rate(mut self, rate: u32) -> Self {
        self.rate = rate;
        self
    }

    /// `-timeout`: the whole run fails after `secs` (default 30).
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// [`Sipp::run`] in the background.
    pub fn spawn(self) -> JoinHandle<anyhow::Result<SippRun>> {
        tokio::spawn(self.run())
    }

    /// Runs SIPp to its end.
    pub async fn run(self) -> anyhow::Result<SippRun> {
        self.start().await?.finish().await
    }

    /// Starts SIPp on a fresh local port (see [`spawn_sipp`]) and returns
    /// once it holds it: a UAS is then ready for calls on
    /// [`RunningSipp::port`].
    pub async fn start(self) -> anyhow::Result<RunningSipp> {
        std::fs::create_dir_all(&self.work_dir)?;
        let stamp = format!("{:08x}", rand_u32());
        let inf = self.work_dir.join(format!("users-{stamp}.csv"));
        let mut csv = String::from("SEQUENTIAL\n");
        for (user, password) in &self.users {
            csv.push_str(&format!("{user};{password};x\n"));
        }
        std::fs::write(&inf, csv)?;
        let stat = |port: u16| self.work_dir.join(format!("stat-{stamp}-{port}.csv"));
        let messages = |port: u16| self.work_dir.join(format!("messages-{stamp}-{port}.log"));
        let process = spawn_sipp(&self.work_dir, Ipv4Addr::LOCALHOST, |port| {
            self.args(&inf, &stat(port), &messages(port))
        })
        .await?;
        Ok(RunningSipp {
            stat: stat(process.port),
            messages: messages(process.port),
            process,
            limit: Duration::from_secs(self.timeout_secs + 15),
        })
    }

    /// The arguments but `-i` and `-p`.
    fn args(&self, inf: &Path, stat: &Path, messages: &Path) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            self.target.to_string().into(),
            "-sf".into(),
            self.scenario.clone().into(),
            "-inf".into(),
            inf.into(),
        ];
        let calls = self.calls.to_string();
        let rate = self.rate.to_string();
        let timeout = format!("{}s", self.timeout_secs);
        args.extend(
            [
                "-m",
                &calls,
                "-r",
                &rate,
                "-rp",
                "1000",
                "-auth_uri",
                DOMAIN,
                "-t",
                if self.tcp { "t1" } else { "u1" },
                "-nostdin",
                "-timeout",
                &timeout,
                "-timeout_error",
                "-recv_timeout",
                "5000",
                "-trace_stat",
                "-stf",
            ]
            .map(OsString::from),
        );
        args.push(stat.into());
        args.extend(["-fd", "1", "-trace_msg", "-message_file"].map(OsString::from));
        args.push(messages.into());
        for (k, v) in &self.keys {
            args.extend(["-key", k.as_str(), v.as_str()].map(OsString::from));
        }
        args
    }
}

/// A SIPp run started by [`Sipp::start`].
pub struct RunningSipp {
    process: SippProcess,
    stat: PathBuf,
    messages: PathBuf,
    /// How long it may take to exit: its `-timeout` and a margin.
    limit: Duration,
}

impl RunningSipp {
    /// The local port it holds.
    pub fn port(&self) -> u16 {
        self.process.port
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.process.is_running()
    }

    /// Waits for it to exit; what it reported.
    pub async fn finish(self) -> anyhow::Result<SippRun> {
        let (exit_code, output) = self.process.wait(self.limit).await?;
        let (successful, failed) = read_stat(&self.stat)
            .with_context(|| format!("reading SIPp statistics; output:\n{output}"))?;
        let received = std::fs::read_to_string(&self.messages)
            .map(|log| received_messages(&log))
            .unwrap_or_default();
        Ok(SippRun {
            exit_code,
            successful,
            failed,
            received,
            output,
        })
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish() as u32
}

/// `SuccessfulCall(C)` and `FailedCall(C)` of the last line of a SIPp
/// statistics file.
fn read_stat(path: &Path) -> anyhow::Result<(u64, u64)> {
    let text = std::fs::read_to_string(path)?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header_line = lines.next().context("empty statistics file")?;
    let last_line = lines.next_back().context("no statistics row")?;
    let header: Vec<&str> = header_line.split(';').collect();
    let last: Vec<&str> = last_line.split(';').collect();
    let column = |name: &str| -> anyhow::Result<u64> {
        let i = header
            .iter()
            .position(|h| *h == name)
            .with_context(|| format!("no column {name}"))?;
        Ok(last.get(i).context("short row")?.trim().parse()?)
    };
    Ok((column("SuccessfulCall(C)")?, column("FailedCall(C)")?))
}

/// The messages SIPp logged as received (`-trace_msg`), in order.
fn received_messages(log: &str) -> Vec<String> {
    let log = log.replace('\r', "");
    let mut out = Vec::new();
    for block in log.split("\n-----------------------------------------------") {
        let mut lines = block.lines().skip_while(|l| !l.contains("message "));
        let Some(title) = lines.next() else { continue };
        if !title.contains("message received") {
            continue;
        }
        let text: Vec<&str> = lines.collect();
        out.push(text.join("\n").trim().to_owned());
    }
    out
}
