//! The generic aggregate actor: load (snapshot + tail), then decide / append
//! / evolve one command at a time.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use dialtone_domain::{self as model, DomainId, Timestamp, UserId};
use dialtone_eventlog::{ExpectedVersion, NewEvent, RecordedEvent, SharedStore, Snapshot};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::directory::Registry;
use crate::{now_us, Error, Result};

/// How one kind of aggregate plugs into [`AggregateActor`].
pub trait Aggregate: Sized + Unpin + 'static {
    type Id: Copy + Eq + std::hash::Hash + Send + Sync + Unpin + std::fmt::Display + 'static;
    type State: Default + Clone + Serialize + DeserializeOwned + Send + Unpin + 'static;
    type Command: Send + 'static;
    type Event: Clone + Send + Into<model::Event> + 'static;

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
}

/// The [`model::user`] aggregate.
pub struct UserAggregate;

impl Aggregate for UserAggregate {
    type Id = UserId;
    type State = model::user::User;
    type Command = model::user::Command;
    type Event = model::user::Event;
    const SNAPSHOT_SCHEMA: u32 = 1;
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
}

/// Per-command metadata from the caller.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Client request id: a retry with the same id returns the first result
    /// and appends nothing.
    pub request_id: Option<String>,
    /// The stream version the client expects (`None`: no check).
    pub expected_version: Option<u64>,
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

/// Run a command against the aggregate.
pub struct Execute<A: Aggregate> {
    pub command: A::Command,
    pub meta: Meta,
}

impl<A: Aggregate> Message for Execute<A> {
    type Result = Result<View<A::State>>;
}

/// Run a read-only function over the current state (so that callers take
/// only what they need instead of cloning a large state).
pub struct Query<A: Aggregate, R> {
    #[allow(clippy::type_complexity)]
    pub f: Box<dyn FnOnce(&A::State, Option<u64>, Timestamp) -> R + Send>,
}

impl<A: Aggregate, R> Query<A, R> {
    pub fn new(f: impl FnOnce(&A::State, Option<u64>, Timestamp) -> R + Send + 'static) -> Self {
        Query { f: Box::new(f) }
    }
}

impl<A: Aggregate, R: Send + 'static> Message for Query<A, R> {
    type Result = Result<R>;
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
pub struct AggregateActor<A: Aggregate> {
    id: A::Id,
    stream: String,
    store: SharedStore,
    registry: Arc<Registry<A>>,
    idle_timeout: Duration,
    /// `None` until loaded; `Err` when loading failed (then every request
    /// gets the error and the actor stops).
    loaded: Option<std::result::Result<Loaded<A::State>, String>>,
    last_active: Instant,
}

impl<A: Aggregate> AggregateActor<A> {
    pub(crate) fn new(
        id: A::Id,
        store: SharedStore,
        registry: Arc<Registry<A>>,
        idle_timeout: Duration,
    ) -> Self {
        AggregateActor {
            id,
            stream: A::stream(id),
            store,
            registry,
            idle_timeout,
            loaded: None,
            last_active: Instant::now(),
        }
    }

    fn loaded(&mut self) -> Result<&mut Loaded<A::State>> {
        match &mut self.loaded {
            Some(Ok(loaded)) => Ok(loaded),
            Some(Err(reason)) => Err(Error::Corrupt {
                stream: self.stream.clone(),
                reason: reason.clone(),
            }),
            None => Err(Error::Unavailable(format!(
                "{} is still loading",
                self.stream
            ))),
        }
    }

