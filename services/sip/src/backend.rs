//! The boundary between the SIP gateway and the rest of Dialtone.
//!
//! The gateway knows SIP; the implementation of [`SipBackend`] knows users,
//! bindings and events (the lead implements it over the user actors). The
//! gateway never decides a binding rule: it parses and normalises a REGISTER
//! into a [`RegisterRequest`] and turns the [`RegisterOutcome`] into a SIP
//! response.

use std::time::SystemTime;

pub use crate::transport::{ConnectionId, Flow, Transport};

use crate::auth::digest::Algorithm;

/// The digest algorithms a domain offers, in challenge order: the gateway
/// sends one challenge per algorithm, in this order, and refuses answers
/// with any other algorithm. Never empty, no algorithm twice.
#[derive(Clone, Copy)]
pub struct DigestAlgorithms {
    list: [Algorithm; 2],
    len: usize,
}

impl DigestAlgorithms {
    /// MD5 only: what every common client answers.
    pub const MD5: DigestAlgorithms = DigestAlgorithms {
        list: [Algorithm::Md5, Algorithm::Sha256],
        len: 1,
    };
    /// SHA-256 only.
    pub const SHA256: DigestAlgorithms = DigestAlgorithms {
        list: [Algorithm::Sha256, Algorithm::Md5],
        len: 1,
    };
    /// SHA-256, then MD5 (RFC 8760 s.2.4: the preferred one first).
    pub const SHA256_MD5: DigestAlgorithms = DigestAlgorithms {
        list: [Algorithm::Sha256, Algorithm::Md5],
        len: 2,
    };
    /// MD5, then SHA-256.
    pub const MD5_SHA256: DigestAlgorithms = DigestAlgorithms {
        list: [Algorithm::Md5, Algorithm::Sha256],
        len: 2,
    };

    /// `None` for an empty list or one naming an algorithm twice.
    pub fn new(list: &[Algorithm]) -> Option<Self> {
        match list {
            [Algorithm::Md5] => Some(Self::MD5),
            [Algorithm::Sha256] => Some(Self::SHA256),
            [Algorithm::Sha256, Algorithm::Md5] => Some(Self::SHA256_MD5),
            [Algorithm::Md5, Algorithm::Sha256] => Some(Self::MD5_SHA256),
            _ => None,
        }
    }

    pub fn as_slice(&self) -> &[Algorithm] {
        self.list.get(..self.len).unwrap_or_default()
    }

    pub fn contains(&self, algorithm: Algorithm) -> bool {
        self.as_slice().contains(&algorithm)
    }

    /// This list with MD5 moved to the front when it is in it (the
    /// deprecated `GatewayConfig::challenge_md5_first`).
    pub fn md5_first(self) -> Self {
        if self == Self::SHA256_MD5 {
            Self::MD5_SHA256
        } else {
            self
        }
    }
}

impl Default for DigestAlgorithms {
    fn default() -> Self {
        Self::MD5
    }
}

impl PartialEq for DigestAlgorithms {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for DigestAlgorithms {}

impl std::fmt::Debug for DigestAlgorithms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.as_slice().iter().map(|a| a.name()))
            .finish()
    }
}

/// Stored digest credentials of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCredentials {
    /// The algorithms the user's domain offers, in challenge order.
    pub algorithms: DigestAlgorithms,
    /// HA1 = MD5(user:realm:password), lower-case hex. `None` when the user
    /// has no MD5 HA1: an MD5 answer is then refused even if MD5 is listed.
    pub ha1_md5: Option<String>,
    /// HA1 = SHA-256(user:realm:password), lower-case hex.
    pub ha1_sha256: String,
    /// A disabled user gets 403, but only after proving the password (so
    /// that the response does not reveal the account to a guesser).
    pub disabled: bool,
}

/// Result of looking up `user@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Not a domain we serve: 404.
    UnknownDomain,
    /// The domain is suspended: 403 for everyone in it.
    DomainSuspended,
    /// No such user in a served domain: handled exactly like a wrong
    /// password (no user enumeration), so it carries the domain's digest
    /// algorithms: an unknown user is challenged as a known one would be.
    UnknownUser(DigestAlgorithms),
    Found(UserCredentials),
}

