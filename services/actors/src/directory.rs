//! The directory of live actors: activation on demand, passivation when idle.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use dialtone_domain::{DomainId, UserId};
use dialtone_eventlog::SharedStore;

use crate::aggregate::{
    Aggregate, AggregateActor, DomainAggregate, Execute, Meta, Passivate, Query, Reply,
    UserAggregate, View,
};
use crate::deadlines::{self, Deadlines};
use crate::facts::Facts;
use crate::{Error, Result};
use dialtone_domain as model;

/// Live actors of one kind, by id.
pub(crate) struct Registry<A: Aggregate> {
    live: Mutex<HashMap<A::Id, Addr<AggregateActor<A>>>>,
    pub(crate) deadlines: Deadlines<A::Id>,
}

impl<A: Aggregate> Registry<A> {
    fn new() -> Self {
        Registry {
            live: Mutex::new(HashMap::new()),
            deadlines: Deadlines::new(),
        }
    }

    /// Removes `addr` for `id`, unless a newer actor has replaced it.
    pub(crate) fn forget(&self, id: A::Id, addr: &Addr<AggregateActor<A>>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.get(&id) == Some(addr) {
            live.remove(&id);
        }
    }

    fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

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
    domains: Arc<Registry<DomainAggregate>>,
    users: Arc<Registry<UserAggregate>>,
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
                domains: Arc::new(Registry::new()),
                users: Arc::new(Registry::new()),
                facts: Arc::new(Facts::default()),
            }),
        };
        // Only users have deadlines (contact expiry) today.
        tokio::spawn(deadlines::run::<UserAggregate>(
            directory.clone(),
            directory.inner.users.clone(),
        ));
        Ok(directory)
    }

    pub fn store(&self) -> &SharedStore {
        &self.inner.store
    }

    /// Stops every live actor after it saved a snapshot (shutdown), so that
    /// the next start loads quickly. Waits at most `timeout`.
    pub async fn passivate_all(&self, timeout: Duration) {
        let domains: Vec<_> = self
            .inner
            .domains
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let users: Vec<_> = self
            .inner
            .users
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        let all = async {
            let domain_stops = futures::future::join_all(domains.iter().map(|a| a.send(Passivate)));
            let user_stops = futures::future::join_all(users.iter().map(|a| a.send(Passivate)));
            futures::join!(domain_stops, user_stops);
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

    fn activate<A: Aggregate>(
        &self,
        registry: &Arc<Registry<A>>,
        id: A::Id,
    ) -> Addr<AggregateActor<A>> {
        let mut live = registry.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(addr) = live.get(&id) {
            if addr.connected() {
                return addr.clone();
            }
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut hasher);
        let arbiter = &self.inner.arbiters[(hasher.finish() as usize) % self.inner.arbiters.len()];
        let store = self.inner.store.clone();
        let reg = registry.clone();
        let idle = self.inner.config.idle_timeout;
        let facts = self.inner.facts.clone();
        let addr = AggregateActor::<A>::start_in_arbiter(arbiter, move |_ctx| {
            AggregateActor::new(id, store, reg, facts, idle)
        });
        live.insert(id, addr.clone());
        addr
    }

    pub(crate) async fn execute<A: Aggregate, R: Send + 'static>(
        &self,
        registry: &Arc<Registry<A>>,
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
            let addr = self.activate(registry, id);
            let msg = Execute::<A, R> {
                command: command.clone(),
                meta: meta.clone(),
                project: Box::new(project.clone()),
            };
            match addr.send(msg).await {
                Ok(result) => return result,
                Err(e) => {
                    registry.forget(id, &addr);
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
        registry: &Arc<Registry<A>>,
        id: A::Id,
        project: impl for<'a> Fn(Reply<'a, A::State>) -> R + Send + Sync + Clone + 'static,
    ) -> Result<R> {
        let mut attempt = 0;
        loop {
            let addr = self.activate(registry, id);
            let msg = Query::<A, R> {
                project: Box::new(project.clone()),
            };
            match addr.send(msg).await {
                Ok(result) => return result,
                Err(e) => {
                    registry.forget(id, &addr);
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
}
