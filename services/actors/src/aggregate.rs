//! The generic aggregate actor: load (snapshot + tail), then decide / append
//! / evolve one command at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dialtone_domain::{self as model, ConferenceId, DomainId, Timestamp, UserId};
use dialtone_eventlog::{ExpectedVersion, NewEvent, RecordedEvent, SharedStore, Snapshot};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::facts::Facts;
use crate::live::LiveActors;
use crate::{now_us, Error, Result};

/// How one kind of aggregate plugs into [`AggregateActor`].
pub trait Aggregate: Sized + Unpin + 'static {
    type Id: Copy + Ord + std::hash::Hash + Send + Sync + Unpin + std::fmt::Display + 'static;
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Unpin + 'static;
    type Command: Clone + Send + Unpin + 'static;
    type Event: Clone + Send + Unpin + Into<model::Event> + 'static;

    /// Bump when the serialised `State` changes shape: older snapshots are
    /// then ignored and the state is rebuilt from the log.
    const SNAPSHOT_SCHEMA: u32;
    /// Short name for logs and metrics.
    const KIND: &'static str;

    fn stream(id: Self::Id) -> String;
    fn decide(
        state: &Self::State,
        command: &Self::Command,
        now: Timestamp,
    ) -> model::Result<Vec<Self::Event>>;
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State;
    /// Picks this aggregate's events out of a decoded stored event.
    fn accept(event: model::Event) -> Option<Self::Event>;
    /// The `domain_id` / `user_id` written on the envelope of its events.
    fn envelope_ids(id: Self::Id, state: &Self::State) -> (Option<Uuid>, Option<Uuid>);
    /// Take a snapshot once this many events were folded since the last one.
    fn snapshot_interval(state: &Self::State) -> u64;

    /// When something must happen to this aggregate without a caller (a
    /// contact expires): [`Aggregate::deadline_command`] is run at that time
    /// by the node's deadline queue, which activates the actor if needed.
    fn next_deadline(_state: &Self::State) -> Option<Timestamp> {
        None
    }

    /// The command run when the deadline passes.
    fn deadline_command() -> Option<Self::Command> {
        None
    }

    /// Publishes what hot paths read without a message to the actor:
    /// after loading (`events` is `None`) and after each commit (the
    /// committed events).
    fn publish(
        _id: Self::Id,
        _state: &Self::State,
        _events: Option<&[Self::Event]>,
        _facts: &Facts,
    ) {
    }
}

/// The [`model::domain`] aggregate.
pub struct DomainAggregate;

impl Aggregate for DomainAggregate {
    type Id = DomainId;
    type State = model::domain::Domain;
    type Command = model::domain::Command;
    type Event = model::domain::Event;
    const SNAPSHOT_SCHEMA: u32 = 1;
    const KIND: &'static str = "domain";

    fn stream(id: DomainId) -> String {
        id.stream()
    }
    fn decide(
        state: &Self::State,
        command: &Self::Command,
        now: Timestamp,
    ) -> model::Result<Vec<Self::Event>> {
        model::domain::decide(state, command, now)
    }
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State {
        model::domain::evolve(state, event)
    }
    fn accept(event: model::Event) -> Option<Self::Event> {
        match event {
            model::Event::Domain(e) => Some(e),
            _ => None,
        }
    }
    fn envelope_ids(id: DomainId, _state: &Self::State) -> (Option<Uuid>, Option<Uuid>) {
        (Some(id.0), None)
    }
    fn snapshot_interval(state: &Self::State) -> u64 {
        // A domain's state grows with its users; snapshot less often as it
        // grows so that snapshot writes stay a small share of the log.
        (state.users.len() as u64 / 4).max(200)
    }
    fn publish(id: DomainId, state: &Self::State, events: Option<&[Self::Event]>, facts: &Facts) {
        match events {
            None => facts.publish_domain(id, state),
            Some(events) => facts.apply_domain_events(id, state, events),
        }
    }
}

/// The [`model::user`] aggregate.
pub struct UserAggregate;

impl Aggregate for UserAggregate {
    type Id = UserId;
    type State = model::user::User;
    type Command = model::user::Command;
    type Event = model::user::Event;
    /// 2: the user gained its voicemail box (`mailbox`).
    const SNAPSHOT_SCHEMA: u32 = 2;
    const KIND: &'static str = "user";