    fn view(loaded: &Loaded<A::State>, replayed: bool) -> View<A::State> {
        View {
            state: loaded.state.clone(),
            version: loaded.version,
            updated_at: loaded.updated_at,
            replayed,
        }
    }
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
    if let Some(snapshot) = store.load_snapshot(&stream).await? {
        if snapshot.schema_version == A::SNAPSHOT_SCHEMA {
            match serde_json::from_str::<SnapshotData<A::State>>(&snapshot.data) {
                Ok(data) => {
                    loaded.state = data.state;
                    loaded.updated_at = data.updated_at;
                    loaded.requests = data.requests;
                    loaded.requests.rebuild_index();
                    loaded.version = Some(snapshot.version);
                }
                // A snapshot is only a shortcut: rebuild from the log.
                Err(e) => tracing::warn!(%stream, error = %e, "ignoring unreadable snapshot"),
            }
        }
    }
    loop {
        let from = loaded.version.map_or(0, |v| v + 1);
        let page = store.read_stream(&stream, from, LOAD_PAGE).await?;
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
            Ok(loaded) => act.loaded = Some(Ok(loaded)),
            Err(e) => {
                tracing::error!(stream = %act.stream, error = %e, "cannot load aggregate");
                act.loaded = Some(Err(e.to_string()));
                ctx.stop();
            }
        }));
        let check = (self.idle_timeout / 4).max(Duration::from_millis(50));
        ctx.run_interval(check, |act, ctx| {
            if act.last_active.elapsed() >= act.idle_timeout {
                ctx.stop();
            }
        });
        metrics::gauge!("dialtone_actors_live", "kind" => A::KIND).increment(1.0);
    }

    fn stopping(&mut self, ctx: &mut Self::Context) -> Running {
        // Forget this address first, so that new callers activate a fresh
        // actor instead of sending to this stopping one.
        self.registry.forget(self.id, &ctx.address());
        if let Some(Ok(loaded)) = &self.loaded {
            if loaded.folded_since_snapshot > 0 {
                save_snapshot_later::<A>(&self.store, &self.stream, loaded);
            }
        }
        Running::Stop
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::gauge!("dialtone_actors_live", "kind" => A::KIND).decrement(1.0);
    }
}

fn save_snapshot_later<A: Aggregate>(store: &SharedStore, stream: &str, loaded: &Loaded<A::State>) {
    let Some(version) = loaded.version else {
        return;
    };
    let data = SnapshotData {
        state: &loaded.state,
        updated_at: loaded.updated_at,
        requests: loaded.requests.clone(),
    };
    let data = match serde_json::to_string(&data) {
        Ok(data) => data,
        Err(e) => {
            tracing::warn!(%stream, error = %e, "cannot serialise snapshot");
            return;
        }
    };
    let store = store.clone();
    let snapshot = Snapshot {
        stream: stream.to_owned(),
        version,
        schema_version: A::SNAPSHOT_SCHEMA,
        data,
    };
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

impl<A: Aggregate, R: Send + 'static> Handler<Query<A, R>> for AggregateActor<A> {
    type Result = Result<R>;

    fn handle(&mut self, msg: Query<A, R>, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let loaded = self.loaded()?;
        Ok((msg.f)(&loaded.state, loaded.version, loaded.updated_at))
    }
}

impl<A: Aggregate> Handler<Execute<A>> for AggregateActor<A> {
    type Result = AtomicResponse<Self, Result<View<A::State>>>;

    fn handle(&mut self, msg: Execute<A>, _ctx: &mut Self::Context) -> Self::Result {
        self.last_active = Instant::now();
        let prepared = self.prepare(msg);
        let (events, appended) = match prepared {
            Prepared::Done(result) => return AtomicResponse::new(Box::pin(fut::ready(result))),
            Prepared::Append {
                events,
                new_events,
                expected,
            } => {
                let store = self.store.clone();
                let stream = self.stream.clone();
                (events, async move {
                    store.append(&stream, expected, new_events).await
                })
            }
        };
        AtomicResponse::new(Box::pin(appended.into_actor(self).map(
            move |result, act, ctx| {
                let outcome = match result {
                    Ok(outcome) => outcome,
                    Err(e) => {
                        if matches!(e, dialtone_eventlog::Error::WrongExpectedVersion { .. }) {
                            // Someone else wrote this stream (another node):
                            // our state is stale. Stop; the next caller reloads.
                            ctx.stop();
                        }
                        return Err(e.into());
                    }
                };
                let (store, stream) = (act.store.clone(), act.stream.clone());
                let loaded = act.loaded()?;
                let mut state = std::mem::take(&mut loaded.state);
                for event in &events.events {
                    state = A::evolve(state, event);
                }
                loaded.state = state;
                loaded.version = Some(outcome.last_version);
                loaded.updated_at = events.occurred_at;
                loaded.folded_since_snapshot += events.events.len() as u64;
                if let Some(id) = &events.request_id {
                    loaded.requests.remember(id);
                }
                let view = Self::view(loaded, false);
                if loaded.folded_since_snapshot >= A::snapshot_interval(&loaded.state) {
                    save_snapshot_later::<A>(&store, &stream, loaded);
                    loaded.folded_since_snapshot = 0;
                }
                Ok(view)
            },
        )))
    }
}

