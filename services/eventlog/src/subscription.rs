//! Catch-up-then-live subscription to the whole log, for any backend.
//!
//! Delivery reads the log itself ([`EventStore::read_all`]); the head watch is
//! only a doorbell. A slow subscriber therefore never loses events (nothing is
//! buffered for it that could overflow), it just reads further behind.

use std::collections::VecDeque;

use futures::Stream;
use tokio::sync::watch;

use crate::{Error, EventFilter, Position, RecordedEvent, Result, SharedStore};

/// Events read per `read_all` call.
const PAGE: usize = 512;

struct State {
    store: SharedStore,
    /// Position of the next event to deliver.
    next: Position,
    page: VecDeque<RecordedEvent>,
    head: watch::Receiver<Position>,
    done: bool,
    /// Only these events are delivered (`None`: every event).
    keep: Option<EventFilter>,
}

/// Every event with `position >= from` (0 and 1 both mean "from the
/// beginning"), in position order, with no gap and no duplicate: first the
/// history, then new events as they are committed.
///
/// The stream ends after yielding one error: [`Error::Closed`] when the store
/// closes, or the error of a failed read. To resume, subscribe again from the
/// position after the last event received.
pub fn subscribe_all(
    store: SharedStore,
    from: Position,
) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
    subscribe(store, from, None)
}

/// As [`subscribe_all`], delivering only the events `keep` accepts (the
/// others are never copied out of the log for this subscriber; see
/// [`EventStore::read_all_where`](crate::EventStore::read_all_where)).
pub fn subscribe_all_where(
    store: SharedStore,
    from: Position,
    keep: EventFilter,
) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
    subscribe(store, from, Some(keep))
}

fn subscribe(
    store: SharedStore,
    from: Position,
    keep: Option<EventFilter>,
) -> impl Stream<Item = Result<RecordedEvent>> + Send + 'static {
    let head = store.watch_head();
    let state = State {
        store,
        next: from.max(1),
        page: VecDeque::new(),
        head,
        done: false,
        keep,
    };
    futures::stream::unfold(state, |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            if let Some(event) = st.page.pop_front() {
                return Some((Ok(event), st));
            }
            // Mark the current head as seen *before* reading: a commit that
            // lands after this point changes the watch again, so the wait
            // below cannot miss it.
            st.head.borrow_and_update();
            let read = match st.keep {
                None => st.store.read_all(st.next, PAGE).await.map(|events| {
                    let last = events.last().map_or(0, |e| e.position);
                    (events, last)
                }),
                Some(keep) => st.store.read_all_where(st.next, PAGE, keep).await,
            };
            match read {
                Ok((events, last)) => match last {
                    last if last >= st.next => {
                        st.next = last + 1;
                        st.page.extend(events);
                    }
                    _ => {
                        // Caught up. The sender goes away when the store stops.
                        if st.head.changed().await.is_err() {
                            st.done = true;
                            return Some((Err(Error::Closed), st));
                        }
                    }
                },
                Err(e) => {
                    st.done = true;
                    return Some((Err(e), st));
                }
            }
        }
    })
}