/// One contact of a REGISTER, normalised by the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactChange {
    /// The contact URI as sent (without `<>`).
    pub uri: String,
    /// Granted expiry in seconds after min/max policy; 0 removes the binding.
    pub expires_secs: u32,
    /// `q` in thousandths (q=0.5 -> 500), when given.
    pub q: Option<u16>,
    /// The other contact parameters, raw, e.g. `;+sip.instance="<urn:...>";reg-id=1`
    /// (empty when none).
    pub params: String,
    /// The RFC 5626 `reg-id`, set only when the REGISTER uses outbound
    /// (`Supported: outbound`, and the contact has `+sip.instance`): the
    /// binding is then one flow of that instance.
    pub reg_id: Option<u32>,
    /// The contact's address is not the one the REGISTER came from: the
    /// phone is behind a NAT (or names a host), and is reached at the
    /// REGISTER's source.
    pub nat: bool,
}

/// A REGISTER that passed authentication and the expiry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    /// Lower-cased domain (= digest realm) from the Request-URI.
    pub domain: String,
    /// User part of the To URI (the address-of-record).
    pub user: String,
    pub call_id: String,
    pub cseq: u32,
    /// Contacts to add, refresh (expires > 0) or remove (expires = 0).
    pub changes: Vec<ContactChange>,
    /// `Contact: *` with `Expires: 0`: remove every binding of the user
    /// (RFC 3261 s.10.3 step 6). `changes` is then empty.
    pub remove_all: bool,
    /// The flow the request came on: transport, source address (after
    /// NAT), our address, and the connection for connection-oriented
    /// transports. A binding is reached on it.
    pub flow: Flow,
    pub user_agent: Option<String>,
    pub received_at: SystemTime,
}

/// A binding as listed in the 200 OK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentContact {
    pub uri: String,
    /// Seconds left before the binding expires.
    pub expires_in_secs: u32,
    pub q: Option<u16>,
}

/// The backend's answer to a REGISTER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    /// The changes are durable; these are the user's bindings after them.
    /// `message_waiting`: the box's counts, when it asks for unsolicited
    /// NOTIFYs and the REGISTER added bindings (not on refreshes): the
    /// gateway tells the new contacts after the 200.
    Ok {
        contacts: Vec<CurrentContact>,
        message_waiting: Option<MessageWaiting>,
    },
    /// Same Call-ID with a CSeq not above the stored one (RFC 3261 s.10.3
    /// step 7): the request is refused (500 with a reason phrase saying so)
    /// and nothing changed.
    CSeqOutOfOrder,
}

/// Unsolicited message-waiting counts for the bindings a REGISTER added.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageWaiting {
    pub counts: MessageCounts,
    /// The added bindings' contact URIs (reached on the REGISTER's flow).
    pub new_contacts: Vec<String>,
}

/// Infrastructure failure of the backend. Never answered with 200.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The store or an actor cannot take the request now (overload, store
    /// down): 503 with Retry-After.
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    /// Anything else: 500.
    #[error("backend failure: {0}")]
    Internal(String),
}

/// Where an INVITE for a user goes, as the backend decides it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallRoute {
    /// The callee's domain is not served here: 404.
    UnknownDomain,
    /// No such user in the callee's domain: 404.
    UnknownUser,
    /// The callee is an external number (E.164) and no trunk routes it:
    /// 404 with a reason phrase saying so.
    NoTrunk,
    /// The callee is in another domain than the caller and the caller's
    /// domain does not allow cross-domain calls: 403.
    CrossDomainForbidden,
    /// The callee is disabled or its domain suspended: 480.
    Unavailable,
    /// The callee exists but has no contact: 480.
    NotRegistered,
    /// The callee has do-not-disturb on and no forward for it: 486.
    Busy,
    /// The callee is a ring group none of whose members can ring now and
    /// that has no forward for it: 486 when members were skipped as busy
    /// (on a call, do-not-disturb), else 480. A group has no leg.
    GroupRefused { busy: bool },
    /// Ring the callee as this plan says.
    Plan(RoutePlan),
    /// The node answers the call itself, with media: an application of
    /// the backend's ([`SipBackend::start_app`]; voicemail, ADR 0022).
    App(AppRoute),
}

/// An application the node answers calls with (voicemail, a menu): named
/// by the backend when it routes the call or recognises a feature code,
/// and started by it in [`SipBackend::start_app`]. The gateway only
/// carries the name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRoute(pub String);

