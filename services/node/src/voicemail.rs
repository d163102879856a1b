//! Voicemail on this node (ADR 0022, ADR 0023): the applications of
//! `dialtone-voicemail` run on media sessions of `dialtone-media`, their
//! mailbox commands go to the user's actor, their audio to the blob store.
//!
//! A call reaches voicemail by a signed application URI (the proxy forks a
//! voicemail step to the node itself, `dialtone_sip::app_uri`) or by a
//! feature code (`*97`, `*98`). [`Voicemail::start`] answers the INVITE's
//! SDP offer with a media session of its own and spawns the call's driver:
//! one task that feeds the application what happens (the ACK, digits,
//! playback and recording ends, mailbox results, its timer, the hang-up)
//! and executes what it asks. The task owns the media session, so a call
//! that ends ends its session (and a session that times out ends the
//! call).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dialtone_actors::{Meta, Provisioning};
use dialtone_domain::mailbox::{self, AudioId, Greeting, Mailbox};
use dialtone_domain::{user, DomainId, DomainName, UserId, UserName};
use dialtone_eventlog::blob::SharedBlobStore;
use dialtone_media::runtime::{MediaHandle, MediaRuntime};
use dialtone_media::sdp::{self, Capabilities, Direction, LocalMedia, SessionDescription};
use dialtone_media::session::{RecordLimits, Recording, SessionEvent};
use dialtone_media::{dtmf::DtmfEvent, wav};
use dialtone_sip::proxy::AppControl;
use dialtone_sip::{AppCall, AppEnd, AppSession, AppStart, BackendError};
use dialtone_voicemail::app::{Action, Input, RecordingEnd, Refusal};
use dialtone_voicemail::deposit::{self, Deposit};
use dialtone_voicemail::menu::Menu;
use dialtone_voicemail::prompts::Prompts;
use tokio::sync::mpsc;

/// The application names this node answers (in signed URIs and feature
/// codes' routes): `vm-deposit.<user id>` (leave a message for the user),
/// `vm-own.<user id>` (the user's own mailbox, `*97`), `vm-any.<domain id>`
/// (any mailbox of the domain, PIN required, `*98`).
pub const DEPOSIT: &str = "vm-deposit.";
pub const OWN: &str = "vm-own.";
pub const ANY: &str = "vm-any.";

/// What voicemail needs of the node.
#[derive(Clone)]
pub struct Voicemail {
    media: MediaRuntime,
    prompts: Arc<Prompts>,
    blobs: SharedBlobStore,
    provisioning: Provisioning,
    deposit: deposit::Settings,
}

/// What the call engine tells the driver (through [`Signals`]).
enum Signal {
    Confirmed,
    Update(sdp::NegotiatedAudio),
    Ended,
}

/// The call engine's side of a voicemail call: hands everything to the
/// driver task and returns at once (it runs under the engine's lock).
struct Signals {
    tx: mpsc::UnboundedSender<Signal>,
    local: LocalMedia,
}

impl AppSession for Signals {
    fn confirmed(&mut self) {
        let _ = self.tx.send(Signal::Confirmed);
    }

    fn reoffer(&mut self, offer: &[u8]) -> Result<Vec<u8>, u16> {
        let offer = SessionDescription::parse(offer).map_err(|_| 488u16)?;
        self.local.session_version += 1;
        let answer = sdp::answer(
            &offer,
            &Capabilities::default(),
            &self.local,
            Direction::SendRecv,
        )
        .map_err(|_| 488u16)?;
        let _ = self.tx.send(Signal::Update(answer.audio));
        Ok(answer.sdp.into_bytes())
    }

    fn ended(&mut self, _end: AppEnd) {
        let _ = self.tx.send(Signal::Ended);
    }
}

/// Which application a call runs.
enum App {
    Deposit(Deposit),
    Menu(Menu),
}

impl App {
    fn on(&mut self, input: Input) -> Vec<Action> {
        match self {
            App::Deposit(d) => d.on(input),
            App::Menu(m) => m.on(input),
        }
    }

    fn is_done(&self) -> bool {
        match self {
            App::Deposit(d) => d.is_done(),
            App::Menu(m) => m.is_done(),
        }
    }
}

