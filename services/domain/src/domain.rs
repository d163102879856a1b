//! The `Domain` aggregate: one SIP domain, its settings, its status and the
//! uniqueness of names inside it (users, ring groups, conference rooms),
//! and how its users' calls leave for the outside: its trunks and dial
//! plan (ADR 0028).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::conference_pin::{self, PinGuard, Strikes};
use crate::conference_room::{Room, RoomPatch};
use crate::dial_plan::DialPlan;
use crate::feature_codes::{self, FeatureCodes};
use crate::ring_group::{RingGroup, RingGroupPatch};
use crate::schedule::TimeZone;
use crate::trunk::{Trunk, TrunkPatch};

use crate::{DomainId, DomainName, Error, Result, Timestamp, UserId, UserName};

/// A digest algorithm a domain's users may authenticate with (RFC 7616,
/// RFC 8760).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum DigestAlgorithm {
    #[serde(rename = "SHA-256")]
    Sha256,
    #[serde(rename = "MD5")]
    Md5,
}

impl DigestAlgorithm {
    /// Every algorithm, in the order the names are listed in messages.
    pub const ALL: [DigestAlgorithm; 2] = [DigestAlgorithm::Sha256, DigestAlgorithm::Md5];

    /// The canonical name, as in the `algorithm` parameter of a challenge.
    pub fn as_str(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "SHA-256",
            DigestAlgorithm::Md5 => "MD5",
        }
    }

    /// Parses a name, case-insensitively (`sha-256`, `MD5`, ...).
    pub fn parse(name: &str) -> Result<Self> {
        let name = name.trim();
        Self::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(name))
            .ok_or_else(|| {
                Error::invalid(
                    "digest_algorithms",
                    format!("unknown digest algorithm {name:?} (known: SHA-256, MD5)"),
                )
            })
    }
}

impl std::fmt::Display for DigestAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The digest algorithms a domain offers, in challenge order: the SIP
/// gateway sends one challenge per algorithm in this order and accepts
/// answers with these algorithms only. Never empty, no algorithm twice
/// (so it fits in an array: a `Copy` value for the SIP path's reads).
#[derive(Clone, Copy, Serialize, Deserialize)]
#[serde(try_from = "Vec<DigestAlgorithm>", into = "Vec<DigestAlgorithm>")]
pub struct DigestAlgorithms {
    list: [DigestAlgorithm; DigestAlgorithm::ALL.len()],
    len: usize,
}

impl DigestAlgorithms {
    /// Checks a list: not empty, no algorithm twice.
    pub fn new(list: &[DigestAlgorithm]) -> Result<Self> {
        let mut checked = DigestAlgorithms {
            list: DigestAlgorithm::ALL,
            len: 0,
        };
        for a in list {
            if checked.contains(*a) {
                return Err(Error::invalid(
                    "digest_algorithms",
                    format!("{a} is listed twice"),
                ));
            }
            // Without duplicates there are at most `ALL.len()` of them.
            if let Some(slot) = checked.list.get_mut(checked.len) {
                *slot = *a;
                checked.len += 1;
            }
        }
        if checked.len == 0 {
            return Err(Error::invalid(
                "digest_algorithms",
                "must name at least one algorithm (SHA-256, MD5)",
            ));
        }
        Ok(checked)
    }

    /// Parses names (case-insensitive, as an operator types them) into a
    /// checked list.
    pub fn parse<S: AsRef<str>>(names: impl IntoIterator<Item = S>) -> Result<Self> {
        let list = names
            .into_iter()
            .map(|n| DigestAlgorithm::parse(n.as_ref()))
            .collect::<Result<Vec<_>>>()?;
        Self::new(&list)
    }

    /// Parses a comma-separated list (`sha-256,md5`), as in the CLI and the
    /// configuration file.
    pub fn parse_comma_separated(text: &str) -> Result<Self> {
        Self::parse(text.split(','))
    }

    fn of(list: &[DigestAlgorithm]) -> Self {
        // Only called with constant lists that are valid.
        Self::new(list).unwrap_or(DigestAlgorithms {
            list: DigestAlgorithm::ALL,
            len: 1,
        })
    }

    /// MD5 only: the default of a new domain, because every common SIP
    /// client answers an MD5 challenge while several refuse a 401 that
    /// also carries a SHA-256 one (ADR 0012).
    pub fn md5_only() -> Self {
        Self::of(&[DigestAlgorithm::Md5])
    }

    /// What a domain offered before the list existed, from its
    /// `md5_allowed` flag: SHA-256, then MD5 when allowed.
    pub fn from_md5_allowed(md5_allowed: bool) -> Self {
        if md5_allowed {
            Self::of(&[DigestAlgorithm::Sha256, DigestAlgorithm::Md5])
        } else {
            Self::of(&[DigestAlgorithm::Sha256])
        }
    }