    fn stream(id: UserId) -> String {
        id.stream()
    }
    fn decide(
        state: &Self::State,
        command: &Self::Command,
        now: Timestamp,
    ) -> model::Result<Vec<Self::Event>> {
        model::user::decide(state, command, now)
    }
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State {
        model::user::evolve(state, event)
    }
    fn accept(event: model::Event) -> Option<Self::Event> {
        match event {
            model::Event::User(e) => Some(e),
            _ => None,
        }
    }
    fn envelope_ids(id: UserId, state: &Self::State) -> (Option<Uuid>, Option<Uuid>) {
        (state.domain_id.map(|d| d.0), Some(id.0))
    }
    fn snapshot_interval(_state: &Self::State) -> u64 {
        100
    }
    fn next_deadline(state: &Self::State) -> Option<Timestamp> {
        model::registration::next_expiry(state)
    }
    fn deadline_command() -> Option<Self::Command> {
        Some(model::user::Command::ExpireContacts)
    }
    fn publish(id: UserId, state: &Self::State, events: Option<&[Self::Event]>, facts: &Facts) {
        facts.publish_user(id, state, events);
    }
}

/// The [`model::conference`] aggregate: one conference held in a room
/// (ADR 0025), stream `conference-{uuid}`. Its refusals
/// ([`model::conference::Refusal`]) reach callers as the domain's error
/// kinds (full and locked are failed preconditions, an unknown participant
/// is not found).
pub struct ConferenceAggregate;

impl Aggregate for ConferenceAggregate {
    type Id = ConferenceId;
    type State = model::conference::Conference;
    type Command = model::conference::Command;
    type Event = model::conference::Event;
    const SNAPSHOT_SCHEMA: u32 = 1;
    const KIND: &'static str = "conference";

    fn stream(id: ConferenceId) -> String {
        id.stream()
    }
    fn decide(
        state: &Self::State,
        command: &Self::Command,
        now: Timestamp,
    ) -> model::Result<Vec<Self::Event>> {
        model::conference::decide(state, command, now).map_err(model::Error::from)
    }
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State {
        model::conference::evolve(state, event)
    }
    fn accept(event: model::Event) -> Option<Self::Event> {
        match event {
            model::Event::Conference(e) => Some(e),
            _ => None,
        }
    }
    fn envelope_ids(_id: ConferenceId, state: &Self::State) -> (Option<Uuid>, Option<Uuid>) {
        // The room's domain: a domain token reads its conferences.
        (state.domain_id.map(|d| d.0), None)
    }
    fn snapshot_interval(_state: &Self::State) -> u64 {
        // Talking events come often; a conference lives an hour or so.
        500
    }
}

/// The [`model::number`] aggregate: one phone number (ADR 0028), stream
/// `number-+15550001`. Its one actor is what makes a number belong to one
/// place only.
pub struct NumberAggregate;

impl Aggregate for NumberAggregate {
    type Id = model::number::E164;
    type State = model::number::Number;
    type Command = model::number::Command;
    type Event = model::number::Event;
    const SNAPSHOT_SCHEMA: u32 = 1;
    const KIND: &'static str = "number";

    fn stream(id: Self::Id) -> String {
        id.stream()
    }
    fn decide(
        state: &Self::State,
        command: &Self::Command,
        now: Timestamp,
    ) -> model::Result<Vec<Self::Event>> {
        model::number::decide(state, command, now)
    }
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State {
        model::number::evolve(state, event)
    }
    fn accept(event: model::Event) -> Option<Self::Event> {
        match event {
            model::Event::Number(e) => Some(e),
            _ => None,
        }
    }
    fn envelope_ids(_id: Self::Id, state: &Self::State) -> (Option<Uuid>, Option<Uuid>) {
        // The domain holding it (after a release, the one that held it):
        // a domain token reads its numbers' events.
        (state.last_domain_id.map(|d| d.0), None)
    }
    fn snapshot_interval(_state: &Self::State) -> u64 {
        // A number changes a few times in its life.
        50
    }
}

/// The id of the node's one token table, whose stream is
/// [`model::token::STREAM`]: the table is a single aggregate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenTableId;

impl std::fmt::Display for TokenTableId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(model::token::STREAM)
    }
}

/// The [`model::token`] aggregate: the API tokens. Its actor is the only
/// writer of the `tokens` stream; after loading and after each commit it
/// publishes the table authentication reads ([`Facts::token`]).
pub struct TokensAggregate;