fn refuse(status: u16, reason: impl Into<String>) -> Result<AppStart, BackendError> {
    Ok(AppStart::Refuse {
        status,
        reason: reason.into(),
    })
}

impl Voicemail {
    pub fn new(
        media: MediaRuntime,
        prompts: Arc<Prompts>,
        blobs: SharedBlobStore,
        provisioning: Provisioning,
    ) -> Voicemail {
        Voicemail {
            media,
            prompts,
            blobs,
            provisioning,
            deposit: deposit::Settings::default(),
        }
    }

    /// Whether `app` is one of voicemail's.
    pub fn serves(app: &str) -> bool {
        [DEPOSIT, OWN, ANY].iter().any(|p| app.starts_with(p))
    }

    /// Answers `call` for the application `app`: its mailbox, a media
    /// session for the offer, and the driver task.
    pub async fn start(
        &self,
        app: &str,
        call: AppCall<'_>,
        control: AppControl,
    ) -> Result<AppStart, BackendError> {
        if call.offer.is_empty() {
            return refuse(488, "Not Acceptable Here (an INVITE without an SDP offer)");
        }
        let offer = match SessionDescription::parse(call.offer) {
            Ok(offer) => offer,
            Err(e) => return refuse(488, format!("Not Acceptable Here ({e})")),
        };
        let (application, owner, domain, answered_by) = match self.application(app, &call).await? {
            Ok(found) => found,
            Err(refusal) => return Ok(refusal),
        };
        let ports = match self.media.allocate().await {
            Ok(ports) => ports,
            Err(e) => {
                tracing::warn!(error = %e, "no media port for voicemail");
                return refuse(503, "Service Unavailable (no media port free)");
            }
        };
        let session_id = u64::from_be_bytes(
            uuid::Uuid::new_v4().as_bytes()[..8]
                .try_into()
                .unwrap_or([0; 8]),
        ) >> 1;
        let local = ports.local_media(session_id, 1);
        let answer = match sdp::answer(
            &offer,
            &Capabilities::default(),
            &local,
            Direction::SendRecv,
        ) {
            Ok(answer) => answer,
            Err(e) => return refuse(488, format!("Not Acceptable Here ({e})")),
        };
        let handle = self.media.start(ports, answer.audio);
        let (tx, rx) = mpsc::unbounded_channel();
        let driver = Driver {
            vm: self.clone(),
            app: application,
            owner,
            domain,
            media: handle,
            control,
            recording: None,
            playing: false,
            stopped_playbacks: 0,
            pending_record: None,
            timer: None,
            queue: VecDeque::new(),
        };
        let span = tracing::debug_span!("voicemail", app, sip_call_id = call.sip_call_id);
        tokio::spawn(tracing::Instrument::instrument(driver.run(rx), span));
        Ok(AppStart::Answer {
            sdp: answer.sdp.into_bytes(),
            session: Box::new(Signals { tx, local }),
            answered_by,
        })
    }

    /// The application `app` names, whose mailbox it starts on, and its
    /// name in call records (ADR 0024): `voicemail:bob@example.com` (a
    /// box taking a message), `voicemail-menu:bob@example.com` (the
    /// owner's menu, `*97`), `voicemail-menu:example.com` (any box of the
    /// domain, `*98`).
    #[allow(clippy::type_complexity)]
    async fn application(
        &self,
        app: &str,
        call: &AppCall<'_>,
    ) -> Result<Result<(App, Option<UserId>, Option<DomainId>, String), AppStart>, BackendError>
    {
        let not_found = || {
            Ok(Err(AppStart::Refuse {
                status: 404,
                reason: "Not Found (no such mailbox)".to_owned(),
            }))
        };
        if let Some(id) = app.strip_prefix(DEPOSIT).or_else(|| app.strip_prefix(OWN)) {
            let Ok(id) = id.parse::<UserId>() else {
                return not_found();
            };
            let Some((mailbox, address)) = self.mailbox_of(id).await? else {
                return not_found();
            };
            if app.starts_with(DEPOSIT) {
                let from = caller_of(call);
                let deposit = Deposit::new(&mailbox, from, self.deposit);
                let name = format!("voicemail:{address}");
                return Ok(Ok((App::Deposit(deposit), Some(id), None, name)));
            }
            let name = format!("voicemail-menu:{address}");
            return Ok(Ok((
                App::Menu(Menu::own_phone(mailbox)),
                Some(id),
                None,
                name,
            )));
        }
        if let Some(domain) = app.strip_prefix(ANY) {
            let Ok(domain) = domain.parse::<DomainId>() else {
                return not_found();
            };
            // The caller dialled it in its own domain (a feature code).
            let name = format!(
                "voicemail-menu:{}",
                call.caller.map_or("", |(_, domain)| domain)
            );
            return Ok(Ok((App::Menu(Menu::any_phone()), None, Some(domain), name)));
        }
        not_found()
    }

