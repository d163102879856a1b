//! Test support: a real `dialtone` node process on ephemeral loopback ports
//! in a temporary data directory, and gRPC clients for it.
//!
//! The API needs a token: [`TestNode::start`] starts the node with
//! `--admin-token` [`ADMIN_TOKEN`] (unless the test gives its own
//! `--admin-token`), and every client made here ([`TestNode::channel`],
//! the service clients, [`TestNode::cli`], [`client`]) sends it.

#![allow(dead_code)]

pub mod calls;
pub mod pbx;
pub mod sip;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _};
use dialtone_api::auth::Bearer;
use dialtone_api::pb::event_service_client::EventServiceClient;
use dialtone_api::pb::provisioning_service_client::ProvisioningServiceClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tonic::service::interceptor::InterceptedService;

/// The admin token test nodes are started with.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdef";

/// A connection that sends a bearer token.
pub type Channel = InterceptedService<tonic::transport::Channel, Bearer>;

/// A connection to `url` that sends `token` (none: `None`).
pub async fn channel_with(url: &str, token: Option<&str>) -> anyhow::Result<Channel> {
    let channel = tonic::transport::Channel::from_shared(url.to_owned())?
        .connect()
        .await?;
    let bearer = match token {
        Some(token) => Bearer::new(token)?,
        None => Bearer::none(),
    };
    Ok(InterceptedService::new(channel, bearer))
}

/// A connection to a test node at `url` with the admin token.
pub async fn client(url: &str) -> anyhow::Result<Channel> {
    channel_with(url, Some(ADMIN_TOKEN)).await
}

/// Path of the program under test (the `dialtone` program, built by this
/// package under another name).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_dialtone-under-test"))
}

/// A running node process.
pub struct TestNode {
    child: Child,
    pub grpc_url: String,
    /// The SIP addresses (UDP and TCP share each port); empty when off.
    pub sip_addrs: Vec<std::net::SocketAddr>,
    pub data_dir: PathBuf,
    /// The admin token its clients send.
    pub token: Option<String>,
    /// What the node printed on stdout before its ready line.
    pub stdout: Vec<String>,
    /// The ready line after `dialtone ready ` (`key=value` pairs).
    pub ready: String,
}

impl TestNode {
    /// Starts a node on `data_dir` with gRPC on an ephemeral port and waits
    /// until it prints its ready line. Its admin token is [`ADMIN_TOKEN`],
    /// or the one given with `--admin-token` in `extra_args`.
    pub async fn start(data_dir: &Path, extra_args: &[&str]) -> anyhow::Result<Self> {
        let given = extra_args
            .iter()
            .position(|a| *a == "--admin-token")
            .and_then(|i| extra_args.get(i + 1));
        match given {
            Some(token) => {
                let token = (*token).to_owned();
                Self::spawn(data_dir, extra_args, Some(token), &[]).await
            }
            None => {
                let mut args = vec!["--admin-token", ADMIN_TOKEN];
                args.extend_from_slice(extra_args);
                Self::spawn(data_dir, &args, Some(ADMIN_TOKEN.to_owned()), &[]).await
            }
        }
    }