    /// This list with MD5 allowed or not (the meaning of the deprecated
    /// `md5_allowed` setting): allowing adds MD5 at the end when missing;
    /// refusing removes it, leaving SHA-256 if nothing else remains.
    pub fn with_md5_allowed(&self, allowed: bool) -> Self {
        let mut list = self.as_slice().to_vec();
        if allowed {
            if !list.contains(&DigestAlgorithm::Md5) {
                list.push(DigestAlgorithm::Md5);
            }
        } else {
            list.retain(|a| *a != DigestAlgorithm::Md5);
            if list.is_empty() {
                list.push(DigestAlgorithm::Sha256);
            }
        }
        Self::of(&list)
    }

    pub fn contains(&self, algorithm: DigestAlgorithm) -> bool {
        self.as_slice().contains(&algorithm)
    }

    pub fn as_slice(&self) -> &[DigestAlgorithm] {
        self.list.get(..self.len).unwrap_or_default()
    }

    /// The canonical names in order (`["SHA-256", "MD5"]`).
    pub fn names(&self) -> Vec<String> {
        self.as_slice()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect()
    }
}

// Equal lists are equal whatever the unused slots of the array hold.
impl PartialEq for DigestAlgorithms {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for DigestAlgorithms {}

impl std::hash::Hash for DigestAlgorithms {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl std::fmt::Debug for DigestAlgorithms {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl Default for DigestAlgorithms {
    fn default() -> Self {
        Self::md5_only()
    }
}

impl TryFrom<Vec<DigestAlgorithm>> for DigestAlgorithms {
    type Error = Error;

    fn try_from(list: Vec<DigestAlgorithm>) -> Result<Self> {
        Self::new(&list)
    }
}

impl From<DigestAlgorithms> for Vec<DigestAlgorithm> {
    fn from(list: DigestAlgorithms) -> Self {
        list.as_slice().to_vec()
    }
}

impl std::fmt::Display for DigestAlgorithms {
    /// Comma-separated canonical names (`SHA-256,MD5`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, a) in self.as_slice().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(a.as_str())?;
        }
        Ok(())
    }
}

/// Settings an operator can change on a domain.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredSettings", into = "StoredSettings")]
pub struct Settings {
    /// Free text for operators.
    pub description: String,
    /// Whether users of this domain may call users of other domains.
    pub allow_cross_domain_calls: bool,
    /// The digest algorithms offered to this domain's users, in challenge
    /// order.
    pub digest_algorithms: DigestAlgorithms,
    /// Where the domain's schedules are read (business hours of its
    /// users' forwarding rules); UTC unless set.
    pub time_zone: TimeZone,
    /// What the domain's users dial to change their own forwarding and
    /// do-not-disturb, or to reach voicemail (ADR 0020).
    pub feature_codes: FeatureCodes,
}

/// The stored form of [`Settings`] (events and snapshots). `md5_allowed`
/// is what settings held before `digest_algorithms` existed; it is still
/// written (whether MD5 is in the list) for readers that know only it.
/// Settings stored without `digest_algorithms` read as what the node
/// offered such a domain then: SHA-256, then MD5 when `md5_allowed` (true
/// when absent too).
#[derive(Serialize, Deserialize)]
struct StoredSettings {
    #[serde(default)]
    description: String,
    #[serde(default)]
    allow_cross_domain_calls: bool,
    #[serde(default = "default_true")]
    md5_allowed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest_algorithms: Option<DigestAlgorithms>,
    /// Absent: UTC (also what settings stored before it existed mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_zone: Option<TimeZone>,
    /// Absent: the default codes, on (also what settings stored before
    /// they existed mean).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    feature_codes: Option<FeatureCodes>,
}

fn default_true() -> bool {
    true
}

impl From<StoredSettings> for Settings {
    fn from(stored: StoredSettings) -> Self {
        Settings {
            description: stored.description,
            allow_cross_domain_calls: stored.allow_cross_domain_calls,
            digest_algorithms: stored
                .digest_algorithms
                .unwrap_or_else(|| DigestAlgorithms::from_md5_allowed(stored.md5_allowed)),
            time_zone: stored.time_zone.unwrap_or_default(),
            feature_codes: stored.feature_codes.unwrap_or_default(),
        }
    }
}

impl From<Settings> for StoredSettings {
    fn from(settings: Settings) -> Self {
        StoredSettings {
            description: settings.description,
            allow_cross_domain_calls: settings.allow_cross_domain_calls,
            md5_allowed: settings.digest_algorithms.contains(DigestAlgorithm::Md5),
            digest_algorithms: Some(settings.digest_algorithms),
            time_zone: (!settings.time_zone.is_utc()).then_some(settings.time_zone),
            feature_codes: (settings.feature_codes != FeatureCodes::default())
                .then_some(settings.feature_codes),
        }
    }
}

impl Settings {
    pub const MAX_DESCRIPTION_LEN: usize = 1024;