    /// The user's mailbox and address (`user@domain`), `None` when the
    /// user does not exist.
    async fn mailbox_of(&self, id: UserId) -> Result<Option<(Mailbox, String)>, BackendError> {
        match self
            .provisioning
            .directory()
            .query_user(id, |r| {
                r.state
                    .exists()
                    .then(|| (r.state.mailbox.clone(), r.state.address()))
            })
            .await
        {
            Ok(found) => Ok(found),
            Err(dialtone_actors::Error::Domain(_)) => Ok(None),
            Err(e) => Err(BackendError::Unavailable(e.to_string())),
        }
    }

    /// The user's mailbox, `None` when the user does not exist.
    async fn mailbox(&self, id: UserId) -> Result<Option<Mailbox>, BackendError> {
        match self
            .provisioning
            .directory()
            .query_user(id, |r| r.state.exists().then(|| r.state.mailbox.clone()))
            .await
        {
            Ok(found) => Ok(found),
            Err(dialtone_actors::Error::Domain(_)) => Ok(None),
            Err(e) => Err(BackendError::Unavailable(e.to_string())),
        }
    }

    /// Runs a mailbox command on the user's actor: the mailbox after it.
    async fn command(&self, id: UserId, command: mailbox::Command) -> Result<Mailbox, Refusal> {
        // Audio the command may stop naming, deleted once that is durable
        // (else the blob sweeper finds it, a grace period later).
        let dropped = match &command {
            mailbox::Command::Delete { message_id } => Some(message_id.clone()),
            mailbox::Command::SetGreeting { .. } => self
                .mailbox(id)
                .await
                .ok()
                .flatten()
                .and_then(|m| m.greeting.map(|g| g.audio)),
            _ => None,
        };
        let result = self
            .provisioning
            .directory()
            .execute_user_with(id, user::Command::Mailbox(command), Meta::default(), |r| {
                r.state.mailbox.clone()
            })
            .await;
        match result {
            Ok(mailbox) => {
                let named = |a: &AudioId| {
                    mailbox.message(a).is_some()
                        || mailbox.greeting.as_ref().is_some_and(|g| &g.audio == a)
                };
                if let Some(audio) = dropped.filter(|a| !named(a)) {
                    if let Err(e) = self.blobs.delete(audio.as_str()).await {
                        tracing::warn!(%audio, error = %e, "voicemail: dropped audio not deleted");
                    }
                }
                Ok(mailbox)
            }
            Err(e) => Err(refusal_of(e)),
        }
    }

    /// The user `name` of the domain `domain` (a `*98` look-up).
    async fn find_user(&self, domain: DomainId, name: &str) -> Option<UserId> {
        let name = UserName::parse(name).ok()?;
        let directory = self.provisioning.directory();
        if let Some((.., Some(id))) = directory.facts().domain_and_user(domain, Some(&name)) {
            return Some(id);
        }
        directory.query_domain(domain, |_| ()).await.ok()?;
        directory.facts().domain_and_user(domain, Some(&name))?.3
    }
}

/// What the application hears of a mailbox command that failed: the
/// domain's refusals by their type (a locked mailbox is
/// [`mailbox::Refusal::Locked`], never a message to search), the actors
/// failing as unavailable.
fn refusal_of(error: dialtone_actors::Error) -> Refusal {
    use dialtone_domain::Error as Domain;
    match error {
        dialtone_actors::Error::Domain(Domain::Mailbox(mailbox::Refusal::Locked { .. })) => {
            Refusal::Locked
        }
        dialtone_actors::Error::Domain(Domain::NotFound(_)) => Refusal::NotFound,
        dialtone_actors::Error::Domain(e) => Refusal::Invalid(e.to_string()),
        e => {
            tracing::warn!(error = %e, "voicemail: mailbox command failed");
            Refusal::Unavailable
        }
    }
}