impl Aggregate for TokensAggregate {
    type Id = TokenTableId;
    type State = model::token::Tokens;
    type Command = model::token::Command;
    type Event = model::token::Event;
    const SNAPSHOT_SCHEMA: u32 = 1;
    const KIND: &'static str = "token";

    fn stream(_id: TokenTableId) -> String {
        model::token::STREAM.to_owned()
    }
    fn decide(
        state: &Self::State,
        command: &Self::Command,
        now: Timestamp,
    ) -> model::Result<Vec<Self::Event>> {
        model::token::decide(state, command, now)
    }
    fn evolve(state: Self::State, event: &Self::Event) -> Self::State {
        model::token::evolve(state, event)
    }
    fn accept(event: model::Event) -> Option<Self::Event> {
        match event {
            model::Event::Token(e) => Some(e),
            _ => None,
        }
    }
    fn envelope_ids(_id: TokenTableId, _state: &Self::State) -> (Option<Uuid>, Option<Uuid>) {
        // Tokens belong to no domain: their events are for admins only.
        (None, None)
    }
    fn snapshot_interval(_state: &Self::State) -> u64 {
        100
    }
    fn publish(
        _id: TokenTableId,
        state: &Self::State,
        _events: Option<&[Self::Event]>,
        facts: &Facts,
    ) {
        // The table is small and changes rarely: publish it whole.
        facts.publish_tokens(state);
    }
}

/// The live actors of one kind of aggregate (see [`LiveActors`]).
pub(crate) type Live<A> = LiveActors<<A as Aggregate>::Id, Addr<AggregateActor<A>>>;

/// Per-command metadata from the caller.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Client request id: a retry with the same id returns the first result
    /// and appends nothing.
    pub request_id: Option<String>,
    /// The stream version the client expects (`None`: no check).
    pub expected_version: Option<u64>,
    /// What caused the command when it has no request id (a SIP Call-ID):
    /// recorded on the events, not used for de-duplication.
    pub correlation_id: Option<String>,
}

/// The state of an aggregate with its stream version and last change time.
#[derive(Debug, Clone)]
pub struct View<S> {
    pub state: S,
    /// Version of the last event folded in; `None` for an empty stream.
    pub version: Option<u64>,
    /// `occurred_at` of the last event (µs), 0 for an empty stream.
    pub updated_at: Timestamp,
    /// True when this reply comes from a de-duplicated retry.
    pub replayed: bool,
}

/// What a reply is computed from: the durable state right after the command.
pub struct Reply<'a, S> {
    pub state: &'a S,
    pub version: Option<u64>,
    pub updated_at: Timestamp,
    /// True when the command was a retry of an earlier request id.
    pub replayed: bool,
}

impl<S: Clone> Reply<'_, S> {
    /// The whole state as a [`View`] (for small states).
    pub fn view(&self) -> View<S> {
        View {
            state: self.state.clone(),
            version: self.version,
            updated_at: self.updated_at,
            replayed: self.replayed,
        }
    }
}

/// Computes a caller's result from a reply (so that callers take only what
/// they need instead of cloning a large state).
pub type Projection<S, R> = Box<dyn for<'a> FnOnce(Reply<'a, S>) -> R + Send>;

/// Run a command against the aggregate. The reply comes once its events are
/// durable.
pub struct Execute<A: Aggregate, R> {
    pub command: A::Command,
    pub meta: Meta,
    pub project: Projection<A::State, R>,
}

impl<A: Aggregate, R: Send + 'static> Message for Execute<A, R> {
    type Result = Result<R>;
}

/// Run a read-only function over the durable state.
pub struct Query<A: Aggregate, R> {
    pub project: Projection<A::State, R>,
}

impl<A: Aggregate, R: Send + 'static> Message for Query<A, R> {
    type Result = Result<R>;
}

/// Delivers the outcome of one queued command or deferred query.
type Finish<S> = Box<dyn for<'a> FnOnce(Result<Reply<'a, S>>) + Send>;

fn finisher<S: 'static, R: Send + 'static>(
    project: Projection<S, R>,
    reply: tokio::sync::oneshot::Sender<Result<R>>,
) -> Finish<S> {
    Box::new(move |outcome: Result<Reply<'_, S>>| {
        let _ = reply.send(outcome.map(project));
    })
}

async fn await_reply<R>(rx: tokio::sync::oneshot::Receiver<Result<R>>) -> Result<R> {
    rx.await.unwrap_or_else(|_| {
        Err(Error::Unavailable(
            "the actor stopped before replying".into(),
        ))
    })
}