    /// Starts a node as [`TestNode::start`] does, serving metrics on a
    /// loopback port; returns it and the metrics address.
    ///
    /// The metrics exporter listens on the address it is given and cannot
    /// report a port the kernel picked, so the port is one found free; when
    /// another process takes it first, the node exits saying it cannot serve
    /// metrics there, and it is started again on another port.
    pub async fn start_with_metrics(
        data_dir: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<(Self, String)> {
        let log = data_dir.join("node.log");
        for _attempt in 0..10 {
            let addr = format!("127.0.0.1:{}", sip::free_port()?);
            let logged = std::fs::metadata(&log).map_or(0, |m| m.len());
            let mut args = vec!["--metrics-addr", addr.as_str()];
            args.extend_from_slice(extra_args);
            match Self::start(data_dir, &args).await {
                Ok(node) => return Ok((node, addr)),
                Err(e) => {
                    let said = std::fs::read(&log).unwrap_or_default();
                    let said =
                        String::from_utf8_lossy(said.get(logged as usize..).unwrap_or_default());
                    if !said.contains("cannot serve metrics on") {
                        return Err(e);
                    }
                }
            }
        }
        bail!("no free port for metrics in 10 attempts")
    }

    /// Starts a node without `--admin-token`: unless `extra_args` configure
    /// one otherwise (then set `token`), it uses (or makes and prints)
    /// `<data_dir>/admin.token`, which the clients made here then send.
    pub async fn start_with_token_file(
        data_dir: &Path,
        extra_args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(data_dir, extra_args, &[]).await
    }

    /// As [`TestNode::start_with_token_file`], with environment variables
    /// for the node process.
    pub async fn start_with_env(
        data_dir: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut node = Self::spawn(data_dir, extra_args, None, env).await?;
        node.token = std::fs::read_to_string(data_dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_owned());
        Ok(node)
    }

    async fn spawn(
        data_dir: &Path,
        extra_args: &[&str],
        token: Option<String>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data_dir.join("node.log"))?;
        let mut child = Command::new(binary())
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--grpc-addr", "127.0.0.1:0"])
            .args(if extra_args.contains(&"--metrics-addr") {
                &[][..]
            } else {
                &["--metrics-addr", "off"][..]
            })
            .args(if extra_args.contains(&"--sip-addr") {
                &[][..]
            } else {
                &["--sip-addr", "127.0.0.1:0"][..]
            })
            .args(extra_args)
            // DIALTONE_TEST_NODE_LOG=debug (say) to see more in node.log.
            .env(
                "DIALTONE_LOG",
                std::env::var("DIALTONE_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("DIALTONE_ADMIN_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .context("spawning the node")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let mut printed = Vec::new();
        let ready = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(rest) = line.strip_prefix("dialtone ready ") {
                    return Ok::<_, anyhow::Error>(rest.to_owned());
                }
                printed.push(line);
            }
            bail!(
                "node exited before it was ready (see {}/node.log)",
                data_dir.display()
            )
        })
        .await
        .context("node not ready within 30 s")??;
        // Keep draining stdout so the node never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let grpc = ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("grpc="))
            .context("ready line without grpc=")?;
        let sip_addrs = ready
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("sip="))
            .filter(|v| *v != "off")
            .map(|v| v.split(',').filter_map(|a| a.parse().ok()).collect())
            .unwrap_or_default();
        Ok(TestNode {
            child,
            grpc_url: format!("http://{grpc}"),
            sip_addrs,
            data_dir: data_dir.to_owned(),
            token,
            stdout: printed,
            ready: ready.clone(),
        })
    }

    /// The address the ready line gives for `key` (`sip_tls`, `sip_ws`,
    /// `sip_wss`: listeners that are on only when configured).
    pub fn ready_addr(&self, key: &str) -> Option<std::net::SocketAddr> {
        self.ready
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.parse().ok())
    }

    /// A connection that sends the node's admin token.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        channel_with(&self.grpc_url, self.token.as_deref()).await
    }

    /// The first SIP address.
    pub fn sip_addr(&self) -> std::net::SocketAddr {
        self.sip_addrs[0]
    }

    /// The node's process id (for `kill -9` from a script).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn status(
        &self,
    ) -> anyhow::Result<dialtone_api::pb::status_service_client::StatusServiceClient<Channel>> {
        Ok(
            dialtone_api::pb::status_service_client::StatusServiceClient::new(
                self.channel().await?,
            ),
        )
    }

    pub async fn provisioning(&self) -> anyhow::Result<ProvisioningServiceClient<Channel>> {
        Ok(ProvisioningServiceClient::new(self.channel().await?))
    }

    pub async fn events(&self) -> anyhow::Result<EventServiceClient<Channel>> {
        Ok(EventServiceClient::new(self.channel().await?))
    }

    pub async fn audit(
        &self,
    ) -> anyhow::Result<dialtone_api::pb::audit_service_client::AuditServiceClient<Channel>> {
        Ok(dialtone_api::pb::audit_service_client::AuditServiceClient::new(self.channel().await?))
    }

    /// Whether the process is still running (it has not exited or crashed).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `kill -9`: no chance to flush anything.
    pub async fn kill9(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM, then wait for a clean exit.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.child.id().context("node already exited")?;
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .context("node did not stop within 20 s of SIGTERM")??;
        anyhow::ensure!(exit.success(), "node exited with {exit}");
        Ok(())
    }

    /// Runs the CLI against this node.
    pub async fn cli(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let mut command = Command::new(binary());
        if let Some(token) = &self.token {
            command.env("DIALTONE_TOKEN", token);
        }
        Ok(command
            .args(["--server", &self.grpc_url])
            .args(args)
            .output()
            .await?)
    }
}

/// Reads the whole log through `ReadAll`.
pub async fn read_all(node: &TestNode) -> anyhow::Result<Vec<dialtone_api::pb::EventEnvelope>> {
    let mut client = node.events().await?;
    let mut from = 1;
    let mut all = Vec::new();
    loop {
        let page = client
            .read_all(dialtone_api::pb::ReadAllRequest {
                from_position: from,
                max_count: 5000,
            })
            .await?
            .into_inner();
        if page.events.is_empty() {
            return Ok(all);
        }
        from = page.next_position;
        all.extend(page.events);
    }
}