/// `user@host` of the caller, from the From URI.
fn caller_of(call: &AppCall<'_>) -> String {
    if let Some((user, domain)) = call.caller {
        return format!("{user}@{domain}");
    }
    let uri = call.from.trim();
    let uri = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))
        .unwrap_or(uri);
    let end = uri.find([';', '?', '>']).unwrap_or(uri.len());
    let mut from: String = uri[..end]
        .chars()
        .filter(|c| !c.is_control())
        .take(mailbox::MAX_FROM_LEN)
        .collect();
    while from.len() > mailbox::MAX_FROM_LEN {
        from.pop();
    }
    from
}

/// One voicemail call.
struct Driver {
    vm: Voicemail,
    app: App,
    /// The user whose mailbox the application works on (for `*98`, once
    /// the caller named it).
    owner: Option<UserId>,
    /// The domain a `*98` caller names mailboxes in.
    domain: Option<DomainId>,
    media: MediaHandle,
    control: AppControl,
    /// The last recording, until it is saved or dropped.
    recording: Option<Recording>,
    /// Audio is queued and has not played out.
    playing: bool,
    /// `PlaybackDone`s still to come of playbacks the application stopped:
    /// the media session reports a stopped playback as done, and that late
    /// report must not pass for the end of what the application queued
    /// after it (a barge-in stops a prompt and plays the next at once).
    stopped_playbacks: u32,
    /// A recording asked for while audio plays: it starts after.
    pending_record: Option<RecordLimits>,
    timer: Option<(Instant, u32)>,
    /// Inputs made by executing actions, fed in order.
    queue: VecDeque<Input>,
}

impl Driver {
    async fn run(mut self, mut signals: mpsc::UnboundedReceiver<Signal>) {
        let mut hung_up = false;
        loop {
            let input = tokio::select! {
                signal = signals.recv(), if !hung_up => match signal {
                    Some(Signal::Confirmed) => Some(Input::Answered),
                    Some(Signal::Update(audio)) => {
                        self.media.update(audio);
                        None
                    }
                    Some(Signal::Ended) | None => {
                        hung_up = true;
                        Some(Input::HungUp)
                    }
                },
                event = self.media.next_event() => match event {
                    Some(SessionEvent::PlaybackDone) if self.stopped_playbacks > 0 => {
                        self.stopped_playbacks -= 1;
                        None
                    }
                    Some(SessionEvent::PlaybackDone) => {
                        self.playing = false;
                        if let Some(limits) = self.pending_record.take() {
                            self.media.start_recording(limits);
                        }
                        Some(Input::PlaybackDone)
                    }
                    Some(SessionEvent::Dtmf(DtmfEvent::Began { digit })) => Some(Input::Dtmf(digit)),
                    Some(SessionEvent::Dtmf(DtmfEvent::Ended { .. })) => None,
                    Some(SessionEvent::RecordingDone(recording)) => Some(self.recorded(recording)),
                    Some(SessionEvent::RtpTimeout) | None => {
                        // The phone is gone: the call ends with the media,
                        // recorded as a timeout (ADR 0024).
                        self.control.media_timed_out();
                        hung_up = true;
                        Some(Input::HungUp)
                    }
                },
                _ = sleep_until(self.timer.map(|(at, _)| at)) => {
                    self.timer.take().map(|(_, id)| Input::Timeout(id))
                }
            };
            if let Some(input) = input {
                self.feed(input).await;
            }
            if self.app.is_done() {
                if !hung_up {
                    self.control.hang_up();
                }
                break;
            }
            if hung_up && self.queue.is_empty() && self.recording.is_none() {
                // Nothing more can come from the caller.
                break;
            }
        }
        self.media.close().await;
    }

    /// Feeds `input` and everything executing its actions gives back.
    async fn feed(&mut self, input: Input) {
        self.queue.push_back(input);
        while let Some(input) = self.queue.pop_front() {
            for action in self.app.on(input) {
                self.execute(action).await;
            }
        }
    }