    /// Whether MD5 is among the digest algorithms (the deprecated
    /// `md5_allowed` setting, as the API still reports it).
    pub fn md5_allowed(&self) -> bool {
        self.digest_algorithms.contains(DigestAlgorithm::Md5)
    }

    fn validate(&self) -> Result<()> {
        if self.description.chars().count() > Self::MAX_DESCRIPTION_LEN {
            return Err(Error::invalid(
                "description",
                format!("at most {} characters", Self::MAX_DESCRIPTION_LEN),
            ));
        }
        Ok(())
    }
}

/// A partial update of [`Settings`]: `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SettingsPatch {
    pub description: Option<String>,
    pub allow_cross_domain_calls: Option<bool>,
    /// The new list of digest algorithms.
    pub digest_algorithms: Option<DigestAlgorithms>,
    /// Deprecated form of `digest_algorithms`: adds MD5 to the list (at
    /// the end) or removes it (see [`DigestAlgorithms::with_md5_allowed`]).
    /// Applied after `digest_algorithms`; giving both with different
    /// answers on MD5 is refused.
    pub md5_allowed: Option<bool>,
    pub time_zone: Option<TimeZone>,
    pub feature_codes: feature_codes::Patch,
}

impl SettingsPatch {
    fn apply(&self, current: &Settings) -> Result<Settings> {
        let mut digest_algorithms = self.digest_algorithms.unwrap_or(current.digest_algorithms);
        if let Some(md5_allowed) = self.md5_allowed {
            if self.digest_algorithms.is_some()
                && digest_algorithms.contains(DigestAlgorithm::Md5) != md5_allowed
            {
                return Err(Error::invalid(
                    "md5_allowed",
                    format!(
                        "md5_allowed={md5_allowed} contradicts digest_algorithms {digest_algorithms}; \
                         give digest_algorithms only (md5_allowed is deprecated)"
                    ),
                ));
            }
            digest_algorithms = digest_algorithms.with_md5_allowed(md5_allowed);
        }
        Ok(Settings {
            description: self
                .description
                .clone()
                .unwrap_or_else(|| current.description.clone()),
            allow_cross_domain_calls: self
                .allow_cross_domain_calls
                .unwrap_or(current.allow_cross_domain_calls),
            digest_algorithms,
            time_zone: self
                .time_zone
                .clone()
                .unwrap_or_else(|| current.time_zone.clone()),
            feature_codes: self.feature_codes.apply(&current.feature_codes)?,
        })
    }

    /// The settings of a new domain: this patch over `defaults` (the
    /// node's defaults for new domains).
    pub fn over(&self, defaults: &Settings) -> Result<Settings> {
        self.apply(defaults)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Never created (an empty stream).
    #[default]
    Absent,
    Active,
    Suspended,
    Deleted,
}

/// The state of a domain, rebuilt by folding its events with [`evolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Domain {
    pub id: Option<DomainId>,
    pub name: Option<DomainName>,
    pub status: Status,
    pub settings: Settings,
    pub suspend_reason: Option<String>,
    /// User names claimed in this domain and the user holding each.
    pub users: BTreeMap<UserName, UserId>,
    pub created_at: Timestamp,
    /// The domain's ring groups, by name ([`crate::ring_group`]): a name is
    /// a user or a group, never both. (`default`: snapshots from before
    /// ring groups.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ring_groups: BTreeMap<UserName, RingGroup>,
    /// The domain's conference rooms, by name ([`crate::conference_room`]):
    /// a name is a user, a group or a room, never two. (`default`:
    /// snapshots from before rooms.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conference_rooms: BTreeMap<UserName, Room>,
    /// The domain's trunks to carriers, by name ([`crate::trunk`]; a
    /// namespace of their own: a trunk is never dialled). (`default`:
    /// snapshots from before trunks.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trunks: BTreeMap<UserName, Trunk>,
    /// Which trunk what the users dial leaves by ([`crate::dial_plan`]).
    #[serde(default, skip_serializing_if = "is_empty_plan")]
    pub dial_plan: DialPlan,
    /// Wrong PINs entered by phone, per room with any
    /// ([`crate::conference_pin`]). (`default`: snapshots from before.)
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conference_pin_guards: BTreeMap<UserName, PinGuard>,
}

fn is_empty_plan(plan: &DialPlan) -> bool {
    plan.rules.is_empty() && plan.classes.is_empty()
}

impl Domain {
    /// True while the domain exists (active or suspended).
    pub fn exists(&self) -> bool {
        matches!(self.status, Status::Active | Status::Suspended)
    }

    /// `name@` this domain, for messages.
    fn address_of(&self, name: &UserName) -> String {
        format!(
            "{}@{}",
            name,
            self.name.as_ref().map(DomainName::as_str).unwrap_or("?")
        )
    }