/// The INVITE an application is asked to answer.
#[derive(Debug, Clone, Copy)]
pub struct AppCall<'a> {
    pub sip_call_id: &'a str,
    /// The From header's URI (`sip:user@host`).
    pub from: &'a str,
    /// The authenticated caller (`user`, `domain`), if it is one of ours.
    pub caller: Option<(&'a str, &'a str)>,
    /// Where the INVITE came from (the source address of its packets).
    pub source: std::net::SocketAddr,
    /// The INVITE's body: an SDP offer, or empty (the offer is then ours,
    /// in the 200, and the answer in the ACK: not supported; refuse).
    pub offer: &'a [u8],
}

/// How the backend answers an application's INVITE.
pub enum AppStart {
    /// 200 with this SDP answer; the session hears of the call from now on.
    Answer {
        sdp: Vec<u8>,
        session: Box<dyn AppSession>,
        /// What answered, as the caller's call record names it when a
        /// user dialled the application (`voicemail-menu:alice@example.com`;
        /// ADR 0024): the contact of its `Answer`.
        answered_by: String,
    },
    /// This final response (4xx/5xx; 488 when no codec is in common),
    /// with a reason phrase saying why.
    Refuse { status: u16, reason: String },
}

/// The application's side of its call, told by the call engine what the
/// caller does. Called from inside the engine (under a shard's lock), so
/// each method must return at once: hand the news to the application's
/// task and return.
pub trait AppSession: Send {
    /// The ACK of our 200 arrived: the caller hears the application now.
    fn confirmed(&mut self);
    /// A re-INVITE in the call (hold, resume, a new address): the SDP
    /// answer to its offer (an empty offer asks for ours), or the status
    /// that refuses it (488: nothing acceptable; the call goes on as
    /// before).
    fn reoffer(&mut self, offer: &[u8]) -> Result<Vec<u8>, u16>;
    /// The call is over; called exactly once.
    fn ended(&mut self, end: AppEnd);
}

/// Why an application's call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnd {
    /// The caller hung up (BYE), or cancelled too late.
    CallerHungUp,
    /// The caller never acknowledged our 200 (64*T1): we hung up.
    NoAck,
    /// The application hung up ([`crate::proxy::AppControl::hang_up`]).
    HungUp,
    /// The application hung up because no media came from the caller
    /// ([`crate::proxy::AppControl::media_timed_out`]): its BYE says so
    /// (`Reason`), and the call is recorded as ended by a timeout.
    MediaTimeout,
}

/// What [`SipBackend::feature_code`] made of a dialled string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeatureOutcome {
    /// No feature code (or the domain has them off): routed as a call.
    NotAFeature,
    /// Applied for the caller, durably: the gateway answers the INVITE
    /// and hangs up (the phone's confirmation).
    Applied,
    /// The code starts an application (a mailbox's menu): the gateway asks
    /// [`SipBackend::start_app`] to answer the INVITE.
    App(AppRoute),
    /// A feature code that cannot be applied; nothing was changed. The
    /// INVITE gets this final response (4xx, with a reason phrase saying
    /// what is wrong).
    Refused { status: u16, reason: String },
}

/// How a call to a user is rung: steps, each forking to its targets in
/// parallel, starting with the first. The first 2xx of any step answers
/// the call. When every target of a step has given a final response, or
/// the step's ring timeout passed, the step's outcome picks the step that
/// comes next ([`NextSteps`]); when there is none, the caller gets the best
/// response of the steps tried (RFC 3261 s.16.7 step 6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePlan {
    pub steps: Vec<RouteStep>,
    /// The dialled name is a ring group: it has no leg of its own.
    pub dialled_group: bool,
}

impl RoutePlan {
    /// One step ringing `targets` together until the call's no-answer
    /// timeout: the plan for a user without forwarding rules.
    pub fn parallel(targets: Vec<RouteTarget>) -> RoutePlan {
        RoutePlan {
            steps: vec![RouteStep {
                targets,
                ring_timeout: None,
                next: NextSteps::NONE,
                diversions: Vec::new(),
                skipped: Vec::new(),
                group: None,
            }],
            dialled_group: false,
        }
    }

