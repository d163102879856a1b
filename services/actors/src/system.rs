//! The actix system: one thread running `System`, and arbiters (one event
//! loop thread each) on which actors are started.

use std::sync::mpsc;
use std::thread::JoinHandle;

use actix_rt::{Arbiter, ArbiterHandle, System};

use crate::{Error, Result};

/// A running actix system with its arbiters. Dropping it does not stop it;
/// call [`ActorSystem::shutdown`].
pub struct ActorSystem {
    system: System,
    arbiters: Vec<ArbiterHandle>,
    thread: Option<JoinHandle<()>>,
}

impl ActorSystem {
    /// Starts the system thread and `arbiters` arbiter threads (at least 1).
    pub fn start(arbiters: usize) -> Result<Self> {
        let count = arbiters.max(1);
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("actix-system".into())
            .spawn(move || {
                let runner = System::new();
                let mut handles = Vec::with_capacity(count);
                let mut arbiters = Vec::with_capacity(count);
                for _ in 0..count {
                    match Arbiter::try_new() {
                        Ok(arbiter) => {
                            handles.push(arbiter.handle());
                            arbiters.push(arbiter);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e.to_string()));
                            return;
                        }
                    }
                }
                let _ = tx.send(Ok((System::current(), handles)));
                if let Err(e) = runner.run() {
                    tracing::error!(error = %e, "actix system stopped with an error");
                }
                for arbiter in arbiters {
                    arbiter.stop();
                    let _ = arbiter.join();
                }
            })
            .map_err(|e| Error::Unavailable(format!("cannot start actor system: {e}")))?;
        let (system, arbiters) = rx
            .recv()
            .map_err(|_| Error::Unavailable("actor system thread died".into()))?
            .map_err(|e| Error::Unavailable(format!("cannot start arbiter: {e}")))?;
        Ok(ActorSystem {
            system,
            arbiters,
            thread: Some(thread),
        })
    }

    /// The arbiters actors are spread over.
    pub fn arbiters(&self) -> &[ArbiterHandle] {
        &self.arbiters
    }

    /// Stops every arbiter and the system, and waits for their threads.
    pub fn shutdown(mut self) {
        self.system.stop();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
