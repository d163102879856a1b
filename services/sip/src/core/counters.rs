//! The gateway's metrics: names, bounded label sets, and the handles kept
//! so that the hot path does not look series up.

use super::*;

/// Metric names (`dialtone_<area>_<what>_<unit>`).
pub mod metric {
    pub const REQUESTS: &str = "dialtone_sip_requests_total";
    pub const RESPONSES: &str = "dialtone_sip_responses_total";
    pub const AUTH_FAILURES: &str = "dialtone_sip_auth_failures_total";
    pub const PARSE_ERRORS: &str = "dialtone_sip_parse_errors_total";
    pub const DROPPED: &str = "dialtone_sip_dropped_total";
    pub const RETRANSMISSIONS: &str = "dialtone_sip_retransmissions_total";
    pub const REGISTER_SECONDS: &str = "dialtone_sip_register_seconds";
    pub const LOCKOUTS: &str = "dialtone_sip_lockouts_total";
    pub const LOCKED_OUT: &str = "dialtone_sip_locked_out";
    /// Feature codes dialled (ADR 0020), by `outcome`: `applied`,
    /// `refused`, `not_a_code` (routed as a call).
    pub const FEATURE_CODES: &str = "dialtone_sip_feature_codes_total";
}

/// Status codes with their own `status` label (see [`status_label`]); the
/// last slot is "other".
pub(super) const STATUS_CODES: [u16; 24] = [
    100, 200, 400, 401, 403, 404, 405, 407, 408, 416, 420, 423, 480, 481, 483, 486, 487, 500, 501,
    503, 505, 513, 600, 603,
];

pub(super) const METHODS: [Method; 7] = [
    Method::Register,
    Method::Options,
    Method::Invite,
    Method::Ack,
    Method::Bye,
    Method::Cancel,
    Method::Other,
];

pub(super) const AUTH_FAILURE_REASONS: [&str; 5] = [
    "unsupported",
    "nonce",
    "credentials",
    "replay",
    "locked_out",
];

/// Metric handles, registered on first use and then reused: the `metrics`
/// macros build the key (and a label vector) and look it up in the recorder
/// on every call. The series and their labels are the macros' own.
#[derive(Default)]
pub(super) struct Metrics {
    requests: [OnceLock<Counter>; METHODS.len()],
    responses: [OnceLock<Counter>; STATUS_CODES.len() + 1],
    auth_failures: [OnceLock<Counter>; AUTH_FAILURE_REASONS.len()],
    parse_errors: OnceLock<Counter>,
    dropped_response: OnceLock<Counter>,
    dropped_unaddressable: OnceLock<Counter>,
    retransmissions: OnceLock<Counter>,
    register_seconds: OnceLock<Histogram>,
}

impl Metrics {
    pub(super) fn request(&self, method: Method) {
        let i = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len() - 1);
        self.requests[i]
            .get_or_init(|| metrics::counter!(metric::REQUESTS, "method" => method.label()))
            .increment(1);
    }

    pub(super) fn response(&self, code: u16) {
        let i = STATUS_CODES
            .iter()
            .position(|c| *c == code)
            .unwrap_or(STATUS_CODES.len());
        self.responses[i]
            .get_or_init(|| metrics::counter!(metric::RESPONSES, "status" => status_label(code)))
            .increment(1);
    }

    /// `reason` is one of [`AUTH_FAILURE_REASONS`].
    pub(super) fn auth_failure(&self, reason: &'static str) {
        let i = AUTH_FAILURE_REASONS
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.auth_failures[i]
            .get_or_init(|| metrics::counter!(metric::AUTH_FAILURES, "reason" => reason))
            .increment(1);
    }

    pub(super) fn parse_error(&self) {
        self.parse_errors
            .get_or_init(|| metrics::counter!(metric::PARSE_ERRORS))
            .increment(1);
    }

    pub(super) fn dropped_response(&self) {
        self.dropped_response
            .get_or_init(|| metrics::counter!(metric::DROPPED, "reason" => "response"))
            .increment(1);
    }

    pub(super) fn dropped_unaddressable(&self) {
        self.dropped_unaddressable
            .get_or_init(|| metrics::counter!(metric::DROPPED, "reason" => "unaddressable"))
            .increment(1);
    }

    pub(super) fn retransmission(&self) {
        self.retransmissions
            .get_or_init(|| metrics::counter!(metric::RETRANSMISSIONS))
            .increment(1);
    }

    pub(super) fn register_seconds(&self, secs: f64) {
        self.register_seconds
            .get_or_init(|| metrics::histogram!(metric::REGISTER_SECONDS))
            .record(secs);
    }
}