/// Events decided for one command, waiting for their append.
struct Decided<E> {
    events: Vec<E>,
    occurred_at: Timestamp,
    request_id: Option<String>,
}

enum Prepared<A: Aggregate> {
    Done(Result<View<A::State>>),
    Append {
        events: Decided<A::Event>,
        new_events: Vec<NewEvent>,
        expected: ExpectedVersion,
    },
}

impl<A: Aggregate> AggregateActor<A> {
    /// Everything before the append: checks, decide, encoding.
    fn prepare(&mut self, msg: Execute<A>) -> Prepared<A> {
        let id = self.id;
        let stream = self.stream.clone();
        let loaded = match self.loaded() {
            Ok(loaded) => loaded,
            Err(e) => return Prepared::Done(Err(e)),
        };
        if let Some(request_id) = &msg.meta.request_id {
            if loaded.requests.contains(request_id) {
                return Prepared::Done(Ok(Self::view(loaded, true)));
            }
        }
        if let Some(expected) = msg.meta.expected_version {
            if loaded.version != Some(expected) {
                return Prepared::Done(Err(Error::WrongVersion {
                    expected,
                    current: loaded.version,
                }));
            }
        }
        let now = now_us();
        let events = match A::decide(&loaded.state, &msg.command, now) {
            Ok(events) => events,
            Err(e) => return Prepared::Done(Err(Error::Domain(e))),
        };
        if events.is_empty() {
            return Prepared::Done(Ok(Self::view(loaded, false)));
        }
        // The envelope ids come from the state after the events (a create
        // sets the domain id).
        let after = events.iter().fold(loaded.state.clone(), A::evolve);
        let (domain_id, user_id) = A::envelope_ids(id, &after);
        let mut new_events = Vec::with_capacity(events.len());
        for (index, event) in events.iter().enumerate() {
            let event: model::Event = event.clone().into();
            let data = match event.to_data() {
                Ok(data) => data,
                Err(e) => {
                    return Prepared::Done(Err(Error::Corrupt {
                        stream,
                        reason: format!("cannot encode {}: {e}", event.event_type()),
                    }))
                }
            };
            new_events.push(NewEvent {
                event_id: event_id(&stream, msg.meta.request_id.as_deref(), index),
                event_type: event.event_type().to_owned(),
                schema_version: event.schema_version(),
                occurred_at_us: now,
                domain_id,
                user_id,
                correlation_id: msg.meta.request_id.clone(),
                data,
            });
        }
        let expected = match loaded.version {
            Some(v) => ExpectedVersion::Exact(v),
            None => ExpectedVersion::NoStream,
        };
        Prepared::Append {
            events: Decided {
                events,
                occurred_at: now,
                request_id: msg.meta.request_id,
            },
            new_events,
            expected,
        }
    }
}

/// Event ids are derived from the request id when there is one, so that a
/// retried append is recognised by the log itself too.
fn event_id(stream: &str, request_id: Option<&str>, index: usize) -> Uuid {
    match request_id {
        Some(request_id) => {
            let key = format!("{stream}\u{0}{request_id}\u{0}{index}");
            Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes())
        }
        None => Uuid::new_v4(),
    }
}