    fn label(&self) -> String {
        match &self.name {
            Some(name) => format!("domain {name}"),
            None => "domain".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Create {
        name: DomainName,
        settings: Settings,
    },
    Update {
        patch: SettingsPatch,
    },
    Suspend {
        reason: Option<String>,
    },
    Resume,
    Delete,
    /// Reserve `username` for `user_id` (the user stream exists already).
    ClaimUserName {
        username: UserName,
        user_id: UserId,
    },
    /// Free `username` after its user was deleted.
    ReleaseUserName {
        username: UserName,
        user_id: UserId,
    },
    /// The SIP gateway locked a source address out after failed digest
    /// authentications against this domain (a security event).
    RecordLockout(Lockout),
    /// Create the ring group `name` with the patch's settings (defaults for
    /// the rest).
    CreateRingGroup {
        name: UserName,
        patch: RingGroupPatch,
    },
    /// Change some settings of the ring group `name`.
    UpdateRingGroup {
        name: UserName,
        patch: RingGroupPatch,
    },
    DeleteRingGroup {
        name: UserName,
    },
    /// Create the conference room `name` with the patch's settings
    /// (defaults for the rest).
    CreateConferenceRoom {
        name: UserName,
        patch: RoomPatch,
    },
    /// Change some settings of the conference room `name`.
    UpdateConferenceRoom {
        name: UserName,
        patch: RoomPatch,
    },
    DeleteConferenceRoom {
        name: UserName,
    },
    /// Create the trunk `name` (the password in the patch is sealed
    /// already).
    CreateTrunk {
        name: UserName,
        patch: TrunkPatch,
    },
    /// Change some settings of the trunk `name`.
    UpdateTrunk {
        name: UserName,
        patch: TrunkPatch,
    },
    /// Delete the trunk `name`; refused while a dial plan rule names it.
    DeleteTrunk {
        name: UserName,
    },
    /// Replace the dial plan (every trunk it names must exist, every user
    /// it names must be a user of the domain).
    SetDialPlan {
        plan: DialPlan,
    },
    /// A PIN entered by phone in the room `name`, or an operator clearing
    /// its lock-outs ([`crate::conference_pin`]).
    ConferencePin {
        name: UserName,
        command: conference_pin::Command,
    },
}

/// What a lock-out covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockoutScope {
    /// One user name from one source address.
    User,
    /// Every request from the source address.
    Source,
}

/// A lock-out of a source address by the SIP gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lockout {
    /// The source IP address, as text.
    pub source: String,
    pub scope: LockoutScope,
    /// The user name tried (for [`LockoutScope::User`]); as sent, it need
    /// not be a user of the domain (a scanner's guess).
    pub username: Option<String>,
    /// Failures counted in the gateway's window.
    pub failures: u32,
    /// How long the source is refused.
    pub duration_secs: u32,
}

/// Longest user name recorded in a lock-out (longer guesses are cut).
pub const MAX_LOCKOUT_USERNAME_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    DomainCreated {
        domain_id: DomainId,
        name: DomainName,
        settings: Settings,
        created_at: Timestamp,
    },
    DomainUpdated {
        settings: Settings,
    },
    DomainSuspended {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    DomainResumed {},
    DomainDeleted {},
    UserNameClaimed {
        username: UserName,
        user_id: UserId,
    },
    UserNameReleased {
        username: UserName,
        user_id: UserId,
    },
    /// A source address is refused by the SIP gateway until `locked_until`
    /// after `failures` failed authentications (category `security`).
    SourceLockedOut {
        source: String,
        scope: LockoutScope,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        username: Option<String>,
        failures: u32,
        locked_at: Timestamp,
        locked_until: Timestamp,
    },
    RingGroupCreated {
        name: UserName,
        group: Box<RingGroup>,
    },
    /// The group's settings after the change (all of them).
    RingGroupUpdated {
        name: UserName,
        group: Box<RingGroup>,
    },
    RingGroupDeleted {
        name: UserName,
    },
    /// A conference room, with all its settings (PINs as salted hashes).
    ConferenceRoomCreated {
        name: UserName,
        room: Box<Room>,
    },
    /// The room's settings after the change (all of them).
    ConferenceRoomUpdated {
        name: UserName,
        room: Box<Room>,
    },
    ConferenceRoomDeleted {
        name: UserName,
    },
    /// A trunk, with all its settings (the carrier password sealed).
    TrunkCreated {
        name: UserName,
        trunk: Box<Trunk>,
    },
    /// The trunk's settings after the change (all of them).
    TrunkUpdated {
        name: UserName,
        trunk: Box<Trunk>,
    },
    TrunkDeleted {
        name: UserName,
    },
    /// The dial plan after the change (all of it).
    DialPlanChanged {
        plan: Box<DialPlan>,
    },
    /// A wrong PIN entered by phone in the room `name` (category
    /// `security`): the caller's strikes after it and, for a caller not
    /// authenticated, the room's.
    ConferencePinRejected {
        name: UserName,
        /// `user@domain` when authenticated, else the source IP address.
        caller: String,
        authenticated: bool,
        strikes: Strikes,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room_strikes: Option<Strikes>,
        rejected_at: Timestamp,
    },
    /// The right PIN from a caller with strikes: they are cleared.
    ConferencePinAccepted {
        name: UserName,
        caller: String,
    },
    /// An operator cleared a caller's strikes, or (no `caller`) all of the
    /// room's.
    ConferencePinLockoutsCleared {
        name: UserName,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        caller: Option<String>,
        cleared_at: Timestamp,
    },
}

