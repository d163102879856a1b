//! The blob store: large immutable byte strings (voicemail messages and
//! greetings) that events name by id and never carry.
//!
//! Audio is too big for the log (a 3 MB message would sit in the log's
//! group-commit path and in every reader's memory), so it is stored apart and
//! an event refers to it by [`BlobInfo::id`]. The order of writes is the whole
//! contract between the two: a blob is put (and fsynced) *before* the event
//! naming it is appended, so an event never names a blob that is not there.
//! A crash between the two leaves a blob that no event names;
//! [`BlobStore::list_older_than`] lets a sweeper find such blobs (old enough
//! that no event naming them can still be on its way) and delete them.
//!
//! Blobs are immutable: an id is written once. Putting the same bytes again
//! is a retry and succeeds; putting other bytes under a stored id is
//! refused ([`Error::BlobConflict`]), so that a reader of an event always
//! gets the bytes the writer of the event meant.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::{Error, Result};

/// A blob's id: 1 to [`MAX_BLOB_ID_LEN`] characters of `[A-Za-z0-9_-]`,
/// checked by [`validate_id`]. Such ids are safe in a file name, a URL and an
/// SQL literal alike, and sort the same bytewise everywhere.
pub type BlobId = String;

/// The longest blob id (a UUID in any usual spelling fits).
pub const MAX_BLOB_ID_LEN: usize = 64;

/// The largest blob a store accepts: 64 MiB. A voicemail message of the
/// longest allowed length is about 10 MB (8 kHz, 16-bit mono); the limit
/// leaves room and still bounds what one request holds in memory.
pub const MAX_BLOB_SIZE: u64 = 64 << 20;

/// What [`BlobStore::list`] returns for one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    pub id: BlobId,
    /// Length in bytes.
    pub size: u64,
    /// SHA-256 of the bytes (what a retried put is compared with).
    pub sha256: [u8; 32],
    /// When the blob was first stored, in microseconds since the Unix epoch
    /// (a retry does not change it). A sweeper leaves young blobs alone:
    /// their event may still be on its way to the log.
    pub created_at_us: i64,
}

/// Where blobs are stored. Every backend keeps these invariants (checked by
/// the blob conformance suite):
/// 1. Acknowledged means durable: `put` and `delete` return `Ok` only once
///    the change is fsynced.
/// 2. A blob is all there or not at all: after a crash, `get` returns either
///    nothing or exactly the bytes that were put.
/// 3. Ids are written once: a second `put` of the same bytes is `Ok` and
///    changes nothing; of other bytes it is [`Error::BlobConflict`] and
///    changes nothing.
/// 4. Ids are checked ([`validate_id`]) and sizes bounded ([`MAX_BLOB_SIZE`])
///    before anything is stored.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores `bytes` under `id`, durably: `Ok` only once fsynced. Putting
    /// the same bytes under the same id again is `Ok` (a retry); different
    /// bytes under an existing id is [`Error::BlobConflict`] and changes
    /// nothing.
    async fn put(&self, id: &str, bytes: Bytes) -> Result<()>;

    /// The blob's bytes, `None` if no blob has this id.
    async fn get(&self, id: &str) -> Result<Option<Bytes>>;

    /// Deletes the blob; `Ok(true)` if it existed. Durable before `Ok`.
    async fn delete(&self, id: &str) -> Result<bool>;

    /// Blobs in id order (bytewise), starting strictly after `after`, at most
    /// `limit`: for sweeping blobs that no event names (a crash between the
    /// put and the append).
    async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<BlobInfo>>;

    /// Like [`BlobStore::list`], but only blobs created strictly before
    /// `cutoff_us` (microseconds since the Unix epoch, as
    /// [`BlobInfo::created_at_us`]): in id order, starting strictly after
    /// `after`, at most `limit`. A sweeper pages through it with the last
    /// id it got as `after`; paging by id (not by time) keeps its place
    /// while blobs are put and deleted meanwhile.
    async fn list_older_than(
        &self,
        cutoff_us: i64,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BlobInfo>>;

    /// Stops accepting requests, waits for pending writes to be committed or
    /// failed, and closes the storage. Later calls return [`Error::Closed`].
    async fn close(&self) -> Result<()>;
}

/// A shareable handle to any blob backend.
pub type SharedBlobStore = Arc<dyn BlobStore>;

/// Checks a blob id: 1 to [`MAX_BLOB_ID_LEN`] characters of `[A-Za-z0-9_-]`.
pub fn validate_id(id: &str) -> Result<()> {
    let valid = !id.is_empty()
        && id.len() <= MAX_BLOB_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        // Only a prefix goes into the error: the id may be anything a
        // client sent, of any length.
        Err(Error::InvalidBlobId {
            id: id.chars().take(MAX_BLOB_ID_LEN + 1).collect(),
        })
    }
}

/// Checks a blob's size against [`MAX_BLOB_SIZE`].
pub fn check_size(size: usize) -> Result<()> {
    let size = u64::try_from(size).unwrap_or(u64::MAX);
    if size > MAX_BLOB_SIZE {
        return Err(Error::BlobTooLarge {
            size,
            limit: MAX_BLOB_SIZE,
        });
    }
    Ok(())
}

/// SHA-256 of `bytes`, as stored in [`BlobInfo::sha256`].
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for id in [
            "a",
            "A-z_09",
            &"x".repeat(64),
            "0190f3c2-7d5e-7b1a-9f00-1234567890ab",
        ] {
            assert!(validate_id(id).is_ok(), "{id}");
        }
        for id in ["", &"x".repeat(65), "a/b", "a b", "..", "é", "a\0", "a.wav"] {
            assert!(
                matches!(validate_id(id), Err(Error::InvalidBlobId { .. })),
                "{id:?}"
            );
        }
        let Err(Error::InvalidBlobId { id }) = validate_id(&"y".repeat(10_000)) else {
            panic!("a long id is invalid");
        };
        assert_eq!(id.len(), MAX_BLOB_ID_LEN + 1);
    }

    #[test]
    fn sizes() {
        assert!(check_size(0).is_ok());
        assert!(check_size(64 << 20).is_ok());
        assert!(matches!(
            check_size((64 << 20) + 1),
            Err(Error::BlobTooLarge { size, limit }) if size == (64 << 20) + 1 && limit == 64 << 20
        ));
    }

    #[test]
    fn sha256_of_nothing() {
        assert_eq!(
            sha256(b"")[..4],
            [0xe3, 0xb0, 0xc4, 0x42],
            "the well-known digest of the empty string"
        );
    }
}