    /// True when no step has a target (nothing to ring: 480).
    pub fn is_empty(&self) -> bool {
        self.steps.iter().all(|s| s.targets.is_empty())
    }
}

/// One step of a [`RoutePlan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteStep {
    /// Rung together (parallel forking). A step without targets ends at
    /// once as unavailable.
    pub targets: Vec<RouteTarget>,
    /// How long the step rings before it counts as not answered; `None`:
    /// until the call's no-answer timeout.
    pub ring_timeout: Option<std::time::Duration>,
    /// The step that follows each outcome of this one.
    pub next: NextSteps,
    /// The forwards that led from the dialled user to this step's targets,
    /// oldest first; empty for the dialled user's own phones. The last
    /// one's `to` owns the targets. Each step's list extends the list of
    /// any step that leads to it.
    pub diversions: Vec<Diversion>,
    /// Forwarding rules of the step's owner not taken for this call:
    /// recorded on the owner's leg when the step starts ringing.
    pub skipped: Vec<SkippedForward>,
    /// `(domain, name)` of the ring group whose members this step rings
    /// (each target names its member); `None` for a user's own phones.
    pub group: Option<(String, String)>,
}

/// A forwarding rule not taken for a call (a loop, a chain cut at the hop
/// limit, a target that cannot ring).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedForward {
    /// The rule, by the reason it forwards for.
    pub rule: DiversionReason,
    /// Its target as stored (`user@domain`, a number, ...).
    pub to: String,
    /// Why it was not taken: the routing decision's reason, by name
    /// (`loop`, `hop_limit`, ...; the backend's vocabulary).
    pub why: &'static str,
}

/// The step that follows each outcome of a step: an index into the plan's
/// steps, greater than the step's own (so every call ends), or `None` when
/// the call ends with that outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NextSteps {
    /// Every target answered busy (486, 600).
    pub busy: Option<usize>,
    /// The step's ring timeout passed, or a target answered 408/480.
    pub no_answer: Option<usize>,
    /// Anything else that is not an answer (404, 5xx, other 4xx), and a
    /// step without targets.
    pub unavailable: Option<usize>,
}

impl NextSteps {
    /// The last step: whatever happens, the call ends with it.
    pub const NONE: NextSteps = NextSteps {
        busy: None,
        no_answer: None,
        unavailable: None,
    };
}

/// One forward of a call: `from`'s call went on to `to` because of
/// `reason`. Both are `(domain, user)` of users here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diversion {
    pub from: (String, String),
    pub to: (String, String),
    pub reason: DiversionReason,
    /// `to` is a ring group (it has no leg; its members do).
    pub to_group: bool,
    /// The forward went to `to`'s voicemail box (the step the node answers,
    /// ADR 0022): `to` gets no leg; the forwarding leg ends `Forwarded` to
    /// `voicemail:to`.
    pub to_voicemail: bool,
    /// The forward went to the conference room `to` (ADR 0025), which the
    /// node answers: `to` gets no leg; the forwarding leg ends `Forwarded`
    /// to `conference:to`.
    pub to_conference: bool,
}

/// Why a call was forwarded (the forwarding rule that fired).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiversionReason {
    Unconditional,
    UserBusy,
    NoAnswer,
    Unavailable,
    DoNotDisturb,
}

impl DiversionReason {
    /// The `reason` parameter of a Diversion header (RFC 5806 s.4).
    pub fn diversion_reason(self) -> &'static str {
        match self {
            DiversionReason::Unconditional => "unconditional",
            DiversionReason::UserBusy => "user-busy",
            DiversionReason::NoAnswer => "no-answer",
            DiversionReason::Unavailable => "unavailable",
            DiversionReason::DoNotDisturb => "do-not-disturb",
        }
    }

    /// The `cause` URI parameter of a History-Info entry (RFC 4458 s.2,
    /// RFC 7044 s.9.1): 302 unconditional, 486 busy (do-not-disturb
    /// included: it follows the busy rule), 408 no reply, 404 not
    /// available.
    pub fn history_cause(self) -> u16 {
        match self {
            DiversionReason::Unconditional => 302,
            DiversionReason::UserBusy | DiversionReason::DoNotDisturb => 486,
            DiversionReason::NoAnswer => 408,
            DiversionReason::Unavailable => 404,
        }
    }
}

