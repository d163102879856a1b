//! Guessing a conference room's PIN by phone, limited across calls: the
//! strikes of each caller and of the room, kept in the room's domain
//! (`Domain::conference_pin_guards`), written as security events.
//!
//! The conference application allows three tries a call
//! (`dialtone_conference::caller::MAX_PIN_TRIES`); without this a caller
//! could dial again for ever. A lock-out of the whole room on a few wrong
//! PINs would let anyone who knows the number lock the meeting out, so
//! there are two counters:
//!
//! - **Per caller**: the authenticated user (`alice@example.com`), or, for
//!   a caller the node did not authenticate (a trunk, an anonymous SIP
//!   peer), the source IP address, which the caller cannot choose as it
//!   can its From header. [`CALLER_FAILURES_BEFORE_LOCKOUT`] wrong PINs in
//!   a row lock that caller out for [`LOCKOUT_US`], twice as long for each
//!   lock-out in a row (at most [`MAX_LOCKOUT_US`]); a right PIN clears its
//!   strikes, as a mailbox's (`mailbox::PIN_ATTEMPTS_BEFORE_LOCKOUT`).
//! - **Per room, unauthenticated callers together**: an attacker with many
//!   addresses gets [`ROOM_FAILURES_BEFORE_LOCKOUT`] wrong PINs, then PIN
//!   entry is locked for *unauthenticated* callers only (doubling in the
//!   same way). A right PIN does not clear it (an attacker would interleave
//!   a known member's success); quiet clears it: strikes are forgotten
//!   [`FORGET_AFTER_US`] after the last wrong PIN or lock-out. The domain's own users, who
//!   authenticate, keep dialling in with their own counters: the worst an
//!   attacker can do is make the room's anonymous dial-in wait, and an
//!   operator clears that ([`Command::Clear`]).
//!
//! While locked, every entry is refused, the right PIN too (else the lock
//! would only slow guessing down), and nothing is recorded: the lock-out
//! was. An empty entry (no digits: `#` alone, or the timeout) is no guess
//! and counts for nothing here.
//!
//! Pure: `now` is passed in; [`decide`] and [`evolve`] are the domain
//! aggregate's for these events.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// Wrong PINs in a row from one caller that lock it out.
pub const CALLER_FAILURES_BEFORE_LOCKOUT: u32 = 5;
/// Wrong PINs from unauthenticated callers together that lock PIN entry
/// to every unauthenticated caller of the room.
pub const ROOM_FAILURES_BEFORE_LOCKOUT: u32 = 20;
/// The first lock-out's length: 15 minutes.
pub const LOCKOUT_US: i64 = 15 * 60 * 1_000_000;
/// The longest lock-out: a day.
pub const MAX_LOCKOUT_US: i64 = 24 * 60 * 60 * 1_000_000;
/// Strikes are forgotten after this long without a wrong PIN or a
/// lock-out: a day.
pub const FORGET_AFTER_US: i64 = 24 * 60 * 60 * 1_000_000;
/// Callers with strikes kept per room; past it, the one whose last wrong
/// PIN is oldest is forgotten (an attacker with more addresses than this
/// meets the room's counter first).
pub const MAX_CALLERS: usize = 256;
/// Longest caller key kept (it may come from the network).
pub const MAX_CALLER_LEN: usize = 256;

/// Wrong PINs counted against a caller or a room.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strikes {
    /// Wrong PINs since the last right one, lock-out or forgetting.
    pub failures: u32,
    pub last_failure_at: Timestamp,
    /// PIN entry refused until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<Timestamp>,
    /// Lock-outs in a row: the next lasts [`LOCKOUT_US`] doubled this
    /// many times (at most [`MAX_LOCKOUT_US`]).
    pub lockouts: u32,
}

impl Strikes {
    /// Whether PIN entry is refused at `now`.
    pub fn is_locked(&self, now: Timestamp) -> bool {
        self.locked_until.is_some_and(|until| now < until)
    }

    /// Whether these strikes no longer count at `now`: quiet for
    /// [`FORGET_AFTER_US`] since the last wrong PIN and since the end of
    /// the last lock-out (counted from the lock-out's end, or an attacker
    /// would find the doubling undone each time a day-long one expires).
    pub fn is_forgotten(&self, now: Timestamp) -> bool {
        let quiet_since = self.locked_until.map_or(self.last_failure_at, |until| {
            until.max(self.last_failure_at)
        });
        now.saturating_sub(quiet_since) >= FORGET_AFTER_US
    }

    /// The strikes after one more wrong PIN at `now`; `threshold` wrong
    /// PINs in a row lock.
    pub fn strike(&self, now: Timestamp, threshold: u32) -> Strikes {
        let mut next = if self.is_forgotten(now) {
            Strikes::default()
        } else {
            self.clone()
        };
        next.failures = next.failures.saturating_add(1);
        next.last_failure_at = now;
        if next.failures >= threshold {
            let doublings = next.lockouts.min(16);
            let lockout_us = LOCKOUT_US
                .saturating_mul(1_i64 << doublings)
                .min(MAX_LOCKOUT_US);
            next.locked_until = Some(now.saturating_add(lockout_us));
            next.lockouts = next.lockouts.saturating_add(1);
            next.failures = 0;
        }
        next
    }
}