/// Decides what a command does to a domain. `now` is the caller's clock.
pub fn decide(state: &Domain, command: &Command, now: Timestamp) -> Result<Vec<Event>> {
    use Command as C;
    match command {
        C::Create { name, settings } => {
            if state.exists() {
                return Err(Error::AlreadyExists(format!("domain {name}")));
            }
            settings.validate()?;
            Ok(vec![Event::DomainCreated {
                domain_id: DomainId::for_name(name),
                name: name.clone(),
                settings: settings.clone(),
                created_at: now,
            }])
        }
        C::Update { patch } => {
            require_exists(state)?;
            let settings = patch.apply(&state.settings)?;
            settings.validate()?;
            if settings == state.settings {
                return Ok(vec![]);
            }
            Ok(vec![Event::DomainUpdated { settings }])
        }
        C::Suspend { reason } => {
            require_exists(state)?;
            if state.status == Status::Suspended {
                return Ok(vec![]);
            }
            if reason.as_ref().is_some_and(|r| r.chars().count() > 256) {
                return Err(Error::invalid("reason", "at most 256 characters"));
            }
            Ok(vec![Event::DomainSuspended {
                reason: reason.clone(),
            }])
        }
        C::Resume => {
            require_exists(state)?;
            if state.status == Status::Active {
                return Ok(vec![]);
            }
            Ok(vec![Event::DomainResumed {}])
        }
        C::Delete => {
            require_exists(state)?;
            if !state.users.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "{} still has {} user(s); delete them first",
                    state.label(),
                    state.users.len()
                )));
            }
            Ok(vec![Event::DomainDeleted {}])
        }
        C::ClaimUserName { username, user_id } => {
            match state.status {
                Status::Absent => return Err(Error::NotFound(state.label())),
                Status::Deleted => {
                    return Err(Error::FailedPrecondition(format!(
                        "{} is deleted",
                        state.label()
                    )))
                }
                Status::Suspended => {
                    return Err(Error::FailedPrecondition(format!(
                        "{} is suspended",
                        state.label()
                    )))
                }
                Status::Active => {}
            }
            if state.ring_groups.contains_key(username) {
                return Err(Error::AlreadyExists(format!(
                    "ring group {}",
                    state.address_of(username)
                )));
            }
            if state.conference_rooms.contains_key(username) {
                return Err(Error::AlreadyExists(format!(
                    "conference room {}",
                    state.address_of(username)
                )));
            }
            match state.users.get(username) {
                Some(holder) if holder == user_id => Ok(vec![]),
                Some(_) => Err(Error::AlreadyExists(format!(
                    "user {}@{}",
                    username,
                    state.name.as_ref().map(DomainName::as_str).unwrap_or("?")
                ))),
                None => Ok(vec![Event::UserNameClaimed {
                    username: username.clone(),
                    user_id: *user_id,
                }]),
            }
        }
        C::ReleaseUserName { username, user_id } => match state.users.get(username) {
            Some(holder) if holder == user_id => Ok(vec![Event::UserNameReleased {
                username: username.clone(),
                user_id: *user_id,
            }]),
            _ => Ok(vec![]),
        },
        C::CreateRingGroup { name, patch } => {
            require_active(state)?;
            if state.users.contains_key(name) {
                return Err(Error::AlreadyExists(format!(
                    "user {} (a ring group cannot take a user's name)",
                    state.address_of(name)
                )));
            }
            if state.ring_groups.contains_key(name) {
                return Err(Error::AlreadyExists(format!(
                    "ring group {}",
                    state.address_of(name)
                )));
            }
            if state.conference_rooms.contains_key(name) {
                return Err(Error::AlreadyExists(format!(
                    "conference room {} (a ring group cannot take a room's name)",
                    state.address_of(name)
                )));
            }
            let group = patch.apply(None, &extension_address(state, name)?)?;
            require_members(state, name, &group)?;
            Ok(vec![Event::RingGroupCreated {
                name: name.clone(),
                group: Box::new(group),
            }])
        }
        C::UpdateRingGroup { name, patch } => {
            require_exists(state)?;
            let current = state
                .ring_groups
                .get(name)
                .ok_or_else(|| Error::NotFound(format!("ring group {}", state.address_of(name))))?;
            let group = patch.apply(Some(current), &extension_address(state, name)?)?;
            if patch.members.is_some() {
                require_members(state, name, &group)?;
            }
            if group == *current {
                return Ok(vec![]);
            }
            Ok(vec![Event::RingGroupUpdated {
                name: name.clone(),
                group: Box::new(group),
            }])
        }
        C::DeleteRingGroup { name } => {
            require_exists(state)?;
            if !state.ring_groups.contains_key(name) {
                return Err(Error::NotFound(format!(
                    "ring group {}",
                    state.address_of(name)
                )));
            }
            Ok(vec![Event::RingGroupDeleted { name: name.clone() }])
        }
        C::CreateConferenceRoom { name, patch } => {
            require_active(state)?;
            if state.users.contains_key(name) {
                return Err(Error::AlreadyExists(format!(
                    "user {} (a conference room cannot take a user's name)",
                    state.address_of(name)
                )));
            }
            if state.ring_groups.contains_key(name) {
                return Err(Error::AlreadyExists(format!(
                    "ring group {} (a conference room cannot take a group's name)",
                    state.address_of(name)
                )));
            }
            if state.conference_rooms.contains_key(name) {
                return Err(Error::AlreadyExists(format!(
                    "conference room {}",
                    state.address_of(name)
                )));
            }
            let room = patch.apply(None, &extension_address(state, name)?)?;
            Ok(vec![Event::ConferenceRoomCreated {
                name: name.clone(),
                room: Box::new(room),
            }])
        }
        C::UpdateConferenceRoom { name, patch } => {
            require_exists(state)?;
            let current = state.conference_rooms.get(name).ok_or_else(|| {
                Error::NotFound(format!("conference room {}", state.address_of(name)))
            })?;
            let room = patch.apply(Some(current), &extension_address(state, name)?)?;
            if room == *current {
                return Ok(vec![]);
            }
            Ok(vec![Event::ConferenceRoomUpdated {
                name: name.clone(),
                room: Box::new(room),
            }])
        }
        C::DeleteConferenceRoom { name } => {
            require_exists(state)?;
            if !state.conference_rooms.contains_key(name) {
                return Err(Error::NotFound(format!(
                    "conference room {}",
                    state.address_of(name)
                )));
            }
            Ok(vec![Event::ConferenceRoomDeleted { name: name.clone() }])
        }
        C::CreateTrunk { name, patch } => {
            require_active(state)?;
            if state.trunks.contains_key(name) {
                return Err(Error::AlreadyExists(format!(
                    "trunk {}",
                    state.address_of(name)
                )));
            }
            let trunk = patch.apply(None, &state.address_of(name))?;
            Ok(vec![Event::TrunkCreated {
                name: name.clone(),
                trunk: Box::new(trunk),
            }])
        }
        C::UpdateTrunk { name, patch } => {
            require_exists(state)?;
            let current = state
                .trunks
                .get(name)
                .ok_or_else(|| Error::NotFound(format!("trunk {}", state.address_of(name))))?;
            let trunk = patch.apply(Some(current), &state.address_of(name))?;
            if trunk == *current {
                return Ok(vec![]);
            }
            Ok(vec![Event::TrunkUpdated {
                name: name.clone(),
                trunk: Box::new(trunk),
            }])
        }
        C::DeleteTrunk { name } => {
            require_exists(state)?;
            if !state.trunks.contains_key(name) {
                return Err(Error::NotFound(format!("trunk {}", state.address_of(name))));
            }
            if let Some(rule) = state.dial_plan.trunks().get(name) {
                return Err(Error::FailedPrecondition(format!(
                    "trunk {} is used by dial plan rule {rule} ('{}'); change the dial plan first",
                    state.address_of(name),
                    state
                        .dial_plan
                        .rules
                        .get(rule - 1)
                        .map(|r| r.pattern.as_str())
                        .unwrap_or("?")
                )));
            }
            Ok(vec![Event::TrunkDeleted { name: name.clone() }])
        }
        C::SetDialPlan { plan } => {
            require_active(state)?;
            if let Some((trunk, rule)) = plan
                .trunks()
                .into_iter()
                .find(|(t, _)| !state.trunks.contains_key(*t))
            {
                return Err(Error::NotFound(format!(
                    "trunk {} (named by dial plan rule {rule})",
                    state.address_of(trunk)
                )));
            }
            if let Some(user) = plan
                .users()
                .into_iter()
                .find(|u| !state.users.contains_key(*u))
            {
                return Err(Error::NotFound(format!(
                    "user {} (named by the dial plan)",
                    state.address_of(user)
                )));
            }
            if *plan == state.dial_plan {
                return Ok(vec![]);
            }
            Ok(vec![Event::DialPlanChanged {
                plan: Box::new(plan.clone()),
            }])
        }
        C::ConferencePin { name, command } => {
            require_exists(state)?;
            if !state.conference_rooms.contains_key(name) {
                return Err(Error::NotFound(format!(
                    "conference room {}",
                    state.address_of(name)
                )));
            }
            let guard = state
                .conference_pin_guards
                .get(name)
                .cloned()
                .unwrap_or_default();
            let change = conference_pin::decide(&guard, command, now).map_err(|locked| {
                Error::ConferencePinLockedOut {
                    until: locked.until,
                }
            })?;
            Ok(change
                .map(|change| pin_event(name, change))
                .into_iter()
                .collect())
        }
        C::RecordLockout(lockout) => {
            require_exists(state)?;
            if lockout.source.parse::<std::net::IpAddr>().is_err() {
                return Err(Error::invalid("source", "must be an IP address"));
            }
            // The user name comes from the network: keep it short and
            // printable.
            let username = lockout.username.as_ref().map(|u| {
                u.chars()
                    .filter(|c| !c.is_control())
                    .take(MAX_LOCKOUT_USERNAME_LEN)
                    .collect::<String>()
            });
            Ok(vec![Event::SourceLockedOut {
                source: lockout.source.clone(),
                scope: lockout.scope,
                username,
                failures: lockout.failures,
                locked_at: now,
                locked_until: now + i64::from(lockout.duration_secs) * 1_000_000,
            }])
        }
    }
}