/// One registered contact of a callee.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTarget {
    /// The contact URI (the forwarded INVITE's Request-URI).
    pub uri: String,
    /// Where and how the INVITE is sent: see [`RouteTarget::for_binding`].
    pub flow: Flow,
    /// `(domain, user)` of the ring group member whose phone this is, in a
    /// step that rings a group; `None`: the step's owner's.
    pub member: Option<(String, String)>,
}

impl RouteTarget {
    /// How to reach a contact registered on `registered` (the flow its
    /// REGISTER came on):
    /// - connection-oriented transports: that flow — its connection while
    ///   it is open, which is the only way to a phone behind NAT and what
    ///   RFC 5626 asks (and for WebSocket the only way at all: its contact
    ///   host is a made-up `.invalid` name, RFC 7118 s.5), else a
    ///   connection to the REGISTER's source;
    /// - UDP: the contact URI's address when it names the same IP address
    ///   as the REGISTER came from (not NATed: a device may register a
    ///   contact on another port than it sends from), otherwise the source
    ///   (NAT: the private address in the contact is unreachable, the
    ///   source address and port are the pinhole; what Kamailio's
    ///   `fix_nated_contact` does). Sent from the socket the REGISTER
    ///   arrived on, so the NAT sees the reply come from where it expects.
    pub fn for_binding(uri: &str, registered: Flow) -> RouteTarget {
        let flow = if registered.is_reliable() {
            registered
        } else {
            match crate::transport::uri_destination(uri) {
                Some((_, d)) if d.ip() == registered.remote.ip() => Flow {
                    remote: d,
                    connection: None,
                    ..registered
                },
                _ => Flow {
                    connection: None,
                    ..registered
                },
            }
        };
        RouteTarget {
            uri: uri.to_owned(),
            flow,
            member: None,
        }
    }
}

/// Whether a contact registered from `source` is behind a NAT: its URI
/// does not name the source's IP address (a private address, or a host
/// name that says nothing about where the phone is).
pub fn contact_is_natted(uri: &str, source: std::net::SocketAddr) -> bool {
    let Some(u) = crate::wire::message::Uri::parse(uri) else {
        return true;
    };
    crate::wire::message::host_ip(u.host) != Some(source.ip())
}

/// Which leg of a call a step is recorded for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallDirection {
    /// The caller's leg.
    Outbound,
    /// The callee's leg.
    Inbound,
}

/// Who ended an answered call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HangupSide {
    Caller,
    Callee,
    /// The proxy (maximum call duration).
    System,
}

/// Why a call ended or failed (the causes of `docs/events.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallCause {
    NormalClearing,
    OriginatorCancel,
    UserBusy,
    NoAnswer,
    CallRejected,
    NotFound,
    Unavailable,
    Timeout,
    /// A ring group member's phone stopped ringing because another member
    /// answered.
    AnsweredElsewhere,
    /// The call was handed on by a transfer: the transferor hung up after
    /// the transferee reported the new call answered, or the dialog was
    /// replaced by the transfer's new call (RFC 3891).
    Transferred,
}

impl CallCause {
    /// The cause of a final failure response from the callee's side.
    pub fn for_status(status: u16) -> CallCause {
        match status {
            404 | 604 => CallCause::NotFound,
            408 => CallCause::Timeout,
            480 => CallCause::Unavailable,
            486 | 600 => CallCause::UserBusy,
            487 => CallCause::OriginatorCancel,
            500..=599 => CallCause::Unavailable,
            _ => CallCause::CallRejected,
        }
    }
}

/// One step of one leg of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallStep {
    Start {
        direction: CallDirection,
        /// `user@domain` of the caller and of the callee.
        from: String,
        to: String,
        sip_call_id: String,
    },
    Ringing,
    Answer {
        /// The contact that answered.
        contact: String,
    },
    End {
        cause: CallCause,
        side: HangupSide,
    },
    Fail {
        sip_status: u16,
        cause: CallCause,
    },
    /// The leg's user forwarded the call to `to` (`user@domain`): the
    /// leg is over, the call goes on without it.
    Forwarded {
        to: String,
        reason: DiversionReason,
    },
    /// A forwarding rule of the leg's user was not taken (see
    /// [`SkippedForward`]); the leg goes on.
    ForwardSkipped(SkippedForward),
    /// The leg's user (the transferor) transferred the call: see
    /// [`Transfer`]. Recorded on the transferor's leg of the original
    /// call, possibly just after that leg ended.
    Transferred(Transfer),
}