/// A command waiting for the next batch.
struct Pending<A: Aggregate> {
    command: A::Command,
    meta: Meta,
    finish: Finish<A::State>,
}

/// How many client request ids an aggregate remembers for de-duplication.
const REMEMBERED_REQUESTS: usize = 256;

/// Recently processed request ids, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RequestLog {
    order: VecDeque<String>,
    #[serde(skip)]
    index: HashMap<String, ()>,
}

impl RequestLog {
    fn contains(&self, id: &str) -> bool {
        self.index.contains_key(id)
    }

    fn remember(&mut self, id: &str) {
        if self.index.insert(id.to_owned(), ()).is_none() {
            self.order.push_back(id.to_owned());
            while self.order.len() > REMEMBERED_REQUESTS {
                if let Some(old) = self.order.pop_front() {
                    self.index.remove(&old);
                }
            }
        }
    }

    fn rebuild_index(&mut self) {
        self.index = self.order.iter().map(|id| (id.clone(), ())).collect();
    }
}

/// What a snapshot stores besides the version.
#[derive(Serialize, Deserialize)]
struct SnapshotData<S> {
    state: S,
    updated_at: Timestamp,
    requests: RequestLog,
}

/// Everything loaded from the log at activation.
struct Loaded<S> {
    state: S,
    version: Option<u64>,
    updated_at: Timestamp,
    requests: RequestLog,
    folded_since_snapshot: u64,
}

/// Events read per page while loading.
const LOAD_PAGE: usize = 1000;

/// One live aggregate instance.
///
/// Commands are handled in batches: while one append is in flight, new
/// commands queue up; when it completes, all queued commands are decided one
/// after the other (each sees the effects of the ones before) and their
/// events go to the log in one append. This keeps one writer per stream and
/// yet lets a busy aggregate (a domain receiving many user creations) do many
/// commands per fsync. Queries are answered from durable state only: while an
/// append is in flight they wait for it.
pub struct AggregateActor<A: Aggregate> {
    id: A::Id,
    stream: String,
    store: SharedStore,
    live: Arc<Live<A>>,
    facts: Arc<Facts>,
    idle_timeout: Duration,
    /// `None` until loaded; `Err` when loading failed (then every request
    /// gets the error and the actor stops).
    loaded: Option<std::result::Result<Loaded<A::State>, LoadFailure>>,
    last_active: Instant,
    queue: Vec<Pending<A>>,
    deferred: Vec<Finish<A::State>>,
    in_flight: bool,
}

impl<A: Aggregate> AggregateActor<A> {
    pub(crate) fn new(
        id: A::Id,
        store: SharedStore,
        live: Arc<Live<A>>,
        facts: Arc<Facts>,
        idle_timeout: Duration,
    ) -> Self {
        AggregateActor {
            id,
            stream: A::stream(id),
            store,
            live,
            facts,
            idle_timeout,
            loaded: None,
            last_active: Instant::now(),
            queue: Vec::new(),
            deferred: Vec::new(),
            in_flight: false,
        }
    }

    fn unavailable(&self) -> Error {
        match &self.loaded {
            Some(Err(LoadFailure {
                corrupt: true,
                reason,
            })) => Error::Corrupt {
                stream: self.stream.clone(),
                reason: reason.clone(),
            },
            Some(Err(LoadFailure { reason, .. })) => {
                Error::Unavailable(format!("cannot load {}: {reason}", self.stream))
            }
            _ => Error::Unavailable(format!("{} is not loaded", self.stream)),
        }
    }
}

/// Why an actor could not load its aggregate: a stream that cannot be
/// folded (corrupt) or a store that cannot be read now (e.g. a full disk).
struct LoadFailure {
    corrupt: bool,
    reason: String,
}