/// A room's guard change as the domain's event.
fn pin_event(name: &UserName, change: conference_pin::Change) -> Event {
    let name = name.clone();
    match change {
        conference_pin::Change::Rejected {
            caller,
            authenticated,
            strikes,
            room,
            at,
        } => Event::ConferencePinRejected {
            name,
            caller,
            authenticated,
            strikes,
            room_strikes: room,
            rejected_at: at,
        },
        conference_pin::Change::Accepted { caller } => {
            Event::ConferencePinAccepted { name, caller }
        }
        conference_pin::Change::Cleared { caller, at } => Event::ConferencePinLockoutsCleared {
            name,
            caller,
            cleared_at: at,
        },
    }
}

/// The guard change a domain event is, if it is one.
fn pin_change(event: &Event) -> Option<(&UserName, conference_pin::Change)> {
    Some(match event {
        Event::ConferencePinRejected {
            name,
            caller,
            authenticated,
            strikes,
            room_strikes,
            rejected_at,
        } => (
            name,
            conference_pin::Change::Rejected {
                caller: caller.clone(),
                authenticated: *authenticated,
                strikes: strikes.clone(),
                room: room_strikes.clone(),
                at: *rejected_at,
            },
        ),
        Event::ConferencePinAccepted { name, caller } => (
            name,
            conference_pin::Change::Accepted {
                caller: caller.clone(),
            },
        ),
        Event::ConferencePinLockoutsCleared {
            name,
            caller,
            cleared_at,
        } => (
            name,
            conference_pin::Change::Cleared {
                caller: caller.clone(),
                at: *cleared_at,
            },
        ),
        _ => return None,
    })
}