/// A call transfer (REFER, RFC 3515) recognised by the proxy: the
/// transferee's new call is the one the transferor's REFER asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The `call_id` of the transferee's new call to the target.
    pub new_call_id: String,
    /// `user@domain` of each party.
    pub transferor: String,
    pub transferee: String,
    pub target: String,
    pub kind: TransferKind,
    /// Attended: the `call_id` of the transferor's call with the target
    /// that the new call replaces, when the proxy knew that dialog.
    pub replaced_call_id: Option<String>,
}

/// How a call was transferred.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferKind {
    /// Refer-To without Replaces.
    Blind,
    /// Refer-To with Replaces (RFC 3891): the new call replaces the
    /// transferor's call with the target.
    Attended,
}

/// A step to record for the leg of `user@domain` in call `call_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// Shared by both legs of one call (a UUID made by the proxy).
    pub call_id: String,
    pub domain: String,
    pub user: String,
    pub step: CallStep,
    pub sip_call_id: String,
}

/// The answer to [`SipBackend::watch`]: what a SUBSCRIBE to
/// `user@domain` finds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Watch {
    /// Not a domain we serve, or no such user: 404.
    UnknownUser,
    /// The user's state now, as recorded (durable).
    Found(ResourceState),
}

/// What subscribers of a user are told: its availability and its calls in
/// progress, as of `version` of its recorded history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    /// The version (of the user's event stream) this state reflects: a
    /// [`ResourceChange`] at or below it is already included.
    pub version: u64,
    pub availability: Availability,
    /// The user's call legs in progress, oldest first.
    pub calls: Vec<CallState>,
    /// The user's voicemail messages (RFC 3842 `message-summary`).
    pub messages: MessageCounts,
}

/// New and old (listened to) voicemail messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessageCounts {
    pub new: u32,
    pub old: u32,
}

/// A user's availability, as the `presence` package shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Availability {
    /// No registered contact.
    #[default]
    Offline,
    /// Registered, no call.
    Online,
    /// An inbound call rings and none is answered.
    Ringing,
    /// A call is answered.
    OnThePhone,
    /// Registered but taking no calls: the user's do-not-disturb is on.
    DoNotDisturb,
}

/// One call leg of a watched user, as the `dialog` package shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallState {
    /// The leg's `call_id` (shared by both legs of a call): the dialog id.
    pub call_id: String,
    /// The caller's SIP Call-ID.
    pub sip_call_id: String,
    /// `Outbound`: the watched user called (`initiator`); `Inbound`: it is
    /// called (`recipient`).
    pub direction: CallDirection,
    /// The other party, `user@domain`.
    pub remote: String,
    pub phase: CallPhase,
}

/// RFC 4235 dialog states, as the recorded call steps give them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallPhase {
    /// Started, not ringing yet.
    Trying,
    /// Ringing.
    Early,
    /// Answered.
    Confirmed,
    /// Ended or failed: reported once, then forgotten.
    Terminated,
}

/// A recorded change of a watched user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceChange {
    Availability(Availability),
    /// A leg started or moved on. A step for a leg the subscriptions do
    /// not know (its start was never seen) carries what is known of it.
    Call(CallState),
    /// A leg moved to `phase` (the rest of the leg is known from its start).
    CallPhase {
        call_id: String,
        phase: CallPhase,
    },
    /// The voicemail box's counts are now these.
    Messages(MessageCounts),
}

/// Where the backend delivers recorded changes of the users a
/// [`SipBackend::watch`] asked about (the gateway's subscriptions).
pub trait ResourceWatcher: Send + Sync + 'static {
    /// `user@domain` changed at `version` of its history. Called in the
    /// order the changes were recorded; must not block.
    fn changed(&self, domain: &str, user: &str, version: u64, change: ResourceChange);

    /// `user@domain`'s box has these counts now and asks for unsolicited
    /// message-waiting NOTIFYs: tell its registered `contacts` (each
    /// reached as a call to it would be), but for those whose device
    /// subscribes to `message-summary`. Must not block.
    fn message_waiting(
        &self,
        domain: &str,
        user: &str,
        counts: MessageCounts,
        contacts: Vec<RouteTarget>,
    );
}

