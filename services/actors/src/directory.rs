//! The directory of live actors: activation on demand, passivation when idle.

use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use dialtone_domain::{ConferenceId, DomainId, UserId};
use dialtone_eventlog::SharedStore;

use crate::aggregate::{
    Aggregate, AggregateActor, ConferenceAggregate, DomainAggregate, Execute, Live, Meta,
    NumberAggregate, Passivate, Query, Reply, TokenTableId, TokensAggregate, UserAggregate, View,
};
use crate::deadlines;
use crate::facts::Facts;
use crate::live::LiveActors;
use crate::{Error, Result};
use dialtone_domain as model;

#[derive(Debug, Clone)]
pub struct DirectoryConfig {
    /// An actor idle this long is stopped (its state stays in the log).
    pub idle_timeout: Duration,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// Finds (activating on demand) the actor of a domain or user.
#[derive(Clone)]
pub struct Directory {
    inner: Arc<Inner>,
}

struct Inner {
    store: SharedStore,
    arbiters: Vec<ArbiterHandle>,
    config: DirectoryConfig,
    domains: Arc<Live<DomainAggregate>>,
    users: Arc<Live<UserAggregate>>,
    /// At most one: the node's token table.
    tokens: Arc<Live<TokensAggregate>>,
    conferences: Arc<Live<ConferenceAggregate>>,
    numbers: Arc<Live<NumberAggregate>>,
    facts: Arc<Facts>,
}

/// How often a request is retried when it met an actor that was stopping.
const MAILBOX_RETRIES: usize = 3;

impl Directory {
    pub fn new(
        store: SharedStore,
        arbiters: Vec<ArbiterHandle>,
        config: DirectoryConfig,
    ) -> Result<Self> {
        if arbiters.is_empty() {
            return Err(Error::Unavailable("no arbiter to run actors on".into()));
        }
        let directory = Directory {
            inner: Arc::new(Inner {
                store,
                arbiters,
                config,
                domains: Arc::new(LiveActors::new()),
                users: Arc::new(LiveActors::new()),
                tokens: Arc::new(LiveActors::new()),
                conferences: Arc::new(LiveActors::new()),
                numbers: Arc::new(LiveActors::new()),
                facts: Arc::new(Facts::default()),
            }),
        };
        // Only users have deadlines (contact expiry) today.
        directory.run_deadlines(&directory.inner.users);
        Ok(directory)
    }

    /// Runs `A`'s deadline command for each of its deadlines as it passes
    /// (activating the actor if it was passivated).
    fn run_deadlines<A: Aggregate>(&self, live: &Arc<Live<A>>) {
        let Some(command) = A::deadline_command() else {
            return;
        };
        let directory = self.clone();
        let target = live.clone();
        tokio::spawn(deadlines::run(live.deadlines.clone(), move |id| {
            let (directory, target, command) = (directory.clone(), target.clone(), command.clone());
            async move {
                directory
                    .execute(&target, id, command, Meta::default(), |_| ())
                    .await
            }
        }));
    }

    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    /// Stops every live actor after it saved a snapshot (shutdown), so that
    /// the next start loads quickly. Waits at most `timeout`.
    pub async fn passivate_all(&self, timeout: Duration) {
        let domains = self.inner.domains.all();
        let users = self.inner.users.all();
        let tokens = self.inner.tokens.all();
        let conferences = self.inner.conferences.all();
        let numbers = self.inner.numbers.all();
        let all = async {
            let domain_stops = futures::future::join_all(domains.iter().map(|a| a.send(Passivate)));
            let user_stops = futures::future::join_all(users.iter().map(|a| a.send(Passivate)));
            let token_stops = futures::future::join_all(tokens.iter().map(|a| a.send(Passivate)));
            let conference_stops =
                futures::future::join_all(conferences.iter().map(|a| a.send(Passivate)));
            let number_stops = futures::future::join_all(numbers.iter().map(|a| a.send(Passivate)));
            futures::join!(
                domain_stops,
                user_stops,
                token_stops,
                conference_stops,
                number_stops
            );
        };
        if tokio::time::timeout(timeout, all).await.is_err() {
            tracing::warn!("some actors did not stop in time");
        }
    }

    /// Facts published by the actors (see [`Facts`]).
    pub fn facts(&self) -> &Facts {
        &self.inner.facts
    }

    /// Number of users with a pending deadline (contacts to expire).
    pub fn pending_deadlines(&self) -> usize {
        self.inner.users.deadlines.len()
    }

    /// Number of live actors (domains, users).
    pub fn live_actors(&self) -> (usize, usize) {
        (self.inner.domains.len(), self.inner.users.len())
    }

    fn activate<A: Aggregate>(&self, live: &Arc<Live<A>>, id: A::Id) -> Addr<AggregateActor<A>> {
        live.get_or_start(id, Addr::connected, || {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            id.hash(&mut hasher);
            let arbiter =
                &self.inner.arbiters[(hasher.finish() as usize) % self.inner.arbiters.len()];
            let store = self.inner.store.clone();
            let home = live.clone();
            let idle = self.inner.config.idle_timeout;
            let facts = self.inner.facts.clone();
            AggregateActor::<A>::start_in_arbiter(arbiter, move |_ctx| {
                AggregateActor::new(id, store, home, facts, idle)
            })
        })
    }