/// Loads the state: the latest usable snapshot, then the stream's tail.
async fn load<A: Aggregate>(store: SharedStore, stream: String) -> Result<Loaded<A::State>> {
    let mut loaded = Loaded {
        state: A::State::default(),
        version: None,
        updated_at: 0,
        requests: RequestLog::default(),
        folded_since_snapshot: 0,
    };
    // One read for the snapshot and the events after it. Those events are
    // only of use if the snapshot is; otherwise the log is read from 0.
    let (snapshot, first_page) = store.load_stream(&stream, LOAD_PAGE).await?;
    let mut next_page = Some(first_page);
    if let Some(snapshot) = snapshot {
        let data = (snapshot.schema_version == A::SNAPSHOT_SCHEMA)
            .then(|| serde_json::from_str::<SnapshotData<A::State>>(&snapshot.data));
        match data {
            Some(Ok(data)) => {
                loaded.state = data.state;
                loaded.updated_at = data.updated_at;
                loaded.requests = data.requests;
                loaded.requests.rebuild_index();
                loaded.version = Some(snapshot.version);
            }
            // A snapshot is only a shortcut: rebuild from the log.
            Some(Err(e)) => {
                tracing::warn!(%stream, error = %e, "ignoring unreadable snapshot");
                next_page = None;
            }
            // Written by an older build: rebuild from the log.
            None => next_page = None,
        }
    }
    loop {
        let page = match next_page.take() {
            Some(page) => page,
            None => {
                let from = loaded.version.map_or(0, |v| v + 1);
                store.read_stream(&stream, from, LOAD_PAGE).await?
            }
        };
        let n = page.len();
        for recorded in &page {
            fold::<A>(&mut loaded, recorded)?;
        }
        if n < LOAD_PAGE {
            break;
        }
    }
    Ok(loaded)
}

fn fold<A: Aggregate>(loaded: &mut Loaded<A::State>, recorded: &RecordedEvent) -> Result<()> {
    let corrupt = |reason: String| Error::Corrupt {
        stream: recorded.stream.clone(),
        reason,
    };
    let event = model::Event::from_stored(
        &recorded.event_type,
        recorded.schema_version,
        &recorded.data,
    )
    .map_err(|e| corrupt(format!("version {}: {e}", recorded.version)))?;
    let is_provisioning = event.category() == model::EventCategory::Provisioning;
    let event = A::accept(event).ok_or_else(|| {
        corrupt(format!(
            "version {}: event type {} does not belong to a {} stream",
            recorded.version,
            recorded.event_type,
            A::KIND
        ))
    })?;
    let state = std::mem::take(&mut loaded.state);
    loaded.state = A::evolve(state, &event);
    loaded.version = Some(recorded.version);
    loaded.updated_at = recorded.occurred_at_us;
    loaded.folded_since_snapshot += 1;
    if is_provisioning {
        if let Some(request_id) = &recorded.correlation_id {
            loaded.requests.remember(request_id);
        }
    }
    Ok(())
}

impl<A: Aggregate> Actor for AggregateActor<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Mailbox capacity: callers queue behind the load instead of failing.
        ctx.set_mailbox_capacity(1024);
        let fut = load::<A>(self.store.clone(), self.stream.clone());
        ctx.wait(fut.into_actor(self).map(|result, act, ctx| match result {
            Ok(loaded) => {
                A::publish(act.id, &loaded.state, None, &act.facts);
                act.loaded = Some(Ok(loaded));
                act.schedule_deadline(ctx);
            }
            Err(e) => {
                tracing::error!(stream = %act.stream, error = %e, "cannot load aggregate");
                act.loaded = Some(Err(LoadFailure {
                    corrupt: matches!(e, Error::Corrupt { .. }),
                    reason: e.to_string(),
                }));
                // Answer what is already in the mailbox with the reason
                // (instead of dropping it), then make room for a fresh
                // actor that tries again.
                ctx.run_later(Duration::from_millis(100), |_, ctx| ctx.stop());
            }
        }));
        let check = (self.idle_timeout / 4).max(Duration::from_millis(50));
        ctx.run_interval(check, |act, ctx| {
            let busy = act.in_flight || !act.queue.is_empty() || !act.deferred.is_empty();
            if !busy && act.last_active.elapsed() >= act.idle_timeout {
                ctx.stop();
            }
        });
        metrics::gauge!("dialtone_actors_live", "kind" => A::KIND).increment(1.0);
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Forget this address first, so that new callers activate a fresh
        // actor instead of sending to this stopping one.
        self.live.forget(self.id, &ctx.address());
        if let Some(Ok(loaded)) = &self.loaded {
            if loaded.folded_since_snapshot >= IDLE_SNAPSHOT_MIN_EVENTS {
                save_snapshot_later::<A>(&self.store, &self.stream, loaded);
            }
        }
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::gauge!("dialtone_actors_live", "kind" => A::KIND).decrement(1.0);
    }
}