    fn recorded(&mut self, recording: Recording) -> Input {
        let input = Input::RecordingDone {
            duration_ms: recording.duration_ms(),
            end: match recording.end {
                dialtone_media::session::RecordingEnd::MaxDuration => RecordingEnd::MaxDuration,
                dialtone_media::session::RecordingEnd::Silence => RecordingEnd::Silence,
                dialtone_media::session::RecordingEnd::Digit(d) => RecordingEnd::Digit(d),
                dialtone_media::session::RecordingEnd::Stopped => RecordingEnd::Stopped,
            },
        };
        self.recording = Some(recording);
        input
    }

    async fn execute(&mut self, action: Action) {
        match action {
            Action::Play(prompts) => {
                for prompt in prompts {
                    self.media.play(self.vm.prompts.get(prompt));
                }
                self.playing = true;
            }
            Action::PlayMessage(audio) | Action::PlayGreeting(audio) => {
                let samples = self.audio(&audio).await;
                self.queue.push_back(Input::AudioReady {
                    audio,
                    ok: samples.is_some(),
                });
                if let Some(samples) = samples {
                    self.media.play(samples);
                    self.playing = true;
                }
            }
            Action::StopPlayback => {
                self.media.stop_playback();
                if self.playing {
                    // Exactly one report is on its way: the stop's, or the
                    // end the queue reached before the stop arrived.
                    self.stopped_playbacks += 1;
                }
                self.playing = false;
                if let Some(limits) = self.pending_record.take() {
                    self.media.start_recording(limits);
                }
            }
            Action::Record {
                max_duration_ms,
                silence_ms,
                stop_digits,
            } => {
                let limits = RecordLimits {
                    max_duration_ms,
                    silence_ms,
                    stop_digits: stop_digits.to_owned(),
                };
                if self.playing {
                    self.pending_record = Some(limits);
                } else {
                    self.media.start_recording(limits);
                }
            }
            Action::StopRecording => {
                self.pending_record = None;
                let recording = self.media.stop_recording().await.unwrap_or(Recording {
                    samples: Vec::new(),
                    end: dialtone_media::session::RecordingEnd::Stopped,
                });
                let input = self.recorded(recording);
                self.queue.push_back(input);
            }
            Action::DiscardRecording => {
                self.pending_record = None;
                self.recording = None;
            }
            Action::SaveMessage { from, duration_ms } => {
                let result = match (self.owner, self.recording.take()) {
                    (Some(owner), Some(recording)) => {
                        self.save(owner, recording, |message_id| mailbox::Command::Leave {
                            message_id,
                            from,
                            duration_ms,
                        })
                        .await
                    }
                    _ => Err(Refusal::Unavailable),
                };
                self.queue.push_back(Input::MailboxUpdated(result));
            }
            Action::SaveGreeting { duration_ms } => {
                let result = match (self.owner, self.recording.take()) {
                    (Some(owner), Some(recording)) => {
                        self.save(owner, recording, |audio| mailbox::Command::SetGreeting {
                            greeting: Some(Greeting { audio, duration_ms }),
                        })
                        .await
                    }
                    _ => Err(Refusal::Unavailable),
                };
                self.queue.push_back(Input::MailboxUpdated(result));
            }
            Action::Mailbox(command) => {
                let result = match self.owner {
                    Some(owner) => self.mailbox_command(owner, command).await,
                    None => Err(Refusal::NotFound),
                };
                self.queue.push_back(Input::MailboxUpdated(result));
            }
            Action::LookUpMailbox(name) => {
                let result = self.look_up(&name).await;
                self.queue.push_back(Input::MailboxUpdated(result));
            }
            Action::StartTimer { id, duration_ms } => {
                self.timer = Some((
                    Instant::now() + Duration::from_millis(u64::from(duration_ms)),
                    id,
                ));
            }
            Action::HangUp => {
                self.control.hang_up();
            }
        }
    }

