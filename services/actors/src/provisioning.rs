//! Provisioning use cases: domains and users, including the ones that span
//! two actors (a user's name is claimed in its domain), and the API tokens.

use dialtone_domain::credentials::PasswordPolicy;
use dialtone_domain::domain::{self, Settings, SettingsPatch};
use dialtone_domain::forwarding::{FollowMePatch, ForwardTarget, ForwardingPatch, RuleTimesPatch};
use dialtone_domain::names::UserAddress;
use dialtone_domain::ring_group::{Member, RingGroup, RingGroupPatch, Strategy};
use dialtone_domain::schedule::TimeCondition;
use dialtone_domain::token::{self, Scope};
use dialtone_domain::user::{self, NewUser, Patch};
use dialtone_domain::{DomainId, DomainName, Error as DomainError, Timestamp, UserId, UserName};
use uuid::Uuid;

use crate::aggregate::{Meta, View};
use crate::directory::Directory;
use crate::{Error, Result};

pub mod conference;
pub mod trunk;
pub mod voicemail;

#[derive(Debug, Clone, Default)]
pub struct ProvisioningConfig {
    pub password_policy: PasswordPolicy,
    /// The operator's key for carrier passwords (ADR 0028); `None`: trunks
    /// with credentials are refused.
    pub secrets: Option<std::sync::Arc<crate::secrets::SecretsKeyring>>,
}

/// A domain addressed by id or by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainRef {
    Id(DomainId),
    Name(DomainName),
}

impl DomainRef {
    /// A UUID is an id; anything else must be a valid domain name.
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(DomainError::Invalid {
                field: "domain",
                reason: "must not be empty".into(),
            });
        }
        if let Ok(id) = input.parse::<DomainId>() {
            return Ok(DomainRef::Id(id));
        }
        DomainName::parse(input).map(DomainRef::Name)
    }

    pub fn id(&self) -> DomainId {
        match self {
            DomainRef::Id(id) => *id,
            DomainRef::Name(name) => DomainId::for_name(name),
        }
    }
}

/// A user addressed by id or by `username@domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id(UserId),
    Address(UserAddress),
}

impl UserRef {
    pub fn parse(input: &str) -> Result<Self, DomainError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(DomainError::Invalid {
                field: "user",
                reason: "must not be empty".into(),
            });
        }
        if let Ok(id) = input.parse::<UserId>() {
            return Ok(UserRef::Id(id));
        }
        UserAddress::parse(input).map(UserRef::Address)
    }
}

/// What a caller sees of a domain: everything but the (possibly large) map
/// of user names.
#[derive(Debug, Clone)]
pub struct DomainInfo {
    pub id: DomainId,
    pub name: Option<DomainName>,
    pub status: domain::Status,
    pub settings: Settings,
    pub suspend_reason: Option<String>,
    pub user_count: usize,
    pub created_at: i64,
    pub version: Option<u64>,
    pub updated_at: i64,
}

impl DomainInfo {
    fn of(id: DomainId, state: &domain::Domain, version: Option<u64>, updated_at: i64) -> Self {
        DomainInfo {
            id,
            name: state.name.clone(),
            status: state.status,
            settings: state.settings.clone(),
            suspend_reason: state.suspend_reason.clone(),
            user_count: state.users.len(),
            created_at: state.created_at,
            version,
            updated_at,
        }
    }
}

pub struct NewDomain {
    pub name: DomainName,
    pub settings: Settings,
}

pub struct NewUserRequest {
    pub domain: DomainRef,
    pub username: UserName,
    pub password: String,
    pub display_name: String,
    pub caller_id: String,
    pub max_contacts: Option<u32>,
    pub enabled: bool,
}

