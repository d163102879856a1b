//! The last committed events, in memory, for readers that follow the head.
//!
//! Every live follower of the whole log (the registrations and call-leg
//! projections, gRPC subscriptions) reads each new event right after its
//! commit. From the database that is a query on a reader connection, on
//! the blocking pool, decoding rows the writer had in memory a moment
//! before: per follower, a thread hand-off and a row decode per event.
//! The writer therefore keeps the events of its last commits here (moved,
//! not copied, out of the append requests) and `read_all` serves a range
//! that starts inside them from memory. Older positions (a follower that
//! fell behind, a catch-up after a restart) read the database as before.
//!
//! Only committed events enter, in position order, before the head that
//! announces them moves; so the held events are always a contiguous run of
//! committed positions ending at (or just past) the published head, the
//! same events a query would return. Nothing here needs to survive a
//! crash: it starts empty at each open.

use std::collections::VecDeque;

use crate::{Position, RecordedEvent};

/// Held events at most...
pub(crate) const MAX_EVENTS: usize = 8_192;
/// ...and at most about this many bytes (a few seconds at the node's rate;
/// a follower further behind than that reads the database).
pub(crate) const MAX_BYTES: usize = 8 << 20;

/// A contiguous run of the most recently committed events.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    events: VecDeque<RecordedEvent>,
    bytes: usize,
}

/// What one held event costs, roughly: its strings and the struct.
fn footprint(event: &RecordedEvent) -> usize {
    std::mem::size_of::<RecordedEvent>()
        + event.stream.len()
        + event.event_type.len()
        + event.node.len()
        + event.correlation_id.as_ref().map_or(0, String::len)
        + event.data.len()
}

impl Recent {
    /// Adds the events of a commit (positions following the held ones;
    /// anything else starts the run over) and drops the oldest beyond the
    /// bounds.
    pub(crate) fn push(&mut self, committed: impl IntoIterator<Item = RecordedEvent>) {
        for event in committed {
            let follows = self
                .events
                .back()
                .is_none_or(|last| last.position + 1 == event.position);
            if !follows {
                self.events.clear();
                self.bytes = 0;
            }
            self.bytes += footprint(&event);
            self.events.push_back(event);
        }
        while self.events.len() > MAX_EVENTS || (self.bytes > MAX_BYTES && self.events.len() > 1) {
            if let Some(old) = self.events.pop_front() {
                self.bytes -= footprint(&old);
            }
        }
    }

    /// Up to `max` events from `from` through `head`, if `from` is among
    /// the held events; `None` sends the caller to the database.
    pub(crate) fn read(
        &self,
        from: Position,
        max: usize,
        head: Position,
    ) -> Option<Vec<RecordedEvent>> {
        let first = self.events.front()?.position;
        let last = self.events.back()?.position;
        if from < first || from > last {
            return None;
        }
        let skip = usize::try_from(from - first).ok()?;
        Some(
            self.events
                .range(skip..)
                .take_while(|e| e.position <= head)
                .take(max)
                .cloned()
                .collect(),
        )
    }

    /// As [`read`](Self::read), copying only the events `keep` accepts;
    /// `max` bounds the events examined. With the position of the last
    /// event examined (0 when none was).
    pub(crate) fn read_where(
        &self,
        from: Position,
        max: usize,
        head: Position,
        keep: fn(&RecordedEvent) -> bool,
    ) -> Option<(Vec<RecordedEvent>, Position)> {
        let first = self.events.front()?.position;
        let last = self.events.back()?.position;
        if from < first || from > last {
            return None;
        }
        let skip = usize::try_from(from - first).ok()?;
        let mut examined = 0;
        let kept = self
            .events
            .range(skip..)
            .take_while(|e| e.position <= head)
            .take(max)
            .inspect(|e| examined = e.position)
            .filter(|e| keep(e))
            .cloned()
            .collect();
        Some((kept, examined))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.events.len()
    }
}

/// [`Recent`] shared by the writer (which pushes) and the readers.
pub(crate) type SharedRecent = super::Shared<Recent>;

#[cfg(test)]
mod tests {
    use super::*;

    fn event(position: Position, data_len: usize) -> RecordedEvent {
        RecordedEvent {
            position,
            stream: "user-1".to_owned(),
            version: position - 1,
            event_id: uuid::Uuid::from_u128(u128::from(position)),
            event_type: "T".to_owned(),
            schema_version: 1,
            occurred_at_us: 0,
            domain_id: None,
            user_id: None,
            node: "n".to_owned(),
            correlation_id: None,
            data: "x".repeat(data_len),
        }
    }

    #[test]
    fn serves_ranges_that_start_inside_the_run_up_to_the_head() {
        let mut recent = Recent::default();
        recent.push((10..=20).map(|p| event(p, 1)));
        assert_eq!(recent.read(9, 5, 20), None, "before the run");
        assert_eq!(recent.read(21, 5, 20), None, "after the run");
        let got = recent.read(12, 5, 20).unwrap();
        assert_eq!(
            got.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![12, 13, 14, 15, 16]
        );
        // Not beyond the head the reader saw, even if already held.
        let got = recent.read(18, 10, 19).unwrap();
        assert_eq!(
            got.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![18, 19]
        );
        assert_eq!(recent.read(20, 10, 19), Some(Vec::new()));
    }

    #[test]
    fn a_filtered_read_copies_only_what_is_kept_and_says_how_far_it_looked() {
        let mut recent = Recent::default();
        recent.push((10..=20).map(|p| event(p, p as usize)));
        let even: fn(&RecordedEvent) -> bool = |e| e.data.len() % 2 == 0;
        let (kept, last) = recent.read_where(11, 5, 20, even).unwrap();
        assert_eq!(
            kept.iter().map(|e| e.position).collect::<Vec<_>>(),
            vec![12, 14]
        );
        assert_eq!(last, 15, "five examined: 11..=15");
        let none: fn(&RecordedEvent) -> bool = |_| false;
        assert_eq!(recent.read_where(16, 100, 18, none), Some((Vec::new(), 18)));
        assert_eq!(recent.read_where(19, 10, 18, none), Some((Vec::new(), 0)));
        assert_eq!(recent.read_where(9, 10, 20, none), None, "before the run");
    }

    #[test]
    fn a_gap_starts_the_run_over() {
        let mut recent = Recent::default();
        recent.push((1..=5).map(|p| event(p, 1)));
        recent.push([event(8, 1)]);
        assert_eq!(recent.read(3, 10, 8), None);
        assert_eq!(recent.read(8, 10, 8).unwrap().len(), 1);
    }

    #[test]
    fn keeps_within_its_bounds_dropping_the_oldest() {
        let mut recent = Recent::default();
        let n = MAX_EVENTS as u64 + 100;
        recent.push((1..=n).map(|p| event(p, 1)));
        assert_eq!(recent.len(), MAX_EVENTS);
        assert_eq!(recent.read(100, 1, n), None);
        assert_eq!(recent.read(101, 1, n).unwrap()[0].position, 101);

        let mut recent = Recent::default();
        let big = MAX_BYTES / 4;
        recent.push((1..=10).map(|p| event(p, big)));
        assert!(recent.len() < 4, "held {}", recent.len());
        assert_eq!(recent.read(10, 1, 10).unwrap()[0].position, 10);
    }
}