/// An actor stopping because it was idle saves a snapshot only when this
/// many events were folded since the last one. A user's typical visit is
/// one event (a registration refresh, every few minutes to an hour, long
/// after its actor passivated): a snapshot per visit wrote a ~1 KB state
/// for a ~250-byte event, while reading a handful of events after an older
/// snapshot at the next activation costs less than that write (see
/// docs/performance.md, session 4). Shutdown (`Passivate`) still saves
/// whatever moved, so that a restart loads quickly.
const IDLE_SNAPSHOT_MIN_EVENTS: u64 = 8;

fn snapshot_of<A: Aggregate>(stream: &str, loaded: &Loaded<A::State>) -> Option<Snapshot> {
    let version = loaded.version?;
    let data = SnapshotData {
        state: &loaded.state,
        updated_at: loaded.updated_at,
        requests: loaded.requests.clone(),
    };
    match serde_json::to_string(&data) {
        Ok(data) => Some(Snapshot {
            stream: stream.to_owned(),
            version,
            schema_version: A::SNAPSHOT_SCHEMA,
            data,
        }),
        Err(e) => {
            tracing::warn!(%stream, error = %e, "cannot serialise snapshot");
            None
        }
    }
}

fn save_snapshot_later<A: Aggregate>(store: &SharedStore, stream: &str, loaded: &Loaded<A::State>) {
    let Some(snapshot) = snapshot_of::<A>(stream, loaded) else {
        return;
    };
    let store = store.clone();
    // Fire and forget: a lost snapshot only makes the next load longer.
    // While the actor system shuts down there is no runtime left to run it.
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        if let Err(e) = store.save_snapshot(snapshot).await {
            tracing::warn!(error = %e, "cannot save snapshot");
        }
    });
}

/// Stop now (shutdown): finish what is in flight, save a snapshot if the
/// state moved since the last one, then stop.
pub struct Passivate;

impl Message for Passivate {
    type Result = ();
}

impl<A: Aggregate> Handler<Passivate> for AggregateActor<A> {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _msg: Passivate, _ctx: &mut Self::Context) -> Self::Result {
        let snapshot = match &mut self.loaded {
            Some(Ok(loaded)) if loaded.folded_since_snapshot > 0 && !self.in_flight => {
                loaded.folded_since_snapshot = 0;
                snapshot_of::<A>(&self.stream, loaded)
            }
            _ => None,
        };
        let store = self.store.clone();
        Box::pin(
            async move {
                if let Some(snapshot) = snapshot {
                    if let Err(e) = store.save_snapshot(snapshot).await {
                        tracing::warn!(error = %e, "cannot save snapshot at shutdown");
                    }
                }
            }
            .into_actor(self)
            .map(|(), act, ctx| {
                // Nothing more to save in `stopping`.
                if let Some(Ok(loaded)) = &mut act.loaded {
                    loaded.folded_since_snapshot = 0;
                }
                ctx.stop();
            }),
        )
    }
}

impl<A: Aggregate, R: Send + 'static> Handler<Query<A, R>> for AggregateActor<A> {
    type Result = ResponseFuture<Result<R>>;

    fn handle(&mut self, msg: Query<A, R>, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let finish = finisher(msg.project, tx);
        if self.in_flight {
            self.deferred.push(finish);
        } else {
            match &self.loaded {
                Some(Ok(loaded)) => finish(Ok(reply_of(loaded, false))),
                _ => finish(Err(self.unavailable())),
            }
        }
        Box::pin(await_reply(rx))
    }
}

impl<A: Aggregate, R: Send + 'static> Handler<Execute<A, R>> for AggregateActor<A> {
    type Result = ResponseFuture<Result<R>>;

    fn handle(&mut self, msg: Execute<A, R>, ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue.push(Pending {
            command: msg.command,
            meta: msg.meta,
            finish: finisher(msg.project, tx),
        });
        self.flush(ctx);
        Box::pin(await_reply(rx))
    }
}

fn reply_of<S>(loaded: &Loaded<S>, replayed: bool) -> Reply<'_, S> {
    Reply {
        state: &loaded.state,
        version: loaded.version,
        updated_at: loaded.updated_at,
        replayed,
    }
}

/// An event decided in a batch, with what its envelope needs.
struct DecidedEvent<E> {
    event: E,
    request_id: Option<String>,
    correlation_id: Option<String>,
    index: usize,
}