/// A token to create. The caller makes the id and the secret (the actors
/// have no business with randomness nor with the secret): only the secret's
/// SHA-256 comes here, and only it is recorded.
pub struct NewToken {
    pub token_id: Uuid,
    pub scope: Scope,
    /// SHA-256 of the secret, 64 lower-case hex digits.
    pub secret_sha256: String,
    pub description: String,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("token_id", &self.token_id)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// A token as it may be shown: never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenInfo {
    pub id: Uuid,
    pub scope: Scope,
    pub description: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

impl TokenInfo {
    fn of(state: &token::Tokens, id: Uuid) -> Option<Self> {
        state.tokens.get(&id).map(|t| TokenInfo {
            id,
            scope: t.scope.clone(),
            description: t.description.clone(),
            created_at: t.created_at,
            revoked_at: t.revoked_at,
        })
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct ListPage<T> {
    pub items: Vec<T>,
    /// Where the next page starts, `None` at the end.
    pub next: Option<String>,
}

/// The provisioning use cases.
#[derive(Clone)]
pub struct Provisioning {
    directory: Directory,
    config: ProvisioningConfig,
}

/// Largest page a listing returns.
pub const MAX_PAGE: usize = 1000;

impl Provisioning {
    pub fn new(directory: Directory, config: ProvisioningConfig) -> Self {
        Provisioning { directory, config }
    }

    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    async fn domain_info(&self, id: DomainId) -> Result<DomainInfo> {
        self.directory
            .query_domain(id, move |r| {
                DomainInfo::of(id, r.state, r.version, r.updated_at)
            })
            .await
    }

    pub async fn create_domain(&self, new: NewDomain, meta: Meta) -> Result<DomainInfo> {
        let id = DomainId::for_name(&new.name);
        let command = domain::Command::Create {
            name: new.name,
            settings: new.settings,
        };
        self.directory
            .execute_domain(id, command, meta, move |r| {
                DomainInfo::of(id, r.state, r.version, r.updated_at)
            })
            .await
    }

    /// A domain that exists (active or suspended); deleted ones are not found.
    pub async fn get_domain(&self, domain: &DomainRef) -> Result<DomainInfo> {
        let info = self.domain_info(domain.id()).await?;
        if matches!(
            info.status,
            domain::Status::Absent | domain::Status::Deleted
        ) {
            return Err(not_found_domain(domain));
        }
        Ok(info)
    }

    pub async fn list_domains(
        &self,
        page_size: usize,
        after: Option<String>,
        include_deleted: bool,
    ) -> Result<ListPage<DomainInfo>> {
        let page_size = page_size.clamp(1, MAX_PAGE);
        let mut items = Vec::with_capacity(page_size);
        let mut cursor = after;
        // Deleted domains are skipped, so a page may need several reads.
        loop {
            let streams = self
                .directory
                .store()
                .list_streams(DomainId::STREAM_PREFIX, cursor.as_deref(), page_size + 1)
                .await?;
            let exhausted = streams.len() <= page_size - items.len();
            for stream in &streams {
                if items.len() == page_size {
                    return Ok(ListPage {
                        items,
                        next: cursor,
                    });
                }
                cursor = Some(stream.stream.clone());
                let Some(id) = DomainId::from_stream(&stream.stream) else {
                    continue;
                };
                let info = self.domain_info(id).await?;
                let visible = match info.status {
                    domain::Status::Absent => false,
                    domain::Status::Deleted => include_deleted,
                    _ => true,
                };
                if visible {
                    items.push(info);
                }
            }
            if exhausted || streams.is_empty() {
                return Ok(ListPage { items, next: None });
            }
        }
    }

    pub async fn update_domain(
        &self,
        domain: &DomainRef,
        patch: SettingsPatch,
        meta: Meta,
    ) -> Result<DomainInfo> {
        self.domain_command(domain, domain::Command::Update { patch }, meta)
            .await
    }

    pub async fn suspend_domain(
        &self,
        domain: &DomainRef,
        reason: Option<String>,
        meta: Meta,
    ) -> Result<DomainInfo> {
        self.domain_command(domain, domain::Command::Suspend { reason }, meta)
            .await
    }

    pub async fn resume_domain(&self, domain: &DomainRef, meta: Meta) -> Result<DomainInfo> {
        self.domain_command(domain, domain::Command::Resume, meta)
            .await
    }

    pub async fn delete_domain(&self, domain: &DomainRef, meta: Meta) -> Result<DomainInfo> {
        self.domain_command(domain, domain::Command::Delete, meta)
            .await
    }

    async fn domain_command(
        &self,
        domain: &DomainRef,
        command: domain::Command,
        meta: Meta,
    ) -> Result<DomainInfo> {
        let id = domain.id();
        self.directory
            .execute_domain(id, command, meta, move |r| {
                DomainInfo::of(id, r.state, r.version, r.updated_at)
            })
            .await
            .map_err(|e| name_domain(e, domain))
    }

    /// Creates a user in two steps that are each durable:
    /// 1. the user's own stream gets `UserCreated` (a fresh id, so no clash);
    /// 2. the domain claims the name for that id (`UserNameClaimed`).
    ///
    /// A user is reachable only through its domain's claim, so a crash
    /// between the steps leaves an orphan stream that nothing points to, never
    /// a half-created visible user. When the claim fails (name taken, domain
    /// suspended), the new user is deleted again.
    pub async fn create_user(&self, new: NewUserRequest, meta: Meta) -> Result<View<user::User>> {
        let domain_id = new.domain.id();
        let username = new.username.clone();
        let lookup_name = username.clone();
        let info = self
            .directory
            .query_domain(domain_id, move |r| {
                (
                    DomainInfo::of(domain_id, r.state, r.version, r.updated_at),
                    r.state.users.get(&lookup_name).copied(),
                )
            })
            .await?;
        let (info, holder) = info;
        let domain_name = match (&info.status, &info.name) {
            (domain::Status::Active, Some(name)) => name.clone(),
            (domain::Status::Suspended, Some(name)) => {
                return Err(
                    DomainError::FailedPrecondition(format!("domain {name} is suspended")).into(),
                )
            }
            (domain::Status::Deleted, Some(name)) => {
                return Err(
                    DomainError::FailedPrecondition(format!("domain {name} is deleted")).into(),
                )
            }
            _ => return Err(not_found_domain(&new.domain)),
        };
        let user_id = match &meta.request_id {
            Some(request_id) => UserId::for_request(domain_id, request_id),
            // Time-ordered: new streams land at the end of the log's indexes.
            None => UserId(uuid::Uuid::now_v7()),
        };
        match holder {
            // A retry of a create that completed: return the user as it is.
            Some(holder) if holder == user_id => {
                let mut view = self.directory.user_view(user_id).await?;
                view.replayed = true;
                return Ok(view);
            }
            Some(_) => {
                return Err(
                    DomainError::AlreadyExists(format!("user {username}@{domain_name}")).into(),
                )
            }
            None => {}
        }
        let create = user::Command::Create {
            user: Box::new(NewUser {
                user_id,
                domain_id,
                domain: domain_name,
                username: new.username,
                password: new.password,
                display_name: new.display_name,
                caller_id: new.caller_id,
                max_contacts: new.max_contacts,
                enabled: new.enabled,
            }),
            policy: self.config.password_policy,
        };
        let created = self
            .directory
            .execute_user(user_id, create, meta.clone())
            .await?;
        let claim = domain::Command::ClaimUserName {
            username: username.clone(),
            user_id,
        };
        let claim_meta = Meta {
            request_id: meta.request_id.clone(),
            ..Meta::default()
        };
        if let Err(e) = self
            .directory
            .execute_domain(domain_id, claim, claim_meta, |_| ())
            .await
        {
            // Undo step 1 so the orphan is visibly dead in its own stream too.
            let undo = user::Command::Delete {
                reason: Some(format!("name claim failed: {e}")),
            };
            if let Err(undo_err) = self
                .directory
                .execute_user(user_id, undo, Meta::default())
                .await
            {
                tracing::warn!(%user_id, error = %undo_err, "could not delete user after failed claim");
            }
            return Err(e);
        }
        Ok(created)
    }

    /// Resolves a user reference to the id its domain's claim points to.
    async fn resolve_user(&self, user: &UserRef) -> Result<UserId> {
        match user {
            UserRef::Id(id) => Ok(*id),
            UserRef::Address(address) => {
                let domain_id = DomainId::for_name(&address.domain);
                let name = address.username.clone();
                let found = self
                    .directory
                    .query_domain(domain_id, move |r| {
                        if r.state.exists() {
                            r.state.users.get(&name).copied()
                        } else {
                            None
                        }
                    })
                    .await?;
                found.ok_or_else(|| not_found_user(user))
            }
        }
    }

    /// A user that exists and is reachable through its domain.
    pub async fn get_user(&self, user: &UserRef) -> Result<View<user::User>> {
        let id = self.resolve_user(user).await?;
        let view = self.directory.user_view(id).await?;
        if !view.state.exists() {
            return Err(not_found_user(user));
        }
        // An id is only valid if its domain's claim points to it: this hides
        // orphans left by a crash in the middle of a create.
        if let UserRef::Id(_) = user {
            let (Some(domain_id), Some(name)) = (view.state.domain_id, view.state.username.clone())
            else {
                return Err(not_found_user(user));
            };
            let holder = self
                .directory
                .query_domain(domain_id, move |r| r.state.users.get(&name).copied())
                .await?;
            if holder != Some(id) {
                return Err(not_found_user(user));
            }
        }
        Ok(view)
    }

    pub async fn list_users(
        &self,
        domain: &DomainRef,
        page_size: usize,
        after: Option<String>,
    ) -> Result<ListPage<View<user::User>>> {
        let page_size = page_size.clamp(1, MAX_PAGE);
        let domain_id = domain.id();
        let after_name = match after {
            Some(token) => Some(UserName::parse(&token).map_err(|_| DomainError::Invalid {
                field: "page_token",
                reason: "not a token from a previous page".into(),
            })?),
            None => None,
        };
        let (exists, ids) = self
            .directory
            .query_domain(domain_id, move |r| {
                let state = r.state;
                let range: Vec<(UserName, UserId)> = match &after_name {
                    Some(after) => state
                        .users
                        .range::<UserName, _>((
                            std::ops::Bound::Excluded(after),
                            std::ops::Bound::Unbounded,
                        ))
                        .take(page_size + 1)
                        .map(|(n, id)| (n.clone(), *id))
                        .collect(),
                    None => state
                        .users
                        .iter()
                        .take(page_size + 1)
                        .map(|(n, id)| (n.clone(), *id))
                        .collect(),
                };
                (state.exists(), range)
            })
            .await?;
        if !exists {
            return Err(not_found_domain(domain));
        }
        let more = ids.len() > page_size;
        let mut items = Vec::with_capacity(page_size);
        let mut last = None;
        for (name, id) in ids.into_iter().take(page_size) {
            items.push(self.directory.user_view(id).await?);
            last = Some(name);
        }
        Ok(ListPage {
            items,
            next: if more { last.map(String::from) } else { None },
        })
    }

    pub async fn update_user(
        &self,
        user: &UserRef,
        patch: Patch,
        meta: Meta,
    ) -> Result<View<user::User>> {
        self.user_command(user, user::Command::Update { patch }, meta)
            .await
    }

    pub async fn set_password(
        &self,
        user: &UserRef,
        password: String,
        meta: Meta,
    ) -> Result<View<user::User>> {
        let command = user::Command::SetPassword {
            password,
            policy: self.config.password_policy,
        };
        self.user_command(user, command, meta).await
    }

    /// Changes a user's forwarding rules. `written` holds the targets as a
    /// person writes them (`bob`, `+15551234567`, `voicemail`...): each is
    /// completed with the user's domain, then checked against the other
    /// aggregates — the target user exists and its domain is active, and
    /// the user's own domain may call it — so that a rule that cannot ring
    /// anything is refused when it is set, with what is wrong, rather than
    /// silently ignored on every call. The user's actor then validates the
    /// rules as a whole and records them; nothing is applied when anything
    /// is refused. (Routing checks the targets again on every call: the
    /// other aggregates may change after this.)
    pub async fn set_forwarding(
        &self,
        user: &UserRef,
        written: WrittenForwarding,
        meta: Meta,
    ) -> Result<View<user::User>> {
        let view = self.get_user(user).await?;
        let owner = view
            .state
            .user_address()
            .ok_or_else(|| not_found_user(user))?;
        let patch = self.forwarding_patch(&owner, written).await?;
        self.user_command(
            user,
            user::Command::SetForwarding {
                patch: Box::new(patch),
            },
            meta,
        )
        .await
    }

    /// Forwarding rules as written (by the user or ring group `owner`),
    /// parsed and checked: each target completed with the owner's domain
    /// and checked against the other aggregates
    /// ([`Provisioning::check_forward_target`]), each time condition
    /// refused when it never holds.
    async fn forwarding_patch(
        &self,
        owner: &UserAddress,
        written: WrittenForwarding,
    ) -> Result<ForwardingPatch> {
        let parse = |text: Option<String>| -> Result<Option<Option<ForwardTarget>>> {
            match text {
                None => Ok(None),
                Some(t) if t.trim().is_empty() => Ok(Some(None)),
                Some(t) => Ok(Some(Some(ForwardTarget::parse(&t, owner)?))),
            }
        };
        // A condition that never holds would make its rule dead: refused,
        // judged in the user's domain's time zone from now on.
        let time_zone = self
            .directory
            .query_domain(DomainId::for_name(&owner.domain), |r| {
                r.state.settings.time_zone.clone()
            })
            .await?;
        let now = crate::now_us();
        let when = |rule: &str, text: Option<String>| -> Result<Option<Option<TimeCondition>>> {
            let Some(text) = text else {
                return Ok(None);
            };
            if text.trim().is_empty() {
                return Ok(Some(None));
            }
            let condition = TimeCondition::parse(&text)?;
            if !condition.holds(now, &time_zone) && condition.next_change(now, &time_zone).is_none()
            {
                return Err(Error::Domain(DomainError::Invalid {
                    field: "when",
                    reason: format!(
                        "the time condition of the {rule} rule, \"{condition}\", never holds \
                         (in {time_zone}, within the next 400 days)"
                    ),
                }));
            }
            Ok(Some(Some(condition)))
        };
        let patch = ForwardingPatch {
            always: parse(written.always)?,
            busy: parse(written.busy)?,
            no_answer: parse(written.no_answer)?,
            no_answer_after_secs: written.no_answer_after_secs,
            unavailable: parse(written.unavailable)?,
            when: RuleTimesPatch {
                always: when("always", written.always_when)?,
                busy: when("busy", written.busy_when)?,
                no_answer: when("no_answer", written.no_answer_when)?,
                unavailable: when("unavailable", written.unavailable_when)?,
            },
            clear: written.clear,
            follow_me: None,
        };
        let follow_me_settings = written.follow_me_after_secs.is_some()
            || written.follow_me_sequential.is_some()
            || written.follow_me_ring_secs.is_some();
        let mut patch = patch;
        match written.follow_me {
            Some(list) if list.iter().all(|t| t.trim().is_empty()) => {
                if follow_me_settings {
                    return Err(Error::Domain(DomainError::Invalid {
                        field: "follow_me",
                        reason: "follow-me settings were given with no targets (to turn follow-me off, give no settings)".into(),
                    }));
                }
                patch.follow_me = Some(None);
            }
            list => {
                let targets = match list {
                    Some(list) => Some(
                        list.iter()
                            .filter(|t| !t.trim().is_empty())
                            .map(|t| ForwardTarget::parse(t, owner))
                            .collect::<std::result::Result<Vec<_>, _>>()?,
                    ),
                    None => None,
                };
                if targets.is_some() || follow_me_settings {
                    patch.follow_me = Some(Some(FollowMePatch {
                        targets,
                        after_secs: written.follow_me_after_secs,
                        sequential: written.follow_me_sequential,
                        ring_secs: written.follow_me_ring_secs,
                    }));
                }
            }
        }
        for target in [
            &patch.always,
            &patch.busy,
            &patch.no_answer,
            &patch.unavailable,
        ]
        .into_iter()
        .flatten()
        .flatten()
        {
            self.check_forward_target(owner, target).await?;
        }
        if let Some(Some(FollowMePatch {
            targets: Some(targets),
            ..
        })) = &patch.follow_me
        {
            for target in targets {
                if !matches!(target, ForwardTarget::User(_)) {
                    return Err(Error::Domain(DomainError::FailedPrecondition(format!(
                        "cannot follow me to {target}: follow-me rings users' phones (numbers, voicemail, groups and conference rooms are not follow-me targets)"
                    ))));
                }
                self.check_forward_target(owner, target).await?;
            }
        }
        Ok(patch)
    }

    /// Whether calls of `owner` can be forwarded to `target` now.
    async fn check_forward_target(
        &self,
        owner: &UserAddress,
        target: &ForwardTarget,
    ) -> Result<()> {
        let refused = |reason: String| Err(Error::Domain(DomainError::FailedPrecondition(reason)));
        let address = match target {
            ForwardTarget::User(address) => address,
            ForwardTarget::Number(number) => {
                return refused(format!(
                    "cannot forward to {number}: calls to external numbers need a SIP trunk, and none is configured"
                ))
            }
            // A box is its user's: the user must exist (routing takes the
            // forward only while the box is enabled, ADR 0022).
            ForwardTarget::Voicemail(address) => address,
            ForwardTarget::Group(address) => address,
            // The room must exist now; routing takes the forward only while
            // it does (a room deleted later is a forward not taken).
            ForwardTarget::Conference(address) => address,
        };
        let name = address.username.clone();
        let group = matches!(target, ForwardTarget::Group(_));
        let room = matches!(target, ForwardTarget::Conference(_));
        let found = self
            .directory
            .query_domain(DomainId::for_name(&address.domain), move |r| {
                let exists = if group {
                    r.state.ring_groups.contains_key(&name)
                } else if room {
                    r.state.conference_rooms.contains_key(&name)
                } else {
                    r.state.users.contains_key(&name)
                };
                (r.state.status, exists)
            })
            .await?;
        match found {
            (domain::Status::Active, true) => {}
            (domain::Status::Active, false) if room => {
                return refused(format!(
                    "cannot forward to {target}: {} has no conference room {} \
                     (create it first: dialtone conference create {address})",
                    address.domain, address.username
                ))
            }
            (domain::Status::Active, false) if group => {
                return Err(Error::Domain(DomainError::NotFound(format!(
                    "forwarding target ring group {address}"
                ))))
            }
            (domain::Status::Suspended, _) => {
                return refused(format!(
                    "cannot forward to {address}: domain {} is suspended",
                    address.domain
                ))
            }
            (domain::Status::Active, false) => {
                return Err(Error::Domain(DomainError::NotFound(format!(
                    "forwarding target user {address}"
                ))))
            }
            _ => {
                return Err(Error::Domain(DomainError::NotFound(format!(
                    "forwarding target domain {}",
                    address.domain
                ))))
            }
        }
        if address.domain != owner.domain {
            let allowed = self
                .directory
                .query_domain(DomainId::for_name(&owner.domain), |r| {
                    r.state.settings.allow_cross_domain_calls
                })
                .await?;
            if !allowed {
                return refused(format!(
                    "cannot forward to {address}: domain {} does not allow calls to other domains (allow_cross_domain_calls)",
                    owner.domain
                ));
            }
        }
        Ok(())
    }

    /// Creates the ring group `address` (a name of its domain no user
    /// holds); settings not given take their defaults. Members must be
    /// users of the domain, targets must be callable (as for a user's
    /// forwarding).
    pub async fn create_ring_group(
        &self,
        address: &UserAddress,
        written: WrittenRingGroup,
        meta: Meta,
    ) -> Result<RingGroupInfo> {
        let patch = self.ring_group_patch(address, written).await?;
        let command = domain::Command::CreateRingGroup {
            name: address.username.clone(),
            patch,
        };
        self.ring_group_command(address, command, meta).await
    }

    /// Changes some settings of the ring group `address`.
    pub async fn update_ring_group(
        &self,
        address: &UserAddress,
        written: WrittenRingGroup,
        meta: Meta,
    ) -> Result<RingGroupInfo> {
        let patch = self.ring_group_patch(address, written).await?;
        let command = domain::Command::UpdateRingGroup {
            name: address.username.clone(),
            patch,
        };
        self.ring_group_command(address, command, meta).await
    }

    /// Deletes the ring group `address`; what it was.
    pub async fn delete_ring_group(
        &self,
        address: &UserAddress,
        meta: Meta,
    ) -> Result<RingGroupInfo> {
        let before = self.get_ring_group(address).await?;
        let command = domain::Command::DeleteRingGroup {
            name: address.username.clone(),
        };
        let version = self
            .directory
            .execute_domain(DomainId::for_name(&address.domain), command, meta, |r| {
                r.version
            })
            .await?;
        Ok(RingGroupInfo { version, ..before })
    }

    pub async fn get_ring_group(&self, address: &UserAddress) -> Result<RingGroupInfo> {
        let (group, version) = self
            .domain_extension(
                address,
                |d| &d.ring_groups,
                || Error::Domain(DomainError::NotFound(format!("ring group {address}"))),
            )
            .await?;
        Ok(RingGroupInfo {
            address: address.clone(),
            group,
            version,
        })
    }

    /// The ring groups of a domain, by name.
    pub async fn list_ring_groups(&self, domain: &DomainRef) -> Result<Vec<RingGroupInfo>> {
        let groups = self.domain_extensions(domain, |d| &d.ring_groups).await?;
        Ok(groups
            .into_iter()
            .map(|(address, group, version)| RingGroupInfo {
                address,
                group,
                version,
            })
            .collect())
    }

    /// The extension `address` of the kind `of` picks (ring groups and
    /// conference rooms are the domain's, ADR 0021, 0025), with the domain
    /// stream's version; NOT_FOUND naming the domain when it does not
    /// exist, `missing` when it has no such extension.
    pub(crate) async fn domain_extension<T: Clone + Send + 'static>(
        &self,
        address: &UserAddress,
        of: fn(&domain::Domain) -> &std::collections::BTreeMap<UserName, T>,
        missing: impl FnOnce() -> Error,
    ) -> Result<(T, Option<u64>)> {
        self.domain_extension_with(address, move |d, name| of(d).get(name).cloned(), missing)
            .await
    }

    /// As [`domain_extension`](Self::domain_extension), with what `pick`
    /// reads of the extension (and anything beside it) in the same query.
    pub(crate) async fn domain_extension_with<T: Send + 'static>(
        &self,
        address: &UserAddress,
        pick: impl Fn(&domain::Domain, &UserName) -> Option<T> + Clone + Send + Sync + 'static,
        missing: impl FnOnce() -> Error,
    ) -> Result<(T, Option<u64>)> {
        let name = address.username.clone();
        let found = self
            .directory
            .query_domain(DomainId::for_name(&address.domain), move |r| {
                r.state
                    .exists()
                    .then(|| pick(r.state, &name).map(|x| (x, r.version)))
            })
            .await?;
        match found {
            None => Err(Error::Domain(DomainError::NotFound(format!(
                "domain {}",
                address.domain
            )))),
            Some(None) => Err(missing()),
            Some(Some(found)) => Ok(found),
        }
    }

