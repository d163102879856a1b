//! Defences of the gateway against abuse from the network: per-source
//! request rate limits (token buckets) and lock-outs after failed digest
//! authentications (password guessing, extension scanning).
//!
//! - **Rate limit.** Every source IP address has a token bucket; a message
//!   that finds it empty is dropped before it is parsed (UDP clients
//!   retransmit; a flood only costs its sender). One flooding address does
//!   not slow the others down.
//! - **Lock-outs.** Failed authentications are counted per (source, realm,
//!   user) and per source in a fixed window. At `user_source_threshold`
//!   failures that user is refused (403) from that source, at
//!   `source_threshold` failures everything from the source is refused, for
//!   `lockout` (cooling-off). A lock-out is reported once (a
//!   [`Lockout`]), so that an attack produces one security event per
//!   locked source, not one per guess.
//!
//! Memory is bounded: at most `max_tracked` counters and locks per shard
//! family; beyond that the oldest (expired first) are dropped.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;

/// Settings of the [`Guard`] (from the gateway's configuration).
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    /// Failures of one user from one source within `window` that lock that
    /// user out for that source (0: never).
    pub user_source_threshold: u32,
    /// Failures from one source (any users) within `window` that lock the
    /// whole source out (0: never).
    pub source_threshold: u32,
    pub window: Duration,
    /// How long a lock-out lasts.
    pub lockout: Duration,
    /// Messages per second one source IP may send (0: no limit).
    pub source_rate: u32,
    /// Burst allowance of the rate limit (messages).
    pub source_burst: u32,
    /// Bound on tracked counters and locks (memory).
    pub max_tracked: usize,
}

impl Default for GuardConfig {
    fn default() -> Self {
        GuardConfig {
            user_source_threshold: 5,
            source_threshold: 20,
            window: Duration::from_secs(60),
            lockout: Duration::from_secs(300),
            source_rate: 5_000,
            source_burst: 10_000,
            max_tracked: 200_000,
        }
    }
}

/// What was locked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockScope {
    /// One user (of one realm) from one source.
    User { realm: String, user: String },
    /// Every request from the source.
    Source,
}

/// A new lock-out (reported once per lock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    pub source: IpAddr,
    pub scope: LockScope,
    /// The realm of the failure that triggered it.
    pub realm: String,
    /// Failures counted in the window.
    pub failures: u32,
    pub duration: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Source(IpAddr),
    User(IpAddr, Box<str>, Box<str>),
}

