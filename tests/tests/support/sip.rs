//! SIP test support: provisioning users for registration tests, reading a
//! user's registration and presence events, polling for a condition, and
//! running SIPp as an independent client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use dialtone_api::pb::*;
use futures::StreamExt as _;
use tokio::process::Command;

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

/// A port free for both UDP and TCP on 127.0.0.1 (at the time of asking).
pub fn free_port() -> anyhow::Result<u16> {
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
/// every callee registered (by SIPp) with its contact at one UAS port, and
/// `<work_dir>/calls.csv`: the SIPp injection file in which caller i calls
/// callee i.
pub struct CallPairs {
    pub callers: Vec<String>,
    pub callees: Vec<String>,
    /// Where the callees' UAS (SIPp `load_uas.xml`) must listen.
    pub uas_port: u16,
}

impl CallPairs {
    pub async fn provision(node: &TestNode, n: usize, work_dir: &Path) -> anyhow::Result<Self> {
        let callers: Vec<String> = (0..n).map(|i| format!("caller{i:03}")).collect();
        let callees: Vec<String> = (0..n).map(|i| format!("callee{i:03}")).collect();
        create_users(node, DOMAIN, &callers, PASSWORD, 8).await?;
        create_users(node, DOMAIN, &callees, PASSWORD, 8).await?;
        let uas_port = free_port()?;
        std::fs::create_dir_all(work_dir)?;
        Sipp::new("register_auth.xml", node.sip_addr(), work_dir)
            .users(&with_password(&callees))
            .key("contact_hostport", &format!("127.0.0.1:{uas_port}"))
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
            uas_port,
        })
    }
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
    local_port: Option<u16>,
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
            local_port: None,
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

    /// `-p port`: binds this local port instead of a free one picked for
    /// each attempt (a UAS on the port a registered contact points at).
    pub fn local_port(mut self, port: u16) -> Self {
        self.local_port = Some(port);
        self
    }

    /// `-timeout`: the whole run fails after `secs` (default 30).
    pub fn timeout_secs(mut self, secs: u64) -> Self {
        self.timeout_secs = secs;
        self
    }

    /// [`Sipp::run`] in the background (a UAS waiting for calls).
    pub fn spawn(self) -> tokio::task::JoinHandle<anyhow::Result<SippRun>> {
        tokio::spawn(self.run())
    }

    pub async fn run(self) -> anyhow::Result<SippRun> {
        std::fs::create_dir_all(&self.work_dir)?;
        let stamp = format!("{:08x}", rand_u32());
        let inf = self.work_dir.join(format!("users-{stamp}.csv"));
        let mut csv = String::from("SEQUENTIAL\n");
        for (user, password) in &self.users {
            csv.push_str(&format!("{user};{password};x\n"));
        }
        std::fs::write(&inf, csv)?;
        // A port picked now may be taken by the time SIPp binds it: retry.
        let mut last = None;
        for _attempt in 0..3 {
            let port = match self.local_port {
                Some(port) => port,
                None => free_port()?,
            };
            let stat = self.work_dir.join(format!("stat-{stamp}-{port}.csv"));
            let messages = self.work_dir.join(format!("messages-{stamp}-{port}.log"));
            let mut cmd = Command::new("sipp");
            cmd.current_dir(&self.work_dir)
                .arg(self.target.to_string())
                .arg("-sf")
                .arg(&self.scenario)
                .arg("-inf")
                .arg(&inf)
                .args(["-i", "127.0.0.1", "-p", &port.to_string()])
                .args(["-m", &self.calls.to_string()])
                .args(["-r", &self.rate.to_string(), "-rp", "1000"])
                .args(["-auth_uri", DOMAIN])
                .args(["-t", if self.tcp { "t1" } else { "u1" }])
                .arg("-nostdin")
                .args([
                    "-timeout",
                    &format!("{}s", self.timeout_secs),
                    "-timeout_error",
                ])
                .args(["-recv_timeout", "5000"])
                .arg("-trace_stat")
                .arg("-stf")
                .arg(&stat)
                .args(["-fd", "1"])
                .arg("-trace_msg")
                .arg("-message_file")
                .arg(&messages)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            for (k, v) in &self.keys {
                cmd.args(["-key", k, v]);
            }
            let out =
                tokio::time::timeout(Duration::from_secs(self.timeout_secs + 15), cmd.output())
                    .await
                    .context("SIPp did not exit in time")?
                    .context("running sipp (is sip-tester installed?)")?;
            let output = format!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let bind_failed = !stat.exists()
                && (output.contains("bind") || output.contains("Address already in use"));
            if bind_failed {
                last = Some(output);
                continue;
            }
            let (successful, failed) = read_stat(&stat)
                .with_context(|| format!("reading SIPp statistics; output:\n{output}"))?;
            let received = std::fs::read_to_string(&messages)
                .map(|log| received_messages(&log))
                .unwrap_or_default();
            return Ok(SippRun {
                exit_code: out.status.code(),
                successful,
                failed,
                received,
                output,
            });
        }
        bail!(
            "SIPp could not bind a local port: {}",
            last.unwrap_or_default()
        )
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