/// What the gateway needs from the rest of the system. Implementations must
/// be cheap to call concurrently: the gateway calls them from many tasks.
///
/// Used as `Arc<dyn SipBackend>`.
#[async_trait::async_trait]
pub trait SipBackend: Send + Sync + 'static {
    /// Digest credentials of `user@domain` (domain = digest realm, lower
    /// case). Called for every REGISTER, also the first one that gets the
    /// 401 (the domain decides between 404 and a challenge).
    async fn credentials(&self, domain: &str, user: &str) -> Result<Lookup, BackendError>;

    /// Applies an authenticated REGISTER's binding changes *durably* and
    /// returns the user's contacts after it. The backend owns the binding
    /// rules: maximum contacts (the oldest is replaced), Call-ID/CSeq
    /// ordering, refresh versus new binding, and the events.
    async fn register(&self, request: RegisterRequest) -> Result<RegisterOutcome, BackendError>;

    /// The current contacts of an authenticated user (REGISTER without
    /// Contact: a query, RFC 3261 s.10.2.3).
    async fn contacts(&self, domain: &str, user: &str)
        -> Result<Vec<CurrentContact>, BackendError>;

    /// Where an authenticated INVITE from a user of `caller_domain` to
    /// `callee_user@callee_domain` goes.
    async fn route_call(
        &self,
        caller_domain: &str,
        callee_domain: &str,
        callee_user: &str,
    ) -> Result<CallRoute, BackendError>;

    /// Whether an authenticated INVITE from `caller_user@caller_domain`
    /// dialling `dialled` (the Request-URI's user part, `%23` read as `#`)
    /// is a feature code of the caller's domain (ADR 0020), and if so
    /// applies it for the caller, durably, before it returns. `sip_call_id`
    /// is the INVITE's Call-ID (the change's correlation id). Backends
    /// without feature codes route every call.
    async fn feature_code(
        &self,
        caller_domain: &str,
        caller_user: &str,
        dialled: &str,
        sip_call_id: &str,
    ) -> Result<FeatureOutcome, BackendError> {
        let _ = (caller_domain, caller_user, dialled, sip_call_id);
        Ok(FeatureOutcome::NotAFeature)
    }

    /// Starts the application `route` names for `call`: an SDP answer and
    /// the session that hears of the call from now on, or a refusal. The
    /// application hangs up through `control`. Backends without
    /// applications refuse with 480.
    async fn start_app(
        &self,
        route: &AppRoute,
        call: AppCall<'_>,
        control: crate::proxy::AppControl,
    ) -> Result<AppStart, BackendError> {
        let _ = (route, call, control);
        Ok(AppStart::Refuse {
            status: 480,
            reason: "Temporarily Unavailable (no application here)".to_owned(),
        })
    }

    /// Records call steps durably (returns when they are). The steps of one
    /// call come in order, one batch at a time (the proxy waits for a batch
    /// before it hands over the next). Different legs may be written
    /// concurrently; a batch may hold several steps of one leg (those that
    /// queued up while the previous batch was written), which must be
    /// written in their order, best in one append.
    /// Required: a backend that drops these silently would answer calls
    /// whose history is lost.
    async fn record_call(&self, records: Vec<CallRecord>) -> Result<(), BackendError>;

    /// The recorded state of `user@domain` for a SUBSCRIBE, and from now
    /// on its changes delivered to the [`ResourceWatcher`] given to
    /// [`SipBackend::set_watcher`]. The changes start before the state is
    /// read, so none is lost in between (the state's `version` tells
    /// which ones it already includes).
    async fn watch(&self, domain: &str, user: &str) -> Result<Watch, BackendError>;

    /// Where changes of watched users go (called once, when the gateway
    /// starts).
    fn set_watcher(&self, watcher: std::sync::Arc<dyn ResourceWatcher>);

    /// A source was locked out after failed digest authentications (at most
    /// once per lock, and rate-limited by the gateway): record it as a
    /// security event. Must not block (spawn the work).
    fn lockout(&self, lockout: crate::guard::Lockout);

    /// A connection closed (the peer closed it, it broke, it stayed idle
    /// too long, or the node dropped it): the bindings registered over it
    /// are gone with it (RFC 5626 s.5.3), as events. Called once per
    /// connection, also for one that never carried a REGISTER. Must not
    /// block (spawn the work).
    fn flow_closed(&self, connection: ConnectionId);
}