impl<A: Aggregate> AggregateActor<A> {
    /// Decides every queued command and appends their events in one go.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.in_flight || self.queue.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.queue);
        let loaded = match &mut self.loaded {
            Some(Ok(loaded)) => loaded,
            _ => {
                for pending in batch {
                    (pending.finish)(Err(self.unavailable()));
                }
                return;
            }
        };
        let now = now_us();
        let base_version = loaded.version;
        let mut decided: Vec<DecidedEvent<A::Event>> = Vec::new();
        let mut waiting: Vec<(Finish<A::State>, bool)> = Vec::new();
        let mut batch_requests: Vec<String> = Vec::new();
        for pending in batch {
            let Pending {
                command,
                meta,
                finish,
            } = pending;
            if let Some(request_id) = &meta.request_id {
                if loaded.requests.contains(request_id) || batch_requests.contains(request_id) {
                    waiting.push((finish, true));
                    continue;
                }
            }
            let tentative = match (base_version, decided.len() as u64) {
                (version, 0) => version,
                (Some(v), n) => Some(v + n),
                (None, n) => Some(n - 1),
            };
            if let Some(expected) = meta.expected_version {
                if tentative != Some(expected) {
                    finish(Err(Error::WrongVersion {
                        expected,
                        current: tentative,
                    }));
                    continue;
                }
            }
            match A::decide(&loaded.state, &command, now) {
                Err(e) => finish(Err(Error::Domain(e))),
                Ok(events) => {
                    for (index, event) in events.into_iter().enumerate() {
                        let state = std::mem::take(&mut loaded.state);
                        loaded.state = A::evolve(state, &event);
                        decided.push(DecidedEvent {
                            event,
                            request_id: meta.request_id.clone(),
                            correlation_id: meta
                                .request_id
                                .clone()
                                .or_else(|| meta.correlation_id.clone()),
                            index,
                        });
                    }
                    if let Some(request_id) = meta.request_id {
                        batch_requests.push(request_id);
                    }
                    waiting.push((finish, false));
                }
            }
        }
        if decided.is_empty() {
            for (finish, replayed) in waiting {
                finish(Ok(reply_of(loaded, replayed)));
            }
            // The deadline queue forgets a deadline once it fired: set it
            // again even when nothing changed.
            self.schedule_deadline(ctx);
            return;
        }
        let new_events = match encode::<A>(self.id, &self.stream, &loaded.state, &decided, now) {
            Ok(events) => events,
            Err(e) => {
                // Nothing was written, but the state was evolved: reload.
                let reason = e.to_string();
                for (finish, _) in waiting {
                    finish(Err(Error::Corrupt {
                        stream: self.stream.clone(),
                        reason: reason.clone(),
                    }));
                }
                self.loaded = None;
                ctx.stop();
                return;
            }
        };
        let expected = match base_version {
            Some(v) => ExpectedVersion::Exact(v),
            None => ExpectedVersion::NoStream,
        };
        self.in_flight = true;
        let store = self.store.clone();
        let stream = self.stream.clone();
        let count = decided.len() as u64;
        let committed_events: Vec<A::Event> = decided.into_iter().map(|d| d.event).collect();
        let append = async move { store.append(&stream, expected, new_events).await };
        ctx.spawn(append.into_actor(self).map(move |result, act, ctx| {
            act.in_flight = false;
            act.last_active = Instant::now();
            match result {
                Ok(outcome) if outcome.deduplicated => {
                    // Every event id was stored before: a request older than
                    // the remembered ids was retried. The log is right and
                    // our tentative state is not: reload.
                    let error = dialtone_eventlog::Error::Invalid(
                        "this request was already processed; retry to read its result".into(),
                    );
                    act.failed(error, waiting, ctx);
                }
                Ok(outcome) => {
                    act.committed(
                        outcome.last_version,
                        now,
                        count,
                        batch_requests,
                        waiting,
                        &committed_events,
                    );
                    act.schedule_deadline(ctx);
                }
                Err(e) => act.failed(e, waiting, ctx),
            }
            act.flush(ctx);
        }));
    }

    fn committed(
        &mut self,
        last_version: u64,
        now: Timestamp,
        count: u64,
        requests: Vec<String>,
        waiting: Vec<(Finish<A::State>, bool)>,
        events: &[A::Event],
    ) {
        let (store, stream) = (self.store.clone(), self.stream.clone());
        let Some(Ok(loaded)) = &mut self.loaded else {
            return;
        };
        // Publish before replying: whoever got a reply reads facts at least
        // this new.
        A::publish(self.id, &loaded.state, Some(events), &self.facts);
        loaded.version = Some(last_version);
        loaded.updated_at = now;
        loaded.folded_since_snapshot += count;
        for request_id in &requests {
            loaded.requests.remember(request_id);
        }
        for (finish, replayed) in waiting {
            finish(Ok(reply_of(loaded, replayed)));
        }
        for finish in std::mem::take(&mut self.deferred) {
            finish(Ok(reply_of(loaded, false)));
        }
        if loaded.folded_since_snapshot >= A::snapshot_interval(&loaded.state) {
            save_snapshot_later::<A>(&store, &stream, loaded);
            loaded.folded_since_snapshot = 0;
        }
    }

    /// The append failed: nothing of the batch is acknowledged. The state
    /// was evolved ahead of the log, so the actor stops and the next caller
    /// gets a fresh one rebuilt from the log.
    fn failed(
        &mut self,
        error: dialtone_eventlog::Error,
        waiting: Vec<(Finish<A::State>, bool)>,
        ctx: &mut Context<Self>,
    ) {
        tracing::warn!(stream = %self.stream, %error, "append failed; reloading the aggregate");
        for (finish, _) in waiting {
            finish(Err(Error::Store(copy_store_error(&error))));
        }
        for finish in std::mem::take(&mut self.deferred) {
            finish(Err(Error::Unavailable(format!(
                "{} is reloading after a failed append",
                self.stream
            ))));
        }
        for pending in std::mem::take(&mut self.queue) {
            (pending.finish)(Err(Error::Store(copy_store_error(&error))));
        }
        self.loaded = None;
        ctx.stop();
    }
}