    /// Every extension of the kind `of` picks in `domain`, by name, each
    /// with its address and the domain stream's version.
    pub(crate) async fn domain_extensions<T: Clone + Send + 'static>(
        &self,
        domain: &DomainRef,
        of: fn(&domain::Domain) -> &std::collections::BTreeMap<UserName, T>,
    ) -> Result<Vec<(UserAddress, T, Option<u64>)>> {
        let found = self
            .directory
            .query_domain(domain.id(), move |r| {
                let name = r.state.name.clone()?;
                r.state.exists().then(|| {
                    of(r.state)
                        .iter()
                        .map(|(n, x)| {
                            let address = UserAddress {
                                username: n.clone(),
                                domain: name.clone(),
                            };
                            (address, x.clone(), r.version)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .await?;
        found.ok_or_else(|| not_found_domain(domain))
    }

    async fn ring_group_patch(
        &self,
        address: &UserAddress,
        written: WrittenRingGroup,
    ) -> Result<RingGroupPatch> {
        let members = match written.members {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|m| Member::parse(m))
                    .collect::<std::result::Result<Vec<_>, _>>()?,
            ),
        };
        let strategy = match written.strategy {
            None => None,
            Some(s) => Some(s.parse::<Strategy>()?),
        };
        Ok(RingGroupPatch {
            members,
            strategy,
            ring_secs: written.ring_secs,
            timeout_secs: written.timeout_secs,
            skip_busy: written.skip_busy,
            skip_dnd: written.skip_dnd,
            forwarding: self.forwarding_patch(address, written.forwarding).await?,
        })
    }

    async fn ring_group_command(
        &self,
        address: &UserAddress,
        command: domain::Command,
        meta: Meta,
    ) -> Result<RingGroupInfo> {
        let name = address.username.clone();
        let found = self
            .directory
            .execute_domain(
                DomainId::for_name(&address.domain),
                command,
                meta,
                move |r| {
                    r.state
                        .ring_groups
                        .get(&name)
                        .cloned()
                        .map(|g| (g, r.version))
                },
            )
            .await?;
        let (group, version) = found
            .ok_or_else(|| Error::Domain(DomainError::NotFound(format!("ring group {address}"))))?;
        Ok(RingGroupInfo {
            address: address.clone(),
            group,
            version,
        })
    }

    /// Turns a user's do-not-disturb on or off.
    pub async fn set_dnd(&self, user: &UserRef, on: bool, meta: Meta) -> Result<View<user::User>> {
        self.user_command(user, user::Command::SetDnd { on }, meta)
            .await
    }

    /// Deletes the user (its stream first), then releases its name. A crash
    /// in between leaves a claim pointing to a deleted user, which reads as
    /// not found and is released by the next create of that name.
    pub async fn delete_user(&self, user: &UserRef, meta: Meta) -> Result<View<user::User>> {
        let view = self
            .user_command(user, user::Command::Delete { reason: None }, meta.clone())
            .await?;
        if let (Some(domain_id), Some(username), Some(user_id)) = (
            view.state.domain_id,
            view.state.username.clone(),
            view.state.id,
        ) {
            let release = domain::Command::ReleaseUserName { username, user_id };
            self.directory
                .execute_domain(domain_id, release, meta, |_| ())
                .await?;
        }
        Ok(view)
    }

    async fn user_command(
        &self,
        user: &UserRef,
        command: user::Command,
        meta: Meta,
    ) -> Result<View<user::User>> {
        // Resolve through the domain (hides orphans), then run the command.
        let id = match self.get_user(user).await {
            Ok(view) => view.state.id.unwrap_or(UserId(uuid::Uuid::nil())),
            Err(Error::Domain(DomainError::NotFound(_))) if meta.request_id.is_some() => {
                // A retried delete: the user is gone but the first result
                // must be returned.
                self.resolve_user(user).await?
            }
            Err(e) => return Err(e),
        };
        self.directory
            .execute_user(id, command, meta)
            .await
            .map_err(|e| match e {
                Error::Domain(DomainError::NotFound(_)) => not_found_user(user),
                other => other,
            })
    }
}

/// The API tokens: every change goes through the token table's actor, the
/// `tokens` stream's only writer, which publishes the table authentication
/// reads ([`crate::Facts::token`]) before it replies.
impl Provisioning {
    /// Loads the token table (at start-up, before the API serves), so that
    /// its actor publishes it for authentication.
    pub async fn load_tokens(&self) -> Result<()> {
        self.directory.query_tokens(|_| ()).await
    }

    pub async fn create_token(&self, new: NewToken, meta: Meta) -> Result<TokenInfo> {
        let id = new.token_id;
        let command = token::Command::Create {
            token_id: id,
            scope: new.scope,
            secret_sha256: new.secret_sha256,
            description: new.description,
        };
        self.directory
            .execute_tokens(command, meta, move |r| TokenInfo::of(r.state, id))
            .await?
            .ok_or_else(|| not_found_token(id))
    }

    /// Revokes a token; a revoked one stays as it is (nothing is written).
    pub async fn revoke_token(&self, id: Uuid, meta: Meta) -> Result<TokenInfo> {
        self.directory
            .execute_tokens(token::Command::Revoke { token_id: id }, meta, move |r| {
                TokenInfo::of(r.state, id)
            })
            .await?
            .ok_or_else(|| not_found_token(id))
    }

    /// Every token, oldest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenInfo>> {
        let mut tokens = self
            .directory
            .query_tokens(|r| {
                r.state
                    .tokens
                    .keys()
                    .filter_map(|id| TokenInfo::of(r.state, *id))
                    .collect::<Vec<_>>()
            })
            .await?;
        tokens.sort_by_key(|t| (t.created_at, t.id));
        Ok(tokens)
    }
}

fn not_found_token(id: Uuid) -> Error {
    Error::Domain(DomainError::NotFound(format!("token {id}")))
}

pub(crate) fn not_found_domain(domain: &DomainRef) -> Error {
    Error::Domain(DomainError::NotFound(match domain {
        DomainRef::Id(id) => format!("domain {id}"),
        DomainRef::Name(name) => format!("domain {name}"),
    }))
}

/// A ring group and the version of its domain's stream when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RingGroupInfo {
    pub address: UserAddress,
    pub group: RingGroup,
    /// The domain stream's version (`None`: empty stream).
    pub version: Option<u64>,
}

/// A ring group's settings as a person writes them (API, CLI): `None`
/// keeps a setting (or takes its default, for a new group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrittenRingGroup {
    /// `bob` or `bob:15` (15 s of ringing in the sequential strategies).
    pub members: Option<Vec<String>>,
    /// `simultaneous`, `sequential`, `round-robin`, `longest-idle`.
    pub strategy: Option<String>,
    pub ring_secs: Option<u32>,
    pub timeout_secs: Option<u32>,
    pub skip_busy: Option<bool>,
    pub skip_dnd: Option<bool>,
    /// Where calls go instead (its `no_answer_after_secs` is refused: the
    /// group's timeout is that time).
    pub forwarding: WrittenForwarding,
}

/// Forwarding rules as a person writes them (API, CLI): `None` keeps a
/// rule, an empty string removes it, anything else is a target to parse
/// (see [`dialtone_domain::forwarding`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WrittenForwarding {
    pub always: Option<String>,
    pub busy: Option<String>,
    pub no_answer: Option<String>,
    pub no_answer_after_secs: Option<u32>,
    pub unavailable: Option<String>,
    /// Time conditions of the rules (`inside mon-fri 09:00-17:00`,
    /// `outside ...`; "" removes one).
    pub always_when: Option<String>,
    pub busy_when: Option<String>,
    pub no_answer_when: Option<String>,
    pub unavailable_when: Option<String>,
    /// Remove every rule before applying the others.
    pub clear: bool,
    /// Find-me/follow-me targets, replacing the list (empty: off).
    pub follow_me: Option<Vec<String>>,
    pub follow_me_after_secs: Option<u32>,
    pub follow_me_sequential: Option<bool>,
    pub follow_me_ring_secs: Option<u32>,
}

fn not_found_user(user: &UserRef) -> Error {
    Error::Domain(DomainError::NotFound(match user {
        UserRef::Id(id) => format!("user {id}"),
        UserRef::Address(address) => format!("user {address}"),
    }))
}

/// Names the domain in a not-found error coming from its actor.
fn name_domain(e: Error, domain: &DomainRef) -> Error {
    match e {
        Error::Domain(DomainError::NotFound(_)) => not_found_domain(domain),
        other => other,
    }
}
