//! An answered call as the proxy remembers it: the parties of its dialog,
//! so that requests inside it are routed without transaction state (RFC
//! 3261 s.16.11), and what the proxy needs to end it itself.

use std::time::Instant;

use super::legs::{Legs, RecordToken};
use crate::transport::Flow;

/// The parties of an answered call, for routing requests inside it.
pub(crate) struct DialogParties {
    pub caller_tag: String,
    pub callee_tag: String,
    pub caller: Flow,
    pub callee: Flow,
    pub caller_contact: String,
    pub callee_contact: String,
    /// From (caller, with tag) and To (callee, with tag) as in the INVITE
    /// and its 2xx, for the BYEs the proxy may send itself.
    pub from: String,
    pub to: String,
    pub caller_cseq: u32,
}

/// An answered call. Once it ends only what routes a retransmitted BYE is
/// kept (the rest is `live`), so that the 32 s of lingering cost ~150 bytes
/// a call, not ~1 KB.
pub(crate) struct Dialog {
    pub(super) live: Option<Box<LiveDialog>>,
    pub(super) caller_tag: String,
    pub(super) callee_tag: String,
    pub(super) caller: Flow,
    pub(super) callee: Flow,
    pub(super) caller_cseq: u32,
    pub(super) callee_cseq: u32,
    pub(super) answered_at: Instant,
    /// Set once a BYE passed (or the proxy ended the call).
    pub(super) ending_since: Option<Instant>,
    /// The recording of the call's end: until it is durable, every
    /// request of the dialog waits with the BYE that ended it (the other
    /// side's own BYE crossing ours must not arrive first either).
    pub(super) ending_token: Option<RecordToken>,
    /// Other phones that answered the forked INVITE too (their To tag and
    /// flow): requests between them and the caller are routed, and record
    /// nothing (the call was answered by the first).
    pub(super) others: Vec<(String, Flow)>,
}

/// What an answered call needs until it ends.
pub(super) struct LiveDialog {
    pub(super) legs: Legs,
    pub(super) caller_contact: String,
    pub(super) callee_contact: String,
    pub(super) from: String,
    pub(super) to: String,
    /// The call was handed on by a transfer: the transferee reported the
    /// transfer's new call answered (NOTIFY), or a transfer's new call
    /// replaced this dialog. Its end is recorded with cause `transferred`.
    /// (Here rather than in `Dialog`: only a live dialog can end.)
    pub(super) transferred: bool,
}

impl Dialog {
    pub(crate) fn new(legs: Legs, p: DialogParties, now: Instant) -> Dialog {
        Dialog {
            live: Some(Box::new(LiveDialog {
                legs,
                caller_contact: p.caller_contact,
                callee_contact: p.callee_contact,
                from: p.from,
                to: p.to,
                transferred: false,
            })),
            caller_tag: p.caller_tag,
            callee_tag: p.callee_tag,
            caller: p.caller,
            callee: p.callee,
            caller_cseq: p.caller_cseq,
            callee_cseq: 0,
            answered_at: now,
            ending_since: None,
            ending_token: None,
            others: Vec::new(),
        }
    }
}