impl<A: Aggregate> AggregateActor<A> {
    /// Registers the state's next deadline with the node's deadline queue.
    fn schedule_deadline(&mut self, _ctx: &mut Context<Self>) {
        let next = match &self.loaded {
            Some(Ok(loaded)) => A::next_deadline(&loaded.state),
            _ => None,
        };
        self.live.deadlines.set(self.id, next);
    }
}

/// The error for each waiting caller (the store's error is not `Clone`).
fn copy_store_error(error: &dialtone_eventlog::Error) -> dialtone_eventlog::Error {
    use dialtone_eventlog::Error as E;
    match error {
        E::WrongExpectedVersion {
            stream,
            expected,
            actual,
        } => E::WrongExpectedVersion {
            stream: stream.clone(),
            expected: *expected,
            actual: *actual,
        },
        E::IdempotencyConflict { stream } => E::IdempotencyConflict {
            stream: stream.clone(),
        },
        E::Invalid(m) => E::Invalid(m.clone()),
        E::Storage(m) => E::Storage(m.clone()),
        E::Closed => E::Closed,
        E::BlobConflict { id } => E::BlobConflict { id: id.clone() },
        E::InvalidBlobId { id } => E::InvalidBlobId { id: id.clone() },
        E::BlobTooLarge { size, limit } => E::BlobTooLarge {
            size: *size,
            limit: *limit,
        },
    }
}

/// The stored form of a batch's events.
fn encode<A: Aggregate>(
    id: A::Id,
    stream: &str,
    state_after: &A::State,
    decided: &[DecidedEvent<A::Event>],
    now: Timestamp,
) -> Result<Vec<NewEvent>> {
    let (domain_id, user_id) = A::envelope_ids(id, state_after);
    decided
        .iter()
        .map(|d| {
            let event: model::Event = d.event.clone().into();
            let data = event.to_data().map_err(|e| Error::Corrupt {
                stream: stream.to_owned(),
                reason: format!("cannot encode {}: {e}", event.event_type()),
            })?;
            Ok(NewEvent {
                event_id: event_id(stream, d.request_id.as_deref(), d.index),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at_us: now,
                domain_id,
                user_id,
                correlation_id: d.correlation_id.clone(),
                data,
            })
        })
        .collect()
}

/// Event ids are derived from the request id when there is one, so that a
/// retried append is recognised by the log itself too.
fn event_id(stream: &str, request_id: Option<&str>, index: usize) -> Uuid {
    match request_id {
        Some(request_id) => {
            let key = format!("{stream}\u{0}{request_id}\u{0}{index}");
            Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes())
        }
        // Time-ordered ids keep the log's event-id index append-mostly
        // (a random id dirties a random index page per event).
        None => Uuid::now_v7(),
    }
}