    /// A mailbox command; a `CheckPin` is told apart by the state after it
    /// (a wrong PIN counts, a fifth locks).
    async fn mailbox_command(
        &self,
        owner: UserId,
        command: mailbox::Command,
    ) -> Result<Mailbox, Refusal> {
        let checks_pin = matches!(command, mailbox::Command::CheckPin { .. });
        let after = self.vm.command(owner, command).await?;
        if checks_pin {
            if after.is_locked(dialtone_actors::now_us()) {
                return Err(Refusal::Locked);
            }
            if after.failed_pin_attempts > 0 {
                return Err(Refusal::WrongPin);
            }
        }
        Ok(after)
    }

    /// `*98`: the mailbox named `name` in the caller's domain (the domain
    /// the menu was started for).
    async fn look_up(&mut self, name: &str) -> Result<Mailbox, Refusal> {
        let Some(domain) = self.domain else {
            return Err(Refusal::NotFound);
        };
        let Some(id) = self.vm.find_user(domain, name).await else {
            return Err(Refusal::NotFound);
        };
        match self.vm.mailbox(id).await {
            Ok(Some(mailbox)) => {
                self.owner = Some(id);
                Ok(mailbox)
            }
            Ok(None) => Err(Refusal::NotFound),
            Err(_) => Err(Refusal::Unavailable),
        }
    }

    /// Stores the recording (fsynced) under a fresh id, then runs the
    /// mailbox command that names it (a message left, a new greeting).
    async fn save(
        &self,
        owner: UserId,
        recording: Recording,
        command: impl FnOnce(AudioId) -> mailbox::Command,
    ) -> Result<Mailbox, Refusal> {
        let id = AudioId::from_random(*uuid::Uuid::new_v4().as_bytes());
        self.store(&id, &recording.samples).await?;
        self.vm.command(owner, command(id)).await
    }

    /// Writes `samples` as a WAV file to the blob store (durable when it
    /// returns).
    async fn store(&self, id: &AudioId, samples: &[i16]) -> Result<(), Refusal> {
        let mut file = Vec::with_capacity(44 + samples.len() * 2);
        wav::write_wav(samples, &mut file);
        self.vm
            .blobs
            .put(id.as_str(), Bytes::from(file))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "voicemail: audio not stored");
                Refusal::Unavailable
            })
    }

    /// A message's or greeting's samples from the blob store.
    async fn audio(&self, id: &AudioId) -> Option<Arc<[i16]>> {
        let bytes = self.vm.blobs.get(id.as_str()).await.ok()??;
        let samples = wav::read_wav(
            &bytes,
            wav::WavLimits {
                max_duration_ms: mailbox::MAX_MAX_MESSAGE_MS + 10_000,
            },
        )
        .ok()?;
        Some(samples.into())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// The application of `*98` in `domain`.
pub fn any_route(domain: &DomainName) -> String {
    format!("{ANY}{}", DomainId::for_name(domain).0)
}

/// The application that takes messages for `user`.
pub fn deposit_route(user: UserId) -> String {
    format!("{DEPOSIT}{}", user.0)
}

/// The application of `*97` for `user`.
pub fn own_route(user: UserId) -> String {
    format!("{OWN}{}", user.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dialtone_domain::Error as Domain;

    #[test]
    fn a_locked_mailbox_is_told_by_its_type_not_its_text() {
        let locked = dialtone_actors::Error::Domain(Domain::Mailbox(mailbox::Refusal::Locked {
            until: 1_700_000_900_000_000,
        }));
        assert_eq!(refusal_of(locked), Refusal::Locked);
        // A precondition whose text happens to say "locked" is not a
        // lock-out.
        let text = dialtone_actors::Error::Domain(Domain::FailedPrecondition(
            "the mailbox is locked".into(),
        ));
        assert!(matches!(refusal_of(text), Refusal::Invalid(_)));
        let no_pin = dialtone_actors::Error::Domain(Domain::Mailbox(mailbox::Refusal::NoPin));
        assert_eq!(
            refusal_of(no_pin),
            Refusal::Invalid("the mailbox has no PIN".into())
        );
        let gone = dialtone_actors::Error::Domain(Domain::NotFound("bob@example.com".into()));
        assert_eq!(refusal_of(gone), Refusal::NotFound);
        let down = dialtone_actors::Error::Unavailable("stopping".into());
        assert_eq!(refusal_of(down), Refusal::Unavailable);
    }
}