    pub(crate) async fn execute<A: Aggregate, R: Send + 'static>(
        &self,
        live: &Arc<Live<A>>,
        id: A::Id,
        command: A::Command,
        meta: Meta,
        project: impl for<'a> Fn(Reply<'a, A::State>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R>
    where
        A::Command: Clone,
    {
        let mut attempt = 0;
        loop {
            let addr = self.activate(live, id);
            let msg = Execute::<A, R> {
                command: command.clone(),
                meta: meta.clone(),
                project: Box::new(project.clone()),
            };
            match addr.send(msg).await {
                Ok(result) => return result,
                Err(e) => {
                    live.forget(id, &addr);
                    attempt += 1;
                    if attempt >= MAILBOX_RETRIES {
                        return Err(Error::Unavailable(format!("{} {id}: {e}", A::KIND)));
                    }
                }
            }
        }
    }

    async fn query<A: Aggregate, R: Send + 'static>(
        &self,
        live: &Arc<Live<A>>,
        id: A::Id,
        project: impl for<'a> Fn(Reply<'a, A::State>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        let mut attempt = 0;
        loop {
            let addr = self.activate(live, id);
            let msg = Query::<A, R> {
                project: Box::new(project.clone()),
            };
            match addr.send(msg).await {
                Ok(result) => return result,
                Err(e) => {
                    live.forget(id, &addr);
                    attempt += 1;
                    if attempt >= MAILBOX_RETRIES {
                        return Err(Error::Unavailable(format!("{} {id}: {e}", A::KIND)));
                    }
                }
            }
        }
    }

    /// Runs a command on a domain; `project` computes the result from the
    /// durable state right after it.
    pub async fn execute_domain<R: Send + 'static>(
        &self,
        id: DomainId,
        command: model::domain::Command,
        meta: Meta,
        project: impl for<'a> Fn(Reply<'a, model::domain::Domain>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        self.execute(&self.inner.domains, id, command, meta, project)
            .await
    }

    pub async fn query_domain<R: Send + 'static>(
        &self,
        id: DomainId,
        project: impl for<'a> Fn(Reply<'a, model::domain::Domain>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        self.query(&self.inner.domains, id, project).await
    }

    /// Runs a command on a user and returns its whole (small) state.
    pub async fn execute_user(
        &self,
        id: UserId,
        command: model::user::Command,
        meta: Meta,
    ) -> Result<View<model::user::User>> {
        self.execute(&self.inner.users, id, command, meta, |reply| reply.view())
            .await
    }

    /// Runs a command on a user; `project` takes what the caller needs from
    /// the durable state (no clone of the whole state on a hot path).
    pub async fn execute_user_with<R: Send + 'static>(
        &self,
        id: UserId,
        command: model::user::Command,
        meta: Meta,
        project: impl for<'a> Fn(Reply<'a, model::user::User>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        self.execute(&self.inner.users, id, command, meta, project)
            .await
    }

    pub async fn query_user<R: Send + 'static>(
        &self,
        id: UserId,
        project: impl for<'a> Fn(Reply<'a, model::user::User>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        self.query(&self.inner.users, id, project).await
    }

    /// The whole state of a user.
    pub async fn user_view(&self, id: UserId) -> Result<View<model::user::User>> {
        self.query_user(id, |reply| reply.view()).await
    }

    /// Runs a command on the token table (its actor is the `tokens`
    /// stream's only writer); `project` computes the result from the
    /// durable state right after it.
    pub(crate) async fn execute_tokens<R: Send + 'static>(
        &self,
        command: model::token::Command,
        meta: Meta,
        project: impl for<'a> Fn(Reply<'a, model::token::Tokens>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        self.execute(&self.inner.tokens, TokenTableId, command, meta, project)
            .await
    }

    /// Runs a command on a conference (ADR 0025); `project` computes the
    /// result from the durable state right after it.
    pub async fn execute_conference<R: Send + 'static>(
        &self,
        id: ConferenceId,
        command: model::conference::Command,
        meta: Meta,
        project: impl for<'a> Fn(Reply<'a, model::conference::Conference>) -> R
            + Send
            + Sync
            + Clone
            + 'static,
    ) -> Result<R> {
        self.execute(&self.inner.conferences, id, command, meta, project)
            .await
    }

    pub async fn query_conference<R: Send + 'static>(
        &self,
        id: ConferenceId,
        project: impl for<'a> Fn(Reply<'a, model::conference::Conference>) -> R
            + Send
            + Sync
            + Clone
            + 'static,
    ) -> Result<R> {
        self.query(&self.inner.conferences, id, project).await
    }

    /// Runs a command on a phone number (ADR 0028); `project` computes
    /// the result from the durable state right after it.
    pub async fn execute_number<R: Send + 'static>(
        &self,
        id: model::number::E164,
        command: model::number::Command,
        meta: Meta,
        project: impl for<'a> Fn(Reply<'a, model::number::Number>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        self.execute(&self.inner.numbers, id, command, meta, project)
            .await
    }

    pub async fn query_number<R: Send + 'static>(
        &self,
        id: model::number::E164,
        project: impl for<'a> Fn(Reply<'a, model::number::Number>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        self.query(&self.inner.numbers, id, project).await
    }

    pub(crate) async fn query_tokens<R: Send + 'static>(
        &self,
        project: impl for<'a> Fn(Reply<'a, model::token::Tokens>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        self.query(&self.inner.tokens, TokenTableId, project).await
    }
}
