//! Stateless digest nonces plus a bounded nonce-count table.
//!
//! A nonce is `hex(issued_ms | random | HMAC-SHA256(secret, realm | issued_ms | random)[..16])`:
//! the server keeps no state to check that it issued a nonce for a realm and
//! how old it is (nonces survive nothing but time, a restart included).
//!
//! Replay protection needs state: the [`Nonces`] table remembers, per nonce
//! that was used, the highest `nc` seen, and refuses a count that does not
//! increase. The table is sharded and bounded: entries leave it when their
//! nonce expires, or, when a shard is full, the oldest entry is evicted and
//! the shard's *watermark* rises to its issue time. A nonce issued at or
//! before the watermark that is not in the table is treated as stale, so an
//! evicted nonce can never be replayed: the client just gets a fresh nonce
//! (`stale=true`) one round trip early.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Default nonce lifetime (RFC 7616 leaves it to the server; 5 minutes is
/// long enough for a phone's re-REGISTER after a 401 and short enough to
/// bound the table).
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);
/// Default number of used nonces remembered for nc checks (about 64 bytes
/// each).
pub const DEFAULT_TABLE_CAPACITY: usize = 262_144;
const SHARDS: usize = 16;
const RAW_LEN: usize = 8 + 8 + 16;
/// Length of a nonce (hex of its raw bytes).
pub const NONCE_LEN: usize = RAW_LEN * 2;

/// Hashes a [`NonceId`] cheaply: ids reach the table only after their HMAC
/// was checked, so their random part is ours and a plain multiplicative mix
/// is enough (no flooding by chosen keys).
#[derive(Default, Clone, Copy)]
struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// Identifies a nonce in the nc table: its issue time and random part.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NonceId {
    issued_ms: u64,
    random: u64,
}

/// Result of checking a nonce's authenticity and age.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Ours, for this realm, and not expired.
    Fresh(NonceId),
    /// Ours, but expired: answer 401 with `stale=true`.
    Stale,
    /// Not ours, not for this realm, or garbage.
    Invalid,
}

/// Result of recording a nonce count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NcCheck {
    Ok,
    /// `nc` did not increase: a replay (or reordering): refuse.
    Replay,
    /// The nonce was forgotten (evicted): treat as stale.
    Forgotten,
}

#[derive(Default)]
struct Shard {
    /// nonce -> (highest nc, issued_ms)
    map: HashMap<NonceId, u32, std::hash::BuildHasherDefault<IdHasher>>,
    /// First-use order, for time-based and capacity eviction.
    order: VecDeque<NonceId>,
    watermark_ms: u64,
}

/// Issues and checks nonces; holds the nc table.
pub struct Nonces {
    mac: HmacSha256,
    lifetime_ms: u64,
    shard_capacity: usize,
    shards: Vec<Mutex<Shard>>,
    opaque: String,
}

impl Nonces {
    pub fn new(secret: &[u8], lifetime: Duration, table_capacity: usize) -> Nonces {
        // HMAC's own key normalisation (RFC 2104): a key longer than the
        // block is hashed, a shorter one zero-padded. Doing it here lets us
        // use the infallible fixed-size constructor.
        let mut key = hmac::digest::Key::<HmacSha256>::default();
        if secret.len() <= key.len() {
            key[..secret.len()].copy_from_slice(secret);
        } else {
            key[..32].copy_from_slice(&<Sha256 as sha2::Digest>::digest(secret));
        }
        let mac = <HmacSha256 as hmac::digest::KeyInit>::new(&key);
        let mut o = mac.clone();
        o.update(b"dialtone opaque");
        let opaque = hex::encode(&o.finalize().into_bytes()[..8]);
        Nonces {
            mac,
            lifetime_ms: lifetime.as_millis().min(u64::MAX as u128) as u64,
            shard_capacity: (table_capacity / SHARDS).max(1),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            opaque,
        }
    }

    /// The `opaque` value put in challenges (constant per secret).
    pub fn opaque(&self) -> &str {
        &self.opaque
    }

    fn tag(&self, realm: &str, issued_ms: u64, random: u64) -> [u8; 16] {
        let mut m = self.mac.clone();
        m.update(realm.as_bytes());
        m.update(&[0]);
        m.update(&issued_ms.to_be_bytes());
        m.update(&random.to_be_bytes());
        let full = m.finalize().into_bytes();
        let mut t = [0u8; 16];
        t.copy_from_slice(&full[..16]);
        t
    }

    /// A new nonce for `realm`, issued at `now_ms` (Unix milliseconds).
    pub fn issue(&self, realm: &str, now_ms: u64) -> String {
        self.issue_with(realm, now_ms, rand::random())
    }