fn require_active(state: &Domain) -> Result<()> {
    require_exists(state)?;
    if state.status == Status::Suspended {
        return Err(Error::FailedPrecondition(format!(
            "{} is suspended",
            state.label()
        )));
    }
    Ok(())
}

/// `name@` this domain, for a group or a room.
fn extension_address(state: &Domain, name: &UserName) -> Result<crate::names::UserAddress> {
    let domain = state
        .name
        .clone()
        .ok_or_else(|| Error::NotFound(state.label()))?;
    Ok(crate::names::UserAddress {
        username: name.clone(),
        domain,
    })
}

/// Every member of `group` is a user of the domain (when the group is
/// set: a member deleted later is skipped by routing).
fn require_members(state: &Domain, name: &UserName, group: &RingGroup) -> Result<()> {
    match group
        .members
        .iter()
        .find(|m| !state.users.contains_key(&m.user))
    {
        Some(m) => Err(Error::NotFound(format!(
            "user {} (listed as a member of ring group {})",
            state.address_of(&m.user),
            state.address_of(name)
        ))),
        None => Ok(()),
    }
}

fn require_exists(state: &Domain) -> Result<()> {
    if state.exists() {
        Ok(())
    } else {
        Err(Error::NotFound(state.label()))
    }
}

/// Applies one event to the state.
pub fn evolve(mut state: Domain, event: &Event) -> Domain {
    match event {
        Event::DomainCreated {
            domain_id,
            name,
            settings,
            created_at,
        } => {
            state.id = Some(*domain_id);
            state.name = Some(name.clone());
            state.status = Status::Active;
            state.settings = settings.clone();
            state.suspend_reason = None;
            state.users.clear();
            state.ring_groups.clear();
            state.conference_rooms.clear();
            state.trunks.clear();
            state.dial_plan = DialPlan::default();
            state.conference_pin_guards.clear();
            state.created_at = *created_at;
        }
        Event::DomainUpdated { settings } => state.settings = settings.clone(),
        Event::DomainSuspended { reason } => {
            state.status = Status::Suspended;
            state.suspend_reason = reason.clone();
        }
        Event::DomainResumed {} => {
            state.status = Status::Active;
            state.suspend_reason = None;
        }
        Event::DomainDeleted {} => {
            state.status = Status::Deleted;
            // The reason of a suspension ends with it, as on resume.
            state.suspend_reason = None;
        }
        Event::UserNameClaimed { username, user_id } => {
            state.users.insert(username.clone(), *user_id);
        }
        Event::UserNameReleased { username, user_id } => {
            if state.users.get(username) == Some(user_id) {
                state.users.remove(username);
            }
        }
        // A record for audits; the domain's state does not change.
        Event::SourceLockedOut { .. } => {}
        Event::RingGroupCreated { name, group } | Event::RingGroupUpdated { name, group } => {
            state.ring_groups.insert(name.clone(), (**group).clone());
        }
        Event::RingGroupDeleted { name } => {
            state.ring_groups.remove(name);
        }
        Event::ConferenceRoomCreated { name, room } => {
            // A new room starts without strikes.
            state.conference_pin_guards.remove(name);
            state
                .conference_rooms
                .insert(name.clone(), (**room).clone());
        }
        Event::ConferenceRoomUpdated { name, room } => {
            state
                .conference_rooms
                .insert(name.clone(), (**room).clone());
        }
        Event::ConferenceRoomDeleted { name } => {
            state.conference_rooms.remove(name);
            state.conference_pin_guards.remove(name);
        }
        Event::ConferencePinRejected { .. }
        | Event::ConferencePinAccepted { .. }
        | Event::ConferencePinLockoutsCleared { .. } => {
            if let Some((name, change)) = pin_change(event) {
                let guard = state.conference_pin_guards.remove(name).unwrap_or_default();
                let guard = conference_pin::evolve(guard, &change);
                if !guard.is_empty() {
                    state.conference_pin_guards.insert(name.clone(), guard);
                }
            }
        }
        Event::TrunkCreated { name, trunk } | Event::TrunkUpdated { name, trunk } => {
            state.trunks.insert(name.clone(), (**trunk).clone());
        }
        Event::TrunkDeleted { name } => {
            state.trunks.remove(name);
        }
        Event::DialPlanChanged { plan } => state.dial_plan = (**plan).clone(),
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> DomainName {
        DomainName::parse(s).unwrap()
    }

    fn given(events: &[Event]) -> Domain {
        events.iter().fold(Domain::default(), evolve)
    }

    fn created() -> Vec<Event> {
        decide(
            &Domain::default(),
            &Command::Create {
                name: name("example.com"),
                settings: Settings::default(),
            },
            1,
        )
        .unwrap()
    }

    #[test]
    fn create_then_create_again_is_already_exists() {
        let state = given(&created());
        assert_eq!(state.status, Status::Active);
        let err = decide(
            &state,
            &Command::Create {
                name: name("example.com"),
                settings: Settings::default(),
            },
            2,
        )
        .unwrap_err();
        assert!(matches!(err, Error::AlreadyExists(_)));
    }

    #[test]
    fn claims_are_unique_and_idempotent() {
        let state = given(&created());
        let alice = UserName::parse("alice").unwrap();
        let (u1, u2) = (
            UserId(uuid::Uuid::from_u128(1)),
            UserId(uuid::Uuid::from_u128(2)),
        );
        let claim = |u| Command::ClaimUserName {
            username: alice.clone(),
            user_id: u,
        };
        let events = decide(&state, &claim(u1), 2).unwrap();
        let state = events.iter().fold(state, evolve);
        assert_eq!(decide(&state, &claim(u1), 3).unwrap(), vec![]);
        assert!(matches!(
            decide(&state, &claim(u2), 3),
            Err(Error::AlreadyExists(_))
        ));
    }

    #[test]
    fn suspended_domain_refuses_claims_and_delete_needs_no_users() {
        let mut events = created();
        events.push(Event::DomainSuspended { reason: None });
        let state = given(&events);
        let cmd = Command::ClaimUserName {
            username: UserName::parse("bob").unwrap(),
            user_id: UserId(uuid::Uuid::from_u128(9)),
        };
        assert!(matches!(
            decide(&state, &cmd, 5),
            Err(Error::FailedPrecondition(_))
        ));
        let mut events = created();
        events.push(Event::UserNameClaimed {
            username: UserName::parse("bob").unwrap(),
            user_id: UserId(uuid::Uuid::from_u128(9)),
        });
        let state = given(&events);
        assert!(matches!(
            decide(&state, &Command::Delete, 5),
            Err(Error::FailedPrecondition(_))
        ));
    }

    #[test]
    fn deleted_domain_can_be_created_again() {
        let mut events = created();
        events.push(Event::DomainDeleted {});
        let state = given(&events);
        assert!(matches!(
            decide(&state, &Command::Resume, 3),
            Err(Error::NotFound(_))
        ));
        let again = decide(
            &state,
            &Command::Create {
                name: name("example.com"),
                settings: Settings::default(),
            },
            4,
        )
        .unwrap();
        assert_eq!(again.len(), 1);
    }
}