struct Counter {
    window_start: Instant,
    count: u32,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
struct Shard {
    failures: HashMap<Key, Counter>,
    locks: HashMap<Key, Instant>,
    buckets: HashMap<IpAddr, Bucket>,
}

/// See the module documentation.
pub struct Guard {
    cfg: GuardConfig,
    shards: Vec<Mutex<Shard>>,
    hasher: std::collections::hash_map::RandomState,
}

impl Guard {
    pub fn new(cfg: GuardConfig) -> Guard {
        Guard {
            cfg,
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    pub fn config(&self) -> &GuardConfig {
        &self.cfg
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<Shard> {
        &self.shards[(self.hasher.hash_one(ip) as usize) % SHARDS]
    }

    fn per_shard_limit(&self) -> usize {
        (self.cfg.max_tracked / SHARDS).max(16)
    }

    /// Takes a token for a message from `ip`; false: drop the message.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> bool {
        if self.cfg.source_rate == 0 {
            return true;
        }
        let Ok(mut shard) = self.shard(ip).lock() else {
            return true;
        };
        let rate = f64::from(self.cfg.source_rate);
        let burst = f64::from(self.cfg.source_burst.max(self.cfg.source_rate));
        if !shard.buckets.contains_key(&ip) && shard.buckets.len() >= self.per_shard_limit() {
            // Full buckets are worth nothing: forget those.
            shard
                .buckets
                .retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
            if shard.buckets.len() >= self.per_shard_limit() {
                return true; // too many sources to track: fail open
            }
        }
        let bucket = shard.buckets.entry(ip).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.duration_since(bucket.at).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refill).min(burst);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Whether requests from `ip` for `user@realm` are refused now.
    pub fn locked(&self, ip: IpAddr, realm: &str, user: &str, now: Instant) -> bool {
        let Ok(shard) = self.shard(ip).lock() else {
            return false;
        };
        if shard.locks.is_empty() {
            return false;
        }
        let until = |k: &Key| shard.locks.get(k).is_some_and(|u| *u > now);
        until(&Key::Source(ip)) || until(&Key::User(ip, realm.into(), user.into()))
    }

    /// Counts a failed authentication; returns the lock-out it starts, if
    /// any (the source's wins when both start at once).
    pub fn failure(&self, ip: IpAddr, realm: &str, user: &str, now: Instant) -> Option<Lockout> {
        let Ok(mut shard) = self.shard(ip).lock() else {
            return None;
        };
        let limit = self.per_shard_limit();
        let window = self.cfg.window;
        let count = |shard: &mut Shard, key: Key| -> u32 {
            if !shard.failures.contains_key(&key) && shard.failures.len() >= limit {
                shard
                    .failures
                    .retain(|_, c| now.duration_since(c.window_start) < window);
                if shard.failures.len() >= limit {
                    if let Some(k) = shard.failures.keys().next().cloned() {
                        shard.failures.remove(&k);
                    }
                }
            }
            let c = shard.failures.entry(key).or_insert(Counter {
                window_start: now,
                count: 0,
            });
            if now.duration_since(c.window_start) >= window {
                c.window_start = now;
                c.count = 0;
            }
            c.count += 1;
            c.count
        };
        let per_source = count(&mut shard, Key::Source(ip));
        let user_key = Key::User(ip, realm.into(), user.into());
        let per_user = count(&mut shard, user_key.clone());
        let (key, scope, failures) = if self.cfg.source_threshold > 0
            && per_source >= self.cfg.source_threshold
        {
            (Key::Source(ip), LockScope::Source, per_source)
        } else if self.cfg.user_source_threshold > 0 && per_user >= self.cfg.user_source_threshold {
            (
                user_key,
                LockScope::User {
                    realm: realm.to_owned(),
                    user: user.to_owned(),
                },
                per_user,
            )
        } else {
            return None;
        };
        if shard.locks.get(&key).is_some_and(|u| *u > now) {
            return None; // already locked: reported when it started
        }
        if shard.locks.len() >= limit {
            shard.locks.retain(|_, u| *u > now);
            if shard.locks.len() >= limit {
                if let Some(k) = shard.locks.keys().next().cloned() {
                    shard.locks.remove(&k);
                }
            }
        }
        shard.locks.insert(key.clone(), now + self.cfg.lockout);
        shard.failures.remove(&key);
        Some(Lockout {
            source: ip,
            scope,
            realm: realm.to_owned(),
            failures,
            duration: self.cfg.lockout,
        })
    }

    /// Sources and users locked out now (metrics).
    pub fn locked_count(&self, now: Instant) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .map(|s| s.locks.values().filter(|u| **u > now).count())
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Forgets expired counters, locks and full buckets (called
    /// periodically, so that memory goes back down after an attack).
    pub fn sweep(&self, now: Instant) {
        let rate = f64::from(self.cfg.source_rate);
        let burst = f64::from(self.cfg.source_burst.max(self.cfg.source_rate));
        for s in &self.shards {
            if let Ok(mut s) = s.lock() {
                let window = self.cfg.window;
                s.failures
                    .retain(|_, c| now.duration_since(c.window_start) < window);
                s.locks.retain(|_, u| *u > now);
                s.buckets.retain(|_, b| {
                    b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    #[test]
    fn five_failures_lock_the_user_out_for_that_source_only() {
        let g = Guard::new(GuardConfig::default());
        let t = Instant::now();
        for _ in 0..4 {
            assert_eq!(g.failure(ip(1), "example.com", "alice", t), None);
        }
        let lock = g.failure(ip(1), "example.com", "alice", t).unwrap();
        assert_eq!(
            lock.scope,
            LockScope::User {
                realm: "example.com".into(),
                user: "alice".into()
            }
        );
        assert_eq!(lock.failures, 5);
        assert!(g.locked(ip(1), "example.com", "alice", t));
        // Other users from there, and alice from elsewhere, go on.
        assert!(!g.locked(ip(1), "example.com", "bob", t));
        assert!(!g.locked(ip(2), "example.com", "alice", t));
        // Reported once.
        assert_eq!(g.failure(ip(1), "example.com", "alice", t), None);
        // The cooling-off ends.
        assert!(!g.locked(ip(1), "example.com", "alice", t + Duration::from_secs(301)));
    }

    #[test]
    fn twenty_failures_across_users_lock_the_source() {
        let g = Guard::new(GuardConfig::default());
        let t = Instant::now();
        let mut lock = None;
        for i in 0..20 {
            // A scanner: one guess per extension.
            lock = g.failure(ip(3), "example.com", &format!("{}", 100 + i), t);
            if i < 19 {
                assert_eq!(lock, None, "{i}");
            }
        }
        let lock = lock.unwrap();
        assert_eq!(lock.scope, LockScope::Source);
        assert!(g.locked(ip(3), "example.com", "anyone", t));
        assert!(!g.locked(ip(4), "example.com", "anyone", t));
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let g = Guard::new(GuardConfig::default());
        let t = Instant::now();
        for i in 0..10u64 {
            let at = t + Duration::from_secs(61 * i);
            assert_eq!(g.failure(ip(5), "example.com", "alice", at), None);
        }
    }

    #[test]
    fn the_rate_limit_drops_a_flood_and_refills() {
        let g = Guard::new(GuardConfig {
            source_rate: 100,
            source_burst: 100,
            ..GuardConfig::default()
        });
        let t = Instant::now();
        let admitted = (0..1000).filter(|_| g.admit(ip(6), t)).count();
        assert_eq!(admitted, 100);
        // Another source is not affected.
        assert!(g.admit(ip(7), t));
        // Half a second later, 50 more.
        let later = t + Duration::from_millis(500);
        let admitted = (0..1000).filter(|_| g.admit(ip(6), later)).count();
        assert_eq!(admitted, 50);
    }

    #[test]
    fn memory_stays_bounded_under_many_sources() {
        let g = Guard::new(GuardConfig {
            max_tracked: 1_600,
            ..GuardConfig::default()
        });
        let t = Instant::now();
        for i in 0..100_000u32 {
            let a = IpAddr::from(i.to_be_bytes());
            g.failure(a, "example.com", "alice", t);
        }
        for s in &g.shards {
            let s = s.lock().unwrap();
            assert!(s.failures.len() <= 100, "{}", s.failures.len());
        }
        g.sweep(t + Duration::from_secs(3600));
        assert_eq!(g.locked_count(t + Duration::from_secs(3600)), 0);
    }
}
