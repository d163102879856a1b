//! Real softphones for the black-box tests that need them (`phones.rs`,
//! `voicemail_phones.rs`): baresip 1.0 and linphone-cli 5.1 (the Debian
//! packages), each in a throwaway directory with its own configuration,
//! bound to 127.0.0.1 on ports the kernel picks and driven through its
//! console on stdin; and what the voicemail tests check of a box over the
//! API (its messages' audio, its `message-summary` NOTIFYs).
//!
//! Shared by more than one test binary, so not every binary uses all of
//! it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use dialtone_api::pb::{SetForwardingRequest, User};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::support;
use crate::support::sip::{create_domain, create_user, eventually, registrations, stream_events};
use crate::support::TestNode;

pub const DOMAIN: &str = "phones.test";
pub const PASSWORD: &str = "phone-secret-1";
/// How long a phone may take to register, a call to be answered or to end.
pub const STEP: Duration = Duration::from_secs(15);

/// The SIP transport a phone uses to reach the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    /// As in a SIP URI's `transport` parameter.
    pub fn param(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    /// As the node reports a contact's transport.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }

    /// The node's address for this transport (TLS listens on its own port).
    pub fn node_addr(self, node: &TestNode) -> std::net::SocketAddr {
        match self {
            Transport::Udp | Transport::Tcp => node.sip_addr(),
            Transport::Tls => node
                .ready_addr("sip_tls")
                .expect("the node listens for SIP over TLS"),
        }
    }
}

/// The node's certificate (self-signed, for 127.0.0.1), which the phones
/// trust as their CA; in the node's data directory.
pub fn node_certificate(node: &TestNode) -> PathBuf {
    node.data_dir.join("sip-cert.pem")
}

/// Writes a self-signed certificate for 127.0.0.1 and its key into `dir`;
/// returns the node's arguments that serve it over TLS.
pub fn tls_args(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".into()])?;
    // linphone's TLS library (mbedTLS) matches an IP address only against
    // DNS names, baresip's and rustls against IP address SANs: both.
    params.subject_alt_names = vec![
        rcgen::SanType::DnsName("127.0.0.1".try_into()?),
        rcgen::SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
    ];
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "127.0.0.1");
    let key_pair = rcgen::KeyPair::generate()?;
    let made = params.self_signed(&key_pair)?;
    let cert = dir.join("sip-cert.pem");
    let key = dir.join("sip-key.pem");
    std::fs::write(&cert, made.pem())?;
    std::fs::write(&key, key_pair.serialize_pem())?;
    Ok(vec![
        "--sip-tls-addr".into(),
        "127.0.0.1:0".into(),
        "--sip-tls-cert".into(),
        cert.display().to_string(),
        "--sip-tls-key".into(),
        key.display().to_string(),
    ])
}

/// What a phone printed (stdout, stderr and its log file), shared with
/// the tasks that read it.
#[derive(Clone, Default)]
pub struct Output(Arc<Mutex<String>>);

impl Output {
    pub fn follow(&self, from: impl AsyncRead + Unpin + Send + 'static) {
        let output = self.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(from).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let mut text = output.0.lock().unwrap_or_else(|p| p.into_inner());
                text.push_str(&line);
                text.push('\n');
            }
        });
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Baresip,
    Linphone,
}

/// A running softphone registered as `user`.
pub struct Phone {
    pub kind: Kind,
    pub user: User,
    pub child: Child,
    pub stdin: ChildStdin,
    pub output: Output,
    pub dir: tempfile::TempDir,
    /// linphone's own log file (`-l`); baresip logs to stdout.
    pub log_file: Option<PathBuf>,
}

impl Phone {
    pub fn label(&self) -> String {
        format!("{:?} ({})", self.kind, self.user.address)
    }

    /// The end of what the phone printed, for failure messages: its
    /// console, then its log file without linphone's media engine chatter
    /// (which buries the SIP story).
    pub fn log_tail(&self) -> String {
        let mut text = tail(&self.output.text(), 25);
        if let Some(log) = &self.log_file {
            let log = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
            let log: Vec<&str> = log
                .lines()
                .filter(|l| !l.contains("mediastreamer-"))
                .collect();
            text.push_str("\n--- its log file ---\n");
            text.push_str(&tail(&log.join("\n"), 40));
        }
        text
    }