/// Who enters a PIN, as the guard counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinCaller {
    /// `user@domain` when authenticated, else the source IP address.
    pub key: String,
    pub authenticated: bool,
}

impl PinCaller {
    /// The key as kept: printable, at most [`MAX_CALLER_LEN`] characters.
    fn clean_key(&self) -> String {
        self.key
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_CALLER_LEN)
            .collect()
    }
}

/// A room's strikes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PinGuard {
    /// By caller key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub callers: BTreeMap<String, Strikes>,
    /// Unauthenticated callers' wrong PINs together.
    #[serde(default)]
    pub room: Strikes,
}

impl PinGuard {
    /// Until when `caller` may not enter a PIN, if it is locked out at
    /// `now` (itself, or as an unauthenticated caller of a locked room).
    pub fn locked_until(&self, caller: &PinCaller, now: Timestamp) -> Option<Timestamp> {
        let own = self
            .callers
            .get(&caller.clean_key())
            .filter(|s| s.is_locked(now))
            .and_then(|s| s.locked_until);
        let room = (!caller.authenticated && self.room.is_locked(now))
            .then_some(self.room.locked_until)
            .flatten();
        own.max(room)
    }

    /// Whether nothing is counted.
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty() && self.room == Strikes::default()
    }
}

/// What the application (or an operator) tells the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `caller` entered a PIN (some digits), right or wrong.
    Entered { caller: PinCaller, right: bool },
    /// An operator clears one caller's strikes, or (`None`) every caller's
    /// and the room's.
    Clear { caller: Option<String> },
}

/// What happened to a room's guard (the domain wraps these with the
/// room's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A wrong PIN: the caller's strikes after it, and the room's when the
    /// caller is unauthenticated.
    Rejected {
        caller: String,
        authenticated: bool,
        strikes: Strikes,
        room: Option<Strikes>,
        at: Timestamp,
    },
    /// A right PIN from a caller with strikes: they are cleared.
    Accepted { caller: String },
    /// An operator cleared strikes and lock-outs.
    Cleared {
        caller: Option<String>,
        at: Timestamp,
    },
}

/// Refused: PIN entry is locked out for this caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedOut {
    pub until: Timestamp,
}

/// Decides a command on `guard` at `now`.
pub fn decide(
    guard: &PinGuard,
    command: &Command,
    now: Timestamp,
) -> Result<Option<Change>, LockedOut> {
    match command {
        Command::Entered { caller, right } => {
            if let Some(until) = guard.locked_until(caller, now) {
                return Err(LockedOut { until });
            }
            let key = caller.clean_key();
            if *right {
                return Ok(guard
                    .callers
                    .contains_key(&key)
                    .then_some(Change::Accepted { caller: key }));
            }
            let strikes = guard
                .callers
                .get(&key)
                .cloned()
                .unwrap_or_default()
                .strike(now, CALLER_FAILURES_BEFORE_LOCKOUT);
            let room = (!caller.authenticated)
                .then(|| guard.room.strike(now, ROOM_FAILURES_BEFORE_LOCKOUT));
            Ok(Some(Change::Rejected {
                caller: key,
                authenticated: caller.authenticated,
                strikes,
                room,
                at: now,
            }))
        }
        Command::Clear { caller } => {
            let nothing = match caller {
                Some(key) => !guard.callers.contains_key(key),
                None => guard.is_empty(),
            };
            Ok((!nothing).then(|| Change::Cleared {
                caller: caller.clone(),
                at: now,
            }))
        }
    }
}