/// The part of [`SipBackend`] a registrar needs: for tools and benchmarks
/// that serve registrations only. Wrapped in [`RegistrarOnly`] it is a
/// [`SipBackend`] that says so explicitly: every call gets 404, nothing
/// is recorded, lock-outs are only counted in the gateway's metrics.
#[async_trait::async_trait]
pub trait RegistrarBackend: Send + Sync + 'static {
    /// As [`SipBackend::credentials`].
    async fn credentials(&self, domain: &str, user: &str) -> Result<Lookup, BackendError>;
    /// As [`SipBackend::register`].
    async fn register(&self, request: RegisterRequest) -> Result<RegisterOutcome, BackendError>;
    /// As [`SipBackend::contacts`].
    async fn contacts(&self, domain: &str, user: &str)
        -> Result<Vec<CurrentContact>, BackendError>;
}

/// A [`SipBackend`] that serves registrations only (see
/// [`RegistrarBackend`]).
pub struct RegistrarOnly<B>(pub B);

#[async_trait::async_trait]
impl<B: RegistrarBackend> SipBackend for RegistrarOnly<B> {
    async fn credentials(&self, domain: &str, user: &str) -> Result<Lookup, BackendError> {
        self.0.credentials(domain, user).await
    }

    async fn register(&self, request: RegisterRequest) -> Result<RegisterOutcome, BackendError> {
        self.0.register(request).await
    }

    async fn contacts(
        &self,
        domain: &str,
        user: &str,
    ) -> Result<Vec<CurrentContact>, BackendError> {
        self.0.contacts(domain, user).await
    }

    async fn route_call(&self, _: &str, _: &str, _: &str) -> Result<CallRoute, BackendError> {
        Ok(CallRoute::UnknownUser)
    }

    async fn record_call(&self, _: Vec<CallRecord>) -> Result<(), BackendError> {
        // No call is ever set up: route_call refuses every one.
        Ok(())
    }

    async fn watch(&self, _: &str, _: &str) -> Result<Watch, BackendError> {
        // No user has presence or calls here: subscriptions get 404.
        Ok(Watch::UnknownUser)
    }

    fn set_watcher(&self, _: std::sync::Arc<dyn ResourceWatcher>) {}

    fn lockout(&self, _: crate::guard::Lockout) {}

    // A registrar-only tool keeps its bindings until they expire: it has
    // no flows to route calls on.
    fn flow_closed(&self, _: ConnectionId) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(transport: Transport, remote: &str, connection: Option<u64>) -> Flow {
        Flow {
            transport,
            remote: remote.parse().unwrap(),
            local: Some("192.0.2.1:5060".parse().unwrap()),
            connection: connection.map(ConnectionId),
        }
    }

    #[test]
    fn a_binding_is_reached_on_its_flow() {
        // Connection-oriented: the connection the REGISTER came on.
        let tcp = flow(Transport::Tcp, "198.51.100.7:40123", Some(7));
        assert_eq!(
            RouteTarget::for_binding("sip:a@10.0.0.2:5060;transport=tcp", tcp).flow,
            tcp
        );
        // UDP behind NAT: the source address, from the same local socket.
        let udp = flow(Transport::Udp, "198.51.100.7:40123", None);
        assert_eq!(
            RouteTarget::for_binding("sip:a@10.0.0.2:5060", udp).flow,
            udp
        );
        // UDP, not NATed: the contact's port.
        let t = RouteTarget::for_binding("sip:a@198.51.100.7:5062", udp);
        assert_eq!(t.flow.remote, "198.51.100.7:5062".parse().unwrap());
        assert_eq!(t.flow.local, udp.local);
    }

    #[test]
    fn nat_is_a_contact_not_naming_the_source_address() {
        let source = "198.51.100.7:40123".parse().unwrap();
        assert!(contact_is_natted("sip:a@10.0.0.2:5060", source));
        assert!(contact_is_natted("sip:a@phone.example.com", source));
        assert!(!contact_is_natted("sip:a@198.51.100.7:5060", source));
    }
}