    /// How many calls the phone itself says are over (released), so that
    /// the next call starts on an idle phone.
    pub fn calls_over(&self) -> usize {
        match (self.kind, &self.log_file) {
            (Kind::Linphone, Some(log)) => {
                String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default())
                    .matches("to LinphoneCallReleased")
                    .count()
            }
            _ => self.output.text().matches("terminated (duration").count(),
        }
    }

    /// Fails with the phone's log tail attached.
    pub fn fail(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "{}: {what}\n--- last lines of its log ---\n{}",
            self.label(),
            self.log_tail()
        )
    }

    pub async fn command(&mut self, line: &str) -> anyhow::Result<()> {
        let line = match self.kind {
            // baresip's console takes long commands after a slash.
            Kind::Baresip => format!("/{line}\n"),
            Kind::Linphone => format!("{line}\n"),
        };
        self.stdin.write_all(line.as_bytes()).await?;
        self.stdin.flush().await?;
        Ok(())
    }

    /// Starts baresip for `user` with a tone as its microphone; it answers
    /// calls by itself and records what it hears under `rec/`.
    pub async fn baresip(
        user: &User,
        node: &TestNode,
        transport: Transport,
    ) -> anyhow::Result<Phone> {
        Self::baresip_with_tone(user, node, transport, 440).await
    }

    /// [`Phone::baresip`] whose microphone is a tone of `tone_hz` (the
    /// `ausine` source's parameter).
    pub async fn baresip_with_tone(
        user: &User,
        node: &TestNode,
        transport: Transport,
        tone_hz: u32,
    ) -> anyhow::Result<Phone> {
        Self::baresip_with_tone_and_codec(user, node, transport, tone_hz, "PCMU").await
    }

    /// [`Phone::baresip_with_tone`] that offers and accepts only `codec`
    /// (baresip's name: `PCMU` or `PCMA`, both of its `g711` module).
    pub async fn baresip_with_tone_and_codec(
        user: &User,
        node: &TestNode,
        transport: Transport,
        tone_hz: u32,
        codec: &str,
    ) -> anyhow::Result<Phone> {
        let dir = tempfile::tempdir()?;
        let path = dir.path();
        std::fs::create_dir_all(path.join("rec"))?;
        std::fs::write(
            path.join("config"),
            format!(
                "poll_method epoll\n\
                 sip_listen 127.0.0.1:0\n\
                 audio_player aubridge,nil\n\
                 audio_alert aubridge,nil\n\
                 audio_source ausine,{tone_hz}\n\
                 ausrc_srate 48000\n\
                 ausrc_channels 2\n\
                 module_path /usr/lib/baresip/modules\n\
                 module stdio.so\n\
                 module g711.so\n\
                 module ausine.so\n\
                 module aubridge.so\n\
                 module sndfile.so\n\
                 module_tmp account.so\n\
                 module_app menu.so\n\
                 snd_path {}\n\
                 {}",
                path.join("rec").display(),
                // Only nodes that serve TLS have one.
                Some(node_certificate(node))
                    .filter(|ca| ca.exists())
                    .map_or(String::new(), |ca| format!("sip_cafile {}\n", ca.display()))
            ),
        )?;
        let sip = transport.node_addr(node);
        let t = transport.param();
        std::fs::write(
            path.join("accounts"),
            format!(
                "<sip:{}@{};transport={t}>;auth_pass={PASSWORD};\
                 outbound=\"sip:{sip};transport={t}\";regint=600;answermode=auto;\
                 audio_codecs={codec}\n",
                user.username, user.domain
            ),
        )?;
        std::fs::write(path.join("contacts"), "")?;
        let mut command = Command::new("baresip");
        command.arg("-f").arg(path);
        Self::spawn(Kind::Baresip, user, command, dir, None).await
    }

    /// Starts linphonec for `user` in file mode: it answers calls by itself,
    /// plays `tone` as its microphone and records what it hears to
    /// `heard.wav`.
    pub async fn linphone(
        user: &User,
        node: &TestNode,
        transport: Transport,
        tone: &Path,
    ) -> anyhow::Result<Phone> {
        let dir = tempfile::tempdir()?;
        let path = dir.path();
        // Without a directory for its database the core never starts: no
        // SIP port is opened and incoming calls get 503.
        std::fs::create_dir_all(path.join(".local/share/linphone"))?;
        let sip = transport.node_addr(node);
        let t = transport.param();
        let ca = node_certificate(node);
        // Both the proxy and the route name the node, or linphone looks the
        // domain up in DNS. Port -1: one the kernel picks.
        std::fs::write(
            path.join("rc"),
            format!(
                "[sip]\n\
                 sip_port=-1\n\
                 sip_tcp_port=-1\n\
                 sip_tls_port=-1\n\
                 bind_address=127.0.0.1\n\
                 root_ca={ca}\n\
                 default_proxy=0\n\
                 register_only_when_network_is_up=0\n\
                 register_only_when_upnp_is_ok=0\n\
                 [net]\n\
                 auto_net_state_mon=0\n\
                 [rtp]\n\
                 audio_rtp_port=-1\n\
                 [sound]\n\
                 echocancellation=0\n\
                 [proxy_0]\n\
                 reg_proxy=<sip:{sip};transport={t}>\n\
                 reg_route=<sip:{sip};transport={t}>\n\
                 reg_identity=<sip:{user}@{domain}>\n\
                 reg_expires=600\n\
                 reg_sendregister=1\n\
                 realm={domain}\n\
                 [auth_info_0]\n\
                 username={user}\n\
                 passwd={PASSWORD}\n\
                 realm={domain}\n\
                 domain={domain}\n",
                user = user.username,
                domain = user.domain,
                ca = ca.display()
            ),
        )?;
        let log = path.join("linphone.log");
        let mut command = Command::new("linphonec");
        command
            .arg("-c")
            .arg(path.join("rc"))
            .args(["-a", "-d", "5", "-l"])
            .arg(&log)
            // Its database and other state go to the throwaway directory.
            .env("HOME", path);
        let mut phone = Self::spawn(Kind::Linphone, user, command, dir, Some(log)).await?;
        phone.command("soundcard use files").await?;
        phone.command(&format!("play {}", tone.display())).await?;
        let heard = phone.dir.path().join("heard.wav");
        phone
            .command(&format!("record {}", heard.display()))
            .await?;
        Ok(phone)
    }

    pub async fn spawn(
        kind: Kind,
        user: &User,
        mut command: Command,
        dir: tempfile::TempDir,
        log_file: Option<PathBuf>,
    ) -> anyhow::Result<Phone> {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!("cannot start {kind:?}: is it installed (scripts/test installs it)?")
            })?;
        let output = Output::default();
        output.follow(child.stdout.take().context("no stdout")?);
        output.follow(child.stderr.take().context("no stderr")?);
        let stdin = child.stdin.take().context("no stdin")?;
        Ok(Phone {
            kind,
            user: user.clone(),
            child,
            stdin,
            output,
            dir,
            log_file,
        })
    }

    /// Waits until the node lists a contact of this phone's user over
    /// `transport`.
    pub async fn registered(
        &mut self,
        node: &TestNode,
        transport: Transport,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                bail!(self.fail(format!("exited ({status}) before registering")));
            }
            let contacts = registrations(node, &self.user.address).await?.contacts;
            if contacts.iter().any(|c| c.transport == transport.name()) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                bail!(self.fail(format!(
                    "not registered over {transport:?} within {STEP:?} (contacts: {contacts:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Where this phone recorded what it heard during its last call.
    pub fn recording(&self) -> Option<PathBuf> {
        match self.kind {
            Kind::Linphone => Some(self.dir.path().join("heard.wav")),
            // sndfile writes `dump-<time>-<peer>-dec.wav` for what it
            // decoded (heard) and `...-enc.wav` for what it sent.
            Kind::Baresip => std::fs::read_dir(self.dir.path().join("rec"))
                .ok()?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with("-dec.wav"))
                .max_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()),
        }
    }

    pub async fn quit(mut self) {
        let _ = self.command("quit").await;
        if tokio::time::timeout(Duration::from_secs(3), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// A 440 Hz tone, 8 kHz 16-bit mono, 20 s, as a WAV file.
pub fn write_tone(path: &Path) -> anyhow::Result<()> {
    let rate = 8000u32;
    let samples: Vec<i16> = (0..rate * 20)
        .map(|i| {
            let t = f64::from(i) / f64::from(rate);
            (8000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
        })
        .collect();
    let data_len = u32::try_from(samples.len() * 2)?;
    let mut wav = Vec::with_capacity(44 + samples.len() * 2);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data_len).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&rate.to_le_bytes());
    wav.extend_from_slice(&(rate * 2).to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        wav.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, wav)?;
    Ok(())
}

/// How many 16-bit samples of a WAV file (after its 44-byte header, as
/// both phones write it) are loud: well above what silence or comfort
/// noise gives.
pub fn loud_samples(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap_or_default();
    bytes
        .get(44..)
        .unwrap_or_default()
        .chunks_exact(2)
        .filter(|s| i16::from_le_bytes([s[0], s[1]]).unsigned_abs() > 1000)
        .count()
}

/// The event types of a user's stream, in order.
pub async fn call_events(node: &TestNode, user: &User) -> anyhow::Result<Vec<String>> {
    Ok(stream_events(node, &format!("user-{}", user.id))
        .await?
        .into_iter()
        .filter(|e| e.category == "call")
        .map(|e| e.r#type)
        .collect())
}

/// A node with its defaults (nothing about digest algorithms is set: the
/// point of these tests) and two users.
pub async fn node_with_two_users() -> anyhow::Result<(tempfile::TempDir, TestNode, User, User)> {
    node_with_two_users_and(&[]).await
}

/// [`node_with_two_users`] with more arguments for the node.
pub async fn node_with_two_users_and(
    extra: &[&str],
) -> anyhow::Result<(tempfile::TempDir, TestNode, User, User)> {
    let dir = tempfile::tempdir()?;
    let tls = tls_args(dir.path())?;

    let mut args: Vec<&str> = tls.iter().map(String::as_str).collect();
    args.extend_from_slice(extra);
    let node = TestNode::start(dir.path(), &args).await?;
    create_domain(&node, DOMAIN).await?;
    let alice = create_user(&node, DOMAIN, "alice", PASSWORD, 0).await?;
    let bob = create_user(&node, DOMAIN, "bob", PASSWORD, 0).await?;
    Ok((dir, node, alice, bob))
}

// --- Voicemail (ADR 0022, ADR 0023) ----------------------------------------

/// The voicemail service of a node.
pub type VoicemailClient =
    dialtone_api::pb::voicemail_service_client::VoicemailServiceClient<support::Channel>;

pub async fn voicemail_client(node: &TestNode) -> VoicemailClient {
    dialtone_api::pb::voicemail_service_client::VoicemailServiceClient::new(
        node.channel().await.unwrap(),
    )
}

/// Enables `user`'s voicemail box (PIN 4321) and sets `rules` as the
/// user's forwarding; the voicemail client.
pub async fn box_with_forward(
    node: &TestNode,
    user: &User,
    rules: SetForwardingRequest,
) -> VoicemailClient {
    let mut vm = voicemail_client(node).await;
    vm.configure_mailbox(dialtone_api::pb::ConfigureMailboxRequest {
        user: user.address.clone(),
        enabled: Some(true),
        pin: Some("4321".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    node.provisioning()
        .await
        .unwrap()
        .set_forwarding(SetForwardingRequest {
            user: user.address.clone(),
            ..rules
        })
        .await
        .unwrap();
    vm
}

/// Waits until the phone's call is answered (by a voicemail box).
pub async fn answered(phone: &Phone) -> anyhow::Result<()> {
    eventually(STEP, "the voicemail box to answer", || async {
        Ok(phone
            .output
            .text()
            .contains("Call established")
            .then_some(()))
    })
    .await
    .map_err(|e| phone.fail(e))
}

/// The stored audio of one of `user`'s messages, streamed.
pub async fn message_audio(vm: &mut VoicemailClient, user: &User, message_id: &str) -> Vec<u8> {
    let mut audio = Vec::new();
    let mut stream = vm
        .get_message_audio(dialtone_api::pb::GetMessageAudioRequest {
            user: user.address.clone(),
            message_id: message_id.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    while let Some(chunk) = stream.message().await.unwrap() {
        audio.extend_from_slice(&chunk.data);
    }
    audio
}

/// How many messages `user`'s box holds, each checked whole: its stored
/// audio is the phone's 440 Hz tone for the message's length (±0.3 s).
pub async fn messages_are_whole(vm: &mut VoicemailClient, user: &User) -> usize {
    let list = vm
        .list_messages(dialtone_api::pb::ListMessagesRequest {
            user: user.address.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    for m in &list.messages {
        let samples = wav_samples(&message_audio(vm, user, &m.message_id).await);
        let tone: u32 = tone_spans(&samples, 440.0).iter().map(|(s, e)| e - s).sum();
        assert!(
            (i64::from(tone) - i64::from(m.duration_ms)).abs() <= 300,
            "message {} of {} ms holds {tone} ms of tone",
            m.message_id,
            m.duration_ms
        );
    }
    list.messages.len()
}

/// 8 kHz mono samples of a WAV file written by a phone or stored by the
/// node (any rate and layout `read_wav` converts).
pub fn wav_samples(bytes: &[u8]) -> Vec<i16> {
    dialtone_media::wav::read_wav(
        bytes,
        dialtone_media::wav::WavLimits {
            max_duration_ms: 900_000,
        },
    )
    .unwrap()
}

/// Where (ms) a tone at `hz` ends for the last time in `samples`, and how
/// long it lasted in all.
pub fn tone_spans(samples: &[i16], hz: f64) -> Vec<(u32, u32)> {
    dialtone_media::tone::tone_spans(samples, hz, 8000, 20)
}

/// A `message-summary` subscriber (RFC 3842) of `user` over raw UDP: it
/// subscribes (answering the digest challenge), then answers every
/// NOTIFY and keeps its body, for the test to read.
pub async fn message_summary_subscriber(
    node: &TestNode,
    user: &str,
) -> anyhow::Result<Arc<Mutex<Vec<String>>>> {
    use dialtone_sip::auth::digest::{authorization, Algorithm, Challenge};
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let local = sock.local_addr()?;
    let server = node.sip_addr();
    let subscribe = |cseq: u32, auth: &str| {
        format!(
            "SUBSCRIBE sip:{user}@{DOMAIN} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {local};branch={};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:{user}@{DOMAIN}>;tag=mwi1\r\n\
             To: <sip:{user}@{DOMAIN}>\r\n\
             Call-ID: mwi-{local}\r\n\
             CSeq: {cseq} SUBSCRIBE\r\n\
             Contact: <sip:{user}@{local}>\r\n\
             Event: message-summary\r\n\
             Accept: application/simple-message-summary\r\n\
             Expires: 600\r\n{auth}Content-Length: 0\r\n\r\n",
            dialtone_sip::test_ua::TestUa::branch()
        )
    };
    let mut buf = vec![0u8; 65_536];
    let recv = async |sock: &tokio::net::UdpSocket, buf: &mut Vec<u8>| -> anyhow::Result<String> {
        let (n, _) = tokio::time::timeout(STEP, sock.recv_from(buf)).await??;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    };
    sock.send_to(subscribe(1, "").as_bytes(), server).await?;
    let challenge = recv(&sock, &mut buf).await?;
    let header = challenge
        .lines()
        .find_map(|l| l.strip_prefix("WWW-Authenticate: "))
        .context("a digest challenge")?;
    let challenge = Challenge::parse(header).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let auth = authorization(
        challenge.algorithm.unwrap_or(Algorithm::Md5),
        user,
        &challenge.realm,
        PASSWORD,
        &challenge.nonce,
        challenge.opaque.as_deref(),
        "SUBSCRIBE",
        &format!("sip:{user}@{DOMAIN}"),
        1,
        "0a4f113b",
    );
    sock.send_to(
        subscribe(2, &format!("Authorization: {auth}\r\n")).as_bytes(),
        server,
    )
    .await?;
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            if !text.starts_with("NOTIFY ") {
                continue;
            }
            let mut ok = "SIP/2.0 200 OK\r\n".to_owned();
            for line in text.lines().take_while(|l| !l.is_empty()) {
                if ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                    .iter()
                    .any(|h| line.starts_with(h))
                {
                    ok.push_str(line);
                    ok.push_str("\r\n");
                }
            }
            ok.push_str("Content-Length: 0\r\n\r\n");
            let _ = sock.send_to(ok.as_bytes(), from).await;
            let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
            kept.lock().unwrap().push(body);
        }
    });
    Ok(bodies)
}

/// Waits (at most 1 s, what RFC 3842 subscribers are promised here) for
/// a `message-summary` NOTIFY whose body says `voice` (e.g. `1/0`).
pub async fn notified(bodies: &Arc<Mutex<Vec<String>>>, voice: &str) -> anyhow::Result<()> {
    let wanted = format!("Voice-Message: {voice} (0/0)");
    eventually(Duration::from_secs(1), &wanted, || async {
        Ok(bodies
            .lock()
            .unwrap()
            .iter()
            .any(|b| b.contains(&wanted))
            .then_some(()))
    })
    .await
}
