//! The unindexed tail of the log: which recent events belong to which stream.
//!
//! A 1-event append to a stream would dirty that stream's leaf of a
//! `(stream, version)` B-tree index: one whole page written to the WAL per
//! event, which was most of what a commit wrote (ADR 0008). So the writer
//! does not index events as it commits them. It keeps, in memory, the
//! `(version, position)` of every committed event not yet indexed, shares
//! that map with the readers, and writes the `stream_index` table later, in
//! chunks of thousands of events sorted by stream, where one leaf receives
//! the entries of many events of its stream at once.
//!
//! `meta.indexed_through` (written in the same transaction as the index
//! rows) says up to which position `stream_index` is complete. Nothing here
//! must survive a crash: at open, the tail is rebuilt from the events after
//! that position (the events table holds each event's stream and version).
//!
//! Readers take their copy of the tail *before* they start reading the
//! database. The writer trims the tail only after the index rows are
//! committed, so the database a reader then sees is indexed at least up to
//! the tail's `indexed_through`: index rows and tail together hold every
//! event up to the head the reader could know of.

use std::collections::HashMap;

use crate::Position;

/// Stream name → `(version, position)` of its unindexed events, in order.
#[derive(Debug, Default)]
pub(crate) struct Tail {
    /// `stream_index` holds every event with a position up to this one.
    indexed_through: Position,
    streams: HashMap<String, Vec<(u64, Position)>>,
}

impl Tail {
    pub(crate) fn new(indexed_through: Position) -> Self {
        Self {
            indexed_through,
            ..Self::default()
        }
    }

    /// Records committed events: `count` events of `stream` from
    /// `first_version` at `first_position`.
    pub(crate) fn push(
        &mut self,
        stream: &str,
        first_version: u64,
        first_position: Position,
        count: u64,
    ) {
        let entries = match self.streams.get_mut(stream) {
            Some(entries) => entries,
            None => self.streams.entry(stream.to_owned()).or_default(),
        };
        entries.extend((0..count).map(|i| (first_version + i, first_position + i)));
    }

    /// Forgets the events up to `position`, now in `stream_index`.
    pub(crate) fn indexed(&mut self, position: Position) {
        self.indexed_through = self.indexed_through.max(position);
        self.streams.retain(|_, entries| {
            let keep_from = entries.partition_point(|&(_, p)| p <= position);
            entries.drain(..keep_from);
            !entries.is_empty()
        });
    }

    /// The last version of `stream` among unindexed events.
    pub(crate) fn last_version(&self, stream: &str) -> Option<u64> {
        self.streams
            .get(stream)
            .and_then(|entries| entries.last())
            .map(|&(version, _)| version)
    }

    /// Each stream's last unindexed version.
    pub(crate) fn last_versions(&self) -> HashMap<String, u64> {
        self.streams
            .iter()
            .filter_map(|(stream, entries)| Some((stream.clone(), entries.last()?.0)))
            .collect()
    }

    /// Unindexed events of `stream` with `version >= from`, at most `max`.
    pub(crate) fn events_from(&self, stream: &str, from: u64, max: usize) -> Vec<(u64, Position)> {
        match self.streams.get(stream) {
            Some(entries) => {
                let start = entries.partition_point(|&(v, _)| v < from);
                entries[start..].iter().take(max).copied().collect()
            }
            None => Vec::new(),
        }
    }
}

/// The tail shared by the writer (the only one to change it) and readers.
pub(crate) type SharedTail = super::Shared<Tail>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_read_and_trim() {
        let mut tail = Tail::new(10);
        tail.push("a", 0, 11, 2);
        tail.push("b", 5, 13, 1);
        tail.push("a", 2, 14, 1);
        assert_eq!(tail.last_version("a"), Some(2));
        assert_eq!(tail.last_version("c"), None);
        assert_eq!(tail.events_from("a", 1, 10), vec![(1, 12), (2, 14)]);
        assert_eq!(tail.events_from("a", 0, 1), vec![(0, 11)]);
        tail.indexed(13);
        assert_eq!(tail.last_version("b"), None);
        assert_eq!(tail.events_from("a", 0, 10), vec![(2, 14)]);
        assert_eq!(tail.indexed_through, 13);
    }
}