/// Applies a change to the guard.
pub fn evolve(mut guard: PinGuard, change: &Change) -> PinGuard {
    match change {
        Change::Rejected {
            caller,
            strikes,
            room,
            at,
            ..
        } => {
            guard.callers.insert(caller.clone(), strikes.clone());
            if let Some(room) = room {
                guard.room = room.clone();
            }
            guard.callers.retain(|_, s| !s.is_forgotten(*at));
            while guard.callers.len() > MAX_CALLERS {
                let oldest = guard
                    .callers
                    .iter()
                    .min_by_key(|(_, s)| s.last_failure_at)
                    .map(|(k, _)| k.clone());
                match oldest {
                    Some(key) => guard.callers.remove(&key),
                    None => break,
                };
            }
        }
        Change::Accepted { caller } => {
            guard.callers.remove(caller);
        }
        Change::Cleared {
            caller: Some(key), ..
        } => {
            guard.callers.remove(key);
        }
        Change::Cleared { caller: None, .. } => guard = PinGuard::default(),
    }
    guard
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: Timestamp = 1_765_000_000_000_000;
    const MIN: i64 = 60 * 1_000_000;

    fn user(name: &str) -> PinCaller {
        PinCaller {
            key: format!("{name}@example.com"),
            authenticated: true,
        }
    }

    fn address(ip: &str) -> PinCaller {
        PinCaller {
            key: ip.to_owned(),
            authenticated: false,
        }
    }

    fn enter(guard: PinGuard, caller: &PinCaller, right: bool, now: Timestamp) -> PinGuard {
        let command = Command::Entered {
            caller: caller.clone(),
            right,
        };
        match decide(&guard, &command, now).unwrap() {
            Some(change) => evolve(guard, &change),
            None => guard,
        }
    }

    #[test]
    fn five_wrong_pins_lock_a_caller_out_and_the_right_pin_is_refused_while_locked() {
        let alice = user("alice");
        let mut guard = PinGuard::default();
        for n in 1..CALLER_FAILURES_BEFORE_LOCKOUT {
            guard = enter(guard, &alice, false, T0 + i64::from(n));
            assert_eq!(guard.callers[&alice.key].failures, n);
            assert_eq!(guard.locked_until(&alice, T0 + 10), None);
        }
        guard = enter(guard, &alice, false, T0 + 5);
        let until = T0 + 5 + LOCKOUT_US;
        assert_eq!(guard.locked_until(&alice, T0 + 6), Some(until));
        // Locked: the right PIN too, and nothing is recorded.
        let right = Command::Entered {
            caller: alice.clone(),
            right: true,
        };
        assert_eq!(decide(&guard, &right, until - 1), Err(LockedOut { until }));
        // Others are not locked out; authenticated callers never count
        // against the room.
        assert_eq!(guard.locked_until(&user("bob"), T0 + 6), None);
        assert_eq!(guard.room, Strikes::default());
        // Once it expires, the right PIN is taken and clears the strikes.
        assert_eq!(
            decide(&guard, &right, until),
            Ok(Some(Change::Accepted {
                caller: alice.key.clone()
            }))
        );
        let guard = enter(guard, &alice, true, until);
        assert!(guard.is_empty());
    }

    #[test]
    fn lockouts_in_a_row_double_up_to_a_day() {
        let caller = address("192.0.2.7");
        let mut guard = PinGuard::default();
        let mut now = T0;
        let mut lengths = Vec::new();
        for _ in 0..10 {
            for _ in 0..CALLER_FAILURES_BEFORE_LOCKOUT {
                guard = enter(guard, &caller, false, now);
            }
            let until = guard.locked_until(&caller, now).unwrap();
            lengths.push((until - now) / MIN);
            now = until;
        }
        assert_eq!(
            lengths,
            [15, 30, 60, 120, 240, 480, 960, 1440, 1440, 1440],
            "minutes"
        );
        // A quiet day after the last lock-out ended: counting starts over.
        let after = now + FORGET_AFTER_US;
        guard = enter(guard, &caller, false, after);
        assert_eq!(guard.callers[&caller.key].lockouts, 0);
        assert_eq!(guard.callers[&caller.key].failures, 1);
    }

    #[test]
    fn unauthenticated_callers_together_lock_the_room_for_unauthenticated_callers_only() {
        let mut guard = PinGuard::default();
        // Twenty addresses, one wrong PIN each: none is locked itself.
        for n in 0..ROOM_FAILURES_BEFORE_LOCKOUT {
            let caller = address(&format!("198.51.100.{n}"));
            assert_eq!(guard.locked_until(&caller, T0), None);
            guard = enter(guard, &caller, false, T0 + i64::from(n));
        }
        let at = T0 + i64::from(ROOM_FAILURES_BEFORE_LOCKOUT) - 1;
        let until = at + LOCKOUT_US;
        let stranger = address("203.0.113.9");
        assert_eq!(guard.locked_until(&stranger, at + 1), Some(until));
        // A member who authenticates still gets in with the right PIN.
        let alice = user("alice");
        assert_eq!(guard.locked_until(&alice, at + 1), None);
        let right = Command::Entered {
            caller: alice,
            right: true,
        };
        assert_eq!(decide(&guard, &right, at + 1), Ok(None));
        // An operator clears it.
        let cleared = decide(&guard, &Command::Clear { caller: None }, at + 2)
            .unwrap()
            .unwrap();
        let guard = evolve(guard, &cleared);
        assert!(guard.is_empty());
        assert_eq!(guard.locked_until(&stranger, at + 3), None);
        assert_eq!(
            decide(&guard, &Command::Clear { caller: None }, at + 4),
            Ok(None)
        );
    }

    #[test]
    fn strikes_are_forgotten_after_a_quiet_day_and_the_callers_kept_are_bounded() {
        let caller = address("192.0.2.7");
        let mut guard = PinGuard::default();
        for n in 0..4 {
            guard = enter(guard, &caller, false, T0 + n);
        }
        guard = enter(guard, &caller, false, T0 + 3 + FORGET_AFTER_US);
        assert_eq!(guard.callers[&caller.key].failures, 1, "counting again");
        let mut guard = PinGuard::default();
        for n in 0..(MAX_CALLERS as i64 + 10) {
            guard = enter(guard, &user(&format!("u{n}")), false, T0 + n);
        }
        assert_eq!(guard.callers.len(), MAX_CALLERS);
        assert!(!guard.callers.contains_key("u0@example.com"));
        assert!(guard
            .callers
            .contains_key(&format!("u{}@example.com", MAX_CALLERS + 9)));
    }
}