    /// [`Nonces::issue`] into a stack buffer (no heap): the nonce is the
    /// returned text.
    pub fn issue_into<'o>(
        &self,
        realm: &str,
        now_ms: u64,
        out: &'o mut [u8; NONCE_LEN],
    ) -> &'o str {
        self.issue_raw(realm, now_ms, rand::random(), out)
    }

    fn issue_with(&self, realm: &str, now_ms: u64, random: u64) -> String {
        let mut out = [0u8; NONCE_LEN];
        self.issue_raw(realm, now_ms, random, &mut out).to_owned()
    }

    fn issue_raw<'o>(
        &self,
        realm: &str,
        now_ms: u64,
        random: u64,
        out: &'o mut [u8; NONCE_LEN],
    ) -> &'o str {
        let mut raw = [0u8; RAW_LEN];
        raw[..8].copy_from_slice(&now_ms.to_be_bytes());
        raw[8..16].copy_from_slice(&random.to_be_bytes());
        raw[16..].copy_from_slice(&self.tag(realm, now_ms, random));
        // Lengths match (2 hex digits per byte), and hex is ASCII.
        let _ = hex::encode_to_slice(raw, &mut out[..]);
        std::str::from_utf8(&out[..]).unwrap_or_default()
    }

    /// Checks that `nonce` was issued by us for `realm` and is not expired.
    pub fn check(&self, nonce: &str, realm: &str, now_ms: u64) -> NonceCheck {
        let mut raw = [0u8; RAW_LEN];
        if nonce.len() != RAW_LEN * 2 || hex::decode_to_slice(nonce, &mut raw).is_err() {
            return NonceCheck::Invalid;
        }
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&raw[..8]);
        let issued_ms = u64::from_be_bytes(b8);
        b8.copy_from_slice(&raw[8..16]);
        let random = u64::from_be_bytes(b8);
        let tag = self.tag(realm, issued_ms, random);
        if !bool::from(tag.ct_eq(&raw[16..])) {
            return NonceCheck::Invalid;
        }
        // A nonce from the future can only come from us with a clock that
        // went back; accept it within one lifetime.
        if issued_ms > now_ms.saturating_add(self.lifetime_ms) {
            return NonceCheck::Invalid;
        }
        if now_ms.saturating_sub(issued_ms) > self.lifetime_ms {
            return NonceCheck::Stale;
        }
        NonceCheck::Fresh(NonceId { issued_ms, random })
    }

    /// Records `nc` for a fresh nonce: it must be greater than any count
    /// seen before for that nonce.
    pub fn use_nc(&self, id: NonceId, nc: u32, now_ms: u64) -> NcCheck {
        if nc == 0 {
            return NcCheck::Replay;
        }
        let idx = (id.random as usize) % SHARDS;
        let Ok(mut shard) = self.shards[idx].lock() else {
            // A poisoned lock means a panic elsewhere; refuse safely.
            return NcCheck::Forgotten;
        };
        let shard = &mut *shard;
        // Drop expired entries from the front (first-use order ~ issue order).
        while let Some(front) = shard.order.front().copied() {
            let expired = now_ms.saturating_sub(front.issued_ms) > self.lifetime_ms;
            let gone = !shard.map.contains_key(&front);
            if expired || gone {
                shard.order.pop_front();
                shard.map.remove(&front);
            } else {
                break;
            }
        }
        if let Some(last) = shard.map.get_mut(&id) {
            if nc <= *last {
                return NcCheck::Replay;
            }
            *last = nc;
            return NcCheck::Ok;
        }
        if id.issued_ms <= shard.watermark_ms {
            return NcCheck::Forgotten;
        }
        while shard.map.len() >= self.shard_capacity {
            let Some(old) = shard.order.pop_front() else {
                break;
            };
            if shard.map.remove(&old).is_some() {
                shard.watermark_ms = shard.watermark_ms.max(old.issued_ms);
            }
        }
        if id.issued_ms <= shard.watermark_ms {
            return NcCheck::Forgotten;
        }
        shard.map.insert(id, nc);
        shard.order.push_back(id);
        NcCheck::Ok
    }

    /// Number of nonces in the nc table (for tests and metrics).
    pub fn table_len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map(|s| s.map.len()).unwrap_or(0))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nonces() -> Nonces {
        Nonces::new(b"secret", Duration::from_secs(300), 1024)
    }

    #[test]
    fn key_normalisation_matches_hmac() {
        // Our fixed-size key set-up must equal HMAC's own for short and long
        // secrets.
        for secret in [&b"short"[..], &[7u8; 64][..], &[9u8; 100][..]] {
            let ours = Nonces::new(secret, DEFAULT_LIFETIME, 16);
            let mut m = ours.mac.clone();
            m.update(b"x");
            let mut reference = <HmacSha256 as Mac>::new_from_slice(secret).unwrap();
            reference.update(b"x");
            assert_eq!(m.finalize().into_bytes(), reference.finalize().into_bytes());
        }
    }

    #[test]
    fn fresh_then_stale() {
        let n = nonces();
        let v = n.issue("example.test", 1_000_000);
        assert!(matches!(
            n.check(&v, "example.test", 1_000_000),
            NonceCheck::Fresh(_)
        ));
        assert!(matches!(
            n.check(&v, "example.test", 1_300_000),
            NonceCheck::Fresh(_)
        ));
        assert_eq!(n.check(&v, "example.test", 1_300_001), NonceCheck::Stale);
    }

    #[test]
    fn bound_to_realm_and_secret() {
        let n = nonces();
        let v = n.issue("example.test", 1_000);
        assert_eq!(n.check(&v, "other.test", 1_000), NonceCheck::Invalid);
        let other = Nonces::new(b"other", Duration::from_secs(300), 16);
        assert_eq!(other.check(&v, "example.test", 1_000), NonceCheck::Invalid);
        assert_eq!(n.check("zz", "example.test", 1_000), NonceCheck::Invalid);
        let mut tampered = v.clone().into_bytes();
        tampered[3] = if tampered[3] == b'0' { b'1' } else { b'0' };
        let tampered = String::from_utf8(tampered).unwrap();
        assert_eq!(
            n.check(&tampered, "example.test", 1_000),
            NonceCheck::Invalid
        );
    }

    #[test]
    fn nc_must_increase() {
        let n = nonces();
        let v = n.issue("r", 5_000);
        let NonceCheck::Fresh(id) = n.check(&v, "r", 5_000) else {
            panic!()
        };
        assert_eq!(n.use_nc(id, 1, 5_000), NcCheck::Ok);
        assert_eq!(n.use_nc(id, 1, 5_001), NcCheck::Replay);
        assert_eq!(n.use_nc(id, 2, 5_002), NcCheck::Ok);
        assert_eq!(n.use_nc(id, 2, 5_003), NcCheck::Replay);
        assert_eq!(n.use_nc(id, 0, 5_003), NcCheck::Replay);
        assert_eq!(n.use_nc(id, 7, 5_003), NcCheck::Ok);
    }

    #[test]
    fn table_is_bounded_and_evicted_nonces_are_not_replayable() {
        let n = Nonces::new(b"s", Duration::from_secs(300), SHARDS * 4);
        let mut ids = Vec::new();
        for i in 0..1000u64 {
            let v = n.issue_with("r", 10_000 + i, i);
            let NonceCheck::Fresh(id) = n.check(&v, "r", 10_000 + i) else {
                panic!()
            };
            assert_eq!(n.use_nc(id, 1, 10_000 + i), NcCheck::Ok);
            ids.push(id);
        }
        assert!(n.table_len() <= SHARDS * 4);
        // The first nonces were evicted: a replay is not accepted.
        for id in &ids[..100] {
            assert_ne!(n.use_nc(*id, 1, 11_000), NcCheck::Ok);
            assert_ne!(n.use_nc(*id, 2, 11_000), NcCheck::Ok);
        }
    }

    #[test]
    fn expired_entries_leave_the_table() {
        let n = Nonces::new(b"s", Duration::from_secs(1), 1024);
        for i in 0..100u64 {
            let id = NonceId {
                issued_ms: 1_000,
                random: i,
            };
            assert_eq!(n.use_nc(id, 1, 1_000), NcCheck::Ok);
        }
        assert_eq!(n.table_len(), 100);
        for s in 0..SHARDS as u64 {
            let id = NonceId {
                issued_ms: 5_000,
                random: s,
            };
            n.use_nc(id, 1, 5_000);
        }
        assert_eq!(n.table_len(), SHARDS);
    }

    proptest! {
        #[test]
        fn check_never_panics(s in "\\PC{0,80}", realm in "[a-z]{0,10}", now in any::<u64>()) {
            let n = nonces();
            let _ = n.check(&s, &realm, now);
        }

        #[test]
        fn issued_nonces_check_fresh(realm in "[a-z.]{1,20}", now in 0u64..u64::MAX / 2, age in 0u64..300_000) {
            let n = nonces();
            let v = n.issue(&realm, now);
            prop_assert!(matches!(n.check(&v, &realm, now + age), NonceCheck::Fresh(_)));
        }
    }
}
