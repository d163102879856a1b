//! The connections bindings were registered over, in memory.
//!
//! A binding registered over a connection-oriented transport is reached on
//! that connection while it is open (RFC 5626: the only way to a phone
//! behind NAT). A connection means nothing after a restart, and an actor
//! that passivates reloads its bindings from the log, so the connections
//! are not part of the user's state: this table, shared by the node's SIP
//! side (which fills it on each REGISTER and routes calls by it) and the
//! status API, holds them while the node runs.
//!
//! When a connection closes, [`Flows::closed`] says which bindings of which
//! users were on it (an index by connection: no scan of the users); the
//! caller then removes those bindings through their users' actors.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Mutex;

use dialtone_domain::registration::Key;
use dialtone_domain::UserId;

/// The connection a binding's REGISTER came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowFact {
    /// The SIP gateway's connection id.
    pub connection: u64,
    /// Our address the connection is on.
    pub local: Option<SocketAddr>,
    /// The phone's address (after NAT).
    pub remote: SocketAddr,
}

/// Which connection each connection-oriented binding is reached on.
#[derive(Default)]
pub struct Flows {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    by_binding: HashMap<(UserId, Key), FlowFact>,
    by_connection: HashMap<u64, HashSet<(UserId, Key)>>,
}

impl Inner {
    fn unlink(&mut self, user: UserId, key: &Key, connection: u64) {
        if let Some(set) = self.by_connection.get_mut(&connection) {
            set.remove(&(user, key.clone()));
            if set.is_empty() {
                self.by_connection.remove(&connection);
            }
        }
    }
}

impl Flows {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The binding `key` of `user` was registered or refreshed over `flow`
    /// (durably): from now on it is reached there. A flow it had before is
    /// no longer its flow.
    pub fn registered(&self, user: UserId, key: Key, flow: FlowFact) {
        let mut inner = self.lock();
        if let Some(old) = inner.by_binding.insert((user, key.clone()), flow) {
            if old.connection != flow.connection {
                inner.unlink(user, &key, old.connection);
            }
        }
        inner
            .by_connection
            .entry(flow.connection)
            .or_default()
            .insert((user, key));
    }

    /// The binding `key` of `user` was refreshed over a connectionless
    /// transport, or removed: it has no connection any more.
    pub fn forget(&self, user: UserId, key: &Key) {
        let mut inner = self.lock();
        if let Some(old) = inner.by_binding.remove(&(user, key.clone())) {
            inner.unlink(user, key, old.connection);
        }
    }

    /// Every binding of `user` was removed.
    pub fn forget_user(&self, user: UserId) {
        let mut inner = self.lock();
        let keys: Vec<Key> = inner
            .by_binding
            .keys()
            .filter(|(u, _)| *u == user)
            .map(|(_, k)| k.clone())
            .collect();
        for key in keys {
            if let Some(old) = inner.by_binding.remove(&(user, key.clone())) {
                inner.unlink(user, &key, old.connection);
            }
        }
    }

    /// The connection the binding `key` of `user` is reached on, while
    /// the node knows one.
    pub fn of(&self, user: UserId, key: &Key) -> Option<FlowFact> {
        self.lock().by_binding.get(&(user, key.clone())).copied()
    }

    /// Connection `connection` closed: the bindings that were reached on
    /// it, by user (forgotten here).
    pub fn closed(&self, connection: u64) -> HashMap<UserId, Vec<Key>> {
        let mut inner = self.lock();
        let mut gone: HashMap<UserId, Vec<Key>> = HashMap::new();
        for (user, key) in inner.by_connection.remove(&connection).unwrap_or_default() {
            inner.by_binding.remove(&(user, key.clone()));
            gone.entry(user).or_default().push(key);
        }
        gone
    }

    /// How many bindings have a connection (tests, metrics).
    pub fn len(&self) -> usize {
        self.lock().by_binding.len()
    }

    /// Whether no binding has a connection.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(connection: u64) -> FlowFact {
        FlowFact {
            connection,
            local: None,
            remote: "198.51.100.7:40000".parse().unwrap(),
        }
    }

    fn key(uri: &str) -> Key {
        Key::of(uri, None, None)
    }

    #[test]
    fn a_closed_connection_names_its_bindings_once() {
        let flows = Flows::default();
        let (alice, bob) = (
            UserId(uuid::Uuid::from_u128(1)),
            UserId(uuid::Uuid::from_u128(2)),
        );
        flows.registered(alice, key("sip:a@10.0.0.2"), flow(7));
        flows.registered(bob, key("sip:b@10.0.0.3"), flow(7));
        flows.registered(alice, key("sip:a2@10.0.0.2"), flow(8));
        let gone = flows.closed(7);
        assert_eq!(gone.len(), 2);
        assert_eq!(gone[&alice], vec![key("sip:a@10.0.0.2")]);
        assert!(flows.closed(7).is_empty());
        assert_eq!(flows.of(alice, &key("sip:a2@10.0.0.2")), Some(flow(8)));
        assert_eq!(flows.len(), 1);
    }

    #[test]
    fn a_binding_moved_to_another_connection_is_not_taken_by_the_old_one() {
        let flows = Flows::default();
        let alice = UserId(uuid::Uuid::from_u128(1));
        flows.registered(alice, key("sip:a@10.0.0.2"), flow(7));
        flows.registered(alice, key("sip:a@10.0.0.2"), flow(9));
        assert!(flows.closed(7).is_empty());
        assert_eq!(flows.of(alice, &key("sip:a@10.0.0.2")), Some(flow(9)));
        flows.forget(alice, &key("sip:a@10.0.0.2"));
        assert!(flows.closed(9).is_empty());
        flows.registered(alice, key("sip:a@10.0.0.2"), flow(10));
        flows.forget_user(alice);
        assert!(flows.is_empty() && flows.closed(10).is_empty());
    }
}
