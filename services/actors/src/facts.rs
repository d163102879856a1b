//! Facts that actors publish for fast, lock-light reads on hot paths (the
//! SIP gateway asks for a user's credentials twice per registration; the
//! API authenticates every call against the token table).
//!
//! Only an aggregate's own actor writes its facts, right after loading and
//! right after each commit, before replying: a caller that got a reply reads
//! facts at least as new as that reply. Facts survive passivation (only the
//! actor changes the aggregate, so they stay true); a reader that finds none
//! asks the actor, which loads and publishes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use dialtone_domain::conference_room::Room;
use dialtone_domain::ring_group::RingGroup;
use dialtone_domain::schedule::TimeZone;
use dialtone_domain::token::{self, Scope};
use dialtone_domain::{domain, user, DomainId, DomainName, UserId, UserName};
use uuid::Uuid;

/// What the SIP path needs of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainFacts {
    pub name: Option<DomainName>,
    pub status: domain::Status,
    /// The digest algorithms offered, in challenge order.
    pub digest_algorithms: domain::DigestAlgorithms,
    pub allow_cross_domain_calls: bool,
    /// Where its schedules are read; `None`: UTC (no allocation for the
    /// usual domain).
    pub time_zone: Option<TimeZone>,
    /// The user names claimed in the domain.
    pub users: HashMap<UserName, UserId>,
    /// The domain's ring groups, by name.
    pub ring_groups: HashMap<UserName, Arc<RingGroup>>,
    /// The domain's conference rooms, by name: a dialled name that is no
    /// user's or group's is found to be a room (or nothing) without a
    /// message to the domain's actor, and a room created or deleted is
    /// routed so as soon as its command is answered.
    pub conference_rooms: HashMap<UserName, Arc<Room>>,
}

/// What the SIP path needs of a user. One is kept for every user loaded
/// since start (they outlive passivation), so it is kept small and in few
/// allocations: with 100,000 registered users these were ~36 MB in eight
/// small allocations per user, which also pinned the pages of the actors
/// freed around them (heaptrack, docs/performance.md session 4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFacts {
    pub exists: bool,
    pub enabled: bool,
    pub domain_id: Option<DomainId>,
    pub username: Option<UserName>,
    /// The MD5 HA1 then the SHA-256 HA1, hex, in one string.
    ha1: Box<str>,
    md5_len: usize,
    /// The registered contacts, for routing a call without a message to
    /// the actor (post-dial delay). May include contacts that expired since
    /// the last commit: readers check `expires_at`.
    pub contacts: Box<[ContactFact]>,
    /// The user's call features, for routing; `None` (no allocation) for
    /// the many users without any.
    pub features: Option<Box<CallFeatures>>,
}

/// What ring groups read of a user's calls ([`Facts::call_state`]). Kept
/// apart from [`UserFacts`]: it changes with every answered and ended
/// call, and rebuilding a user's facts for each call step cost more than
/// the rest of publishing it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallState {
    /// An answered call is in progress (ring groups skip busy members).
    pub on_call: bool,
    /// When the user's last answered call ended (longest-idle groups).
    pub last_call_ended: Option<dialtone_domain::Timestamp>,
}

impl CallState {
    pub fn of(state: &user::User) -> Self {
        CallState {
            on_call: state
                .calls
                .in_progress
                .iter()
                .any(|l| l.state == dialtone_domain::call::LegState::Answered),
            last_call_ended: state.calls.last_ended_at,
        }
    }
}

/// The settings that change how a user's calls are routed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFeatures {
    pub forwarding: dialtone_domain::forwarding::Forwarding,
    pub dnd: bool,
    /// The voicemail box is enabled: forwards to it are taken.
    pub voicemail: bool,
}

/// Where a registered contact is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactFact {
    pub uri: Box<str>,
    /// The binding's identity (to find its connection in
    /// [`Facts::flows`]).
    pub key: dialtone_domain::registration::Key,
    /// Where the REGISTER came from.
    pub source: SocketAddr,
    /// `UDP`, `TCP`.
    pub transport: Cow<'static, str>,
    pub expires_at: dialtone_domain::Timestamp,
}

impl UserFacts {
    pub fn of(state: &user::User) -> Self {
        let (ha1, md5_len) = match &state.credentials {
            Some(c) => (
                [c.ha1_md5.as_str(), c.ha1_sha256.as_str()].concat().into(),
                c.ha1_md5.len(),
            ),
            None => (Box::default(), 0),
        };
        UserFacts {
            exists: state.exists(),
            enabled: state.enabled,
            domain_id: state.domain_id,
            username: state.username.clone(),
            ha1,
            md5_len,
            contacts: state
                .bindings
                .iter()
                // A source that is not an address cannot be called back.
                .filter_map(|b| {
                    Some(ContactFact {
                        uri: b.uri.as_str().into(),
                        key: b.key(),
                        source: b.source.parse().ok()?,
                        transport: transport_name(&b.transport),
                        expires_at: b.expires_at,
                    })
                })
                .collect(),
            features: (state.dnd || !state.forwarding.is_off() || state.mailbox.enabled).then(
                || {
                    Box::new(CallFeatures {
                        forwarding: state.forwarding.clone(),
                        dnd: state.dnd,
                        voicemail: state.mailbox.enabled,
                    })
                },
            ),
        }
    }

    /// The MD5 HA1 (hex); empty without credentials.
    pub fn ha1_md5(&self) -> &str {
        self.ha1.get(..self.md5_len).unwrap_or_default()
    }

    /// The SHA-256 HA1 (hex); empty without credentials.
    pub fn ha1_sha256(&self) -> &str {
        self.ha1.get(self.md5_len..).unwrap_or_default()
    }
}

/// An event that changes nothing in [`UserFacts`]: a call leg, presence,
/// or the voicemail box's PIN, greeting and messages (no SIP fact). Its
/// settings are one: whether it is enabled decides whether forwards to it
/// are taken.
fn leaves_facts_alone(event: &user::Event) -> bool {
    use user::Event as E;
    matches!(
        event,
        E::CallStarted { .. }
            | E::CallRinging { .. }
            | E::CallAnswered { .. }
            | E::CallEnded { .. }
            | E::CallFailed { .. }
            | E::CallForwarded { .. }
            | E::CallForwardSkipped { .. }
            | E::CallTransferred { .. }
            | E::PresenceChanged { .. }
            | E::MailboxPinChanged { .. }
            | E::MailboxPinAccepted {}
            | E::MailboxPinRejected { .. }
            | E::MailboxLockedOut { .. }
            | E::VoicemailLeft { .. }
            | E::VoicemailRefused { .. }
            | E::VoicemailRead { .. }
            | E::VoicemailDeleted { .. }
            | E::GreetingChanged { .. }
    )
}

fn rooms_of(state: &domain::Domain) -> HashMap<UserName, Arc<Room>> {
    state
        .conference_rooms
        .iter()
        .map(|(n, r)| (n.clone(), Arc::new(r.clone())))
        .collect()
}

fn groups_of(state: &domain::Domain) -> HashMap<UserName, Arc<RingGroup>> {
    state
        .ring_groups
        .iter()
        .map(|(n, g)| (n.clone(), Arc::new(g.clone())))
        .collect()
}

/// The transports a binding can name, without an allocation each.
fn transport_name(name: &str) -> Cow<'static, str> {
    const KNOWN: [&str; 6] = ["UDP", "TCP", "TLS", "SCTP", "WS", "WSS"];
    match KNOWN.iter().find(|known| known.eq_ignore_ascii_case(name)) {
        Some(known) => Cow::Borrowed(known),
        None => Cow::Owned(name.to_owned()),
    }
}

/// What authentication needs of an API token that is not revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenFacts {
    /// SHA-256 of the token's secret.
    pub secret_sha256: [u8; 32],
    pub access: TokenAccess,
}

/// What a token gives access to, with a domain's id computed once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenAccess {
    Admin,
    Domain(DomainId),
}

/// 64 lower-case hex digits (as `token::decide` accepts them) as bytes.
fn sha256_from_hex(hex: &str) -> Option<[u8; 32]> {
    fn digit(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            _ => None,
        }
    }
    let hex = hex.as_bytes();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (byte, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *byte = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

/// The published facts of every aggregate that was loaded on this node.
#[derive(Default)]
pub struct Facts {
    domains: RwLock<HashMap<DomainId, DomainFacts>>,
    users: RwLock<HashMap<UserId, Arc<UserFacts>>>,
    /// The users whose [`CallState`] is not the default.
    calls: RwLock<HashMap<UserId, CallState>>,
    /// The tokens that are not revoked, by id.
    tokens: RwLock<HashMap<Uuid, TokenFacts>>,
    /// The connections bindings are reached on (in memory only).
    flows: crate::flows::Flows,
}

impl Facts {
    /// The connections bindings were registered over.
    pub fn flows(&self) -> &crate::flows::Flows {
        &self.flows
    }

    /// Publishes a domain's whole state (after loading). A domain that was
    /// never created is not published, so that requests for made-up domains
    /// cannot grow this map.
    pub fn publish_domain(&self, id: DomainId, state: &domain::Domain) {
        if state.status == domain::Status::Absent {
            return;
        }
        let facts = DomainFacts {
            name: state.name.clone(),
            status: state.status,
            digest_algorithms: state.settings.digest_algorithms,
            allow_cross_domain_calls: state.settings.allow_cross_domain_calls,
            time_zone: zone_of(&state.settings),
            users: state.users.iter().map(|(n, u)| (n.clone(), *u)).collect(),
            ring_groups: groups_of(state),
            conference_rooms: rooms_of(state),
        };
        self.domains
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, facts);
    }

    /// Applies a domain's committed events (cheaper than a full copy for a
    /// domain with many users).
    pub fn apply_domain_events(
        &self,
        id: DomainId,
        state: &domain::Domain,
        events: &[domain::Event],
    ) {
        let mut domains = self.domains.write().unwrap_or_else(|p| p.into_inner());
        let Some(facts) = domains.get_mut(&id) else {
            drop(domains);
            self.publish_domain(id, state);
            return;
        };
        facts.name = state.name.clone();
        facts.status = state.status;
        facts.digest_algorithms = state.settings.digest_algorithms;
        facts.allow_cross_domain_calls = state.settings.allow_cross_domain_calls;
        facts.time_zone = zone_of(&state.settings);
        for event in events {
            match event {
                domain::Event::UserNameClaimed { username, user_id } => {
                    facts.users.insert(username.clone(), *user_id);
                }
                domain::Event::UserNameReleased { username, user_id }
                    if facts.users.get(username) == Some(user_id) =>
                {
                    facts.users.remove(username);
                }
                domain::Event::DomainCreated { .. } => {
                    facts.users.clear();
                    facts.ring_groups.clear();
                    facts.conference_rooms.clear();
                }
                domain::Event::RingGroupCreated { name, group }
                | domain::Event::RingGroupUpdated { name, group } => {
                    facts
                        .ring_groups
                        .insert(name.clone(), Arc::new((**group).clone()));
                }
                domain::Event::RingGroupDeleted { name } => {
                    facts.ring_groups.remove(name);
                }
                domain::Event::ConferenceRoomCreated { name, room }
                | domain::Event::ConferenceRoomUpdated { name, room } => {
                    facts
                        .conference_rooms
                        .insert(name.clone(), Arc::new((**room).clone()));
                }
                domain::Event::ConferenceRoomDeleted { name } => {
                    facts.conference_rooms.remove(name);
                }
                _ => {}
            }
        }
    }

    /// Publishes a user's facts after loading (`events`: `None`) or after
    /// a commit of `events`. Call steps and presence change only the
    /// user's [`CallState`], so a commit of nothing else leaves the rest
    /// of its facts as they are.
    pub fn publish_user(&self, id: UserId, state: &user::User, events: Option<&[user::Event]>) {
        let calls = CallState::of(state);
        {
            let current = self
                .calls
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&id)
                .copied()
                .unwrap_or_default();
            if current != calls {
                let mut all = self.calls.write().unwrap_or_else(|p| p.into_inner());
                if calls == CallState::default() {
                    all.remove(&id);
                } else {
                    all.insert(id, calls);
                }
            }
        }
        if events.is_some_and(|events| events.iter().all(leaves_facts_alone)) {
            return;
        }
        let facts = Arc::new(UserFacts::of(state));
        let mut users = self.users.write().unwrap_or_else(|p| p.into_inner());
        match users.get(&id) {
            Some(current) if **current == *facts => {}
            _ => {
                users.insert(id, facts);
            }
        }
    }

    /// The domain's status and settings, and the id `username` has in it:
    /// `None` when the domain's actor has not published yet.
    pub fn domain_and_user(
        &self,
        id: DomainId,
        username: Option<&UserName>,
    ) -> Option<(
        domain::Status,
        domain::DigestAlgorithms,
        bool,
        Option<UserId>,
    )> {
        let domains = self.domains.read().unwrap_or_else(|p| p.into_inner());
        let facts = domains.get(&id)?;
        Some((
            facts.status,
            facts.digest_algorithms,
            facts.allow_cross_domain_calls,
            username.and_then(|u| facts.users.get(u).copied()),
        ))
    }

    /// The ring group `name` of a domain, if it is one (and the domain is
    /// loaded).
    pub fn ring_group(&self, id: DomainId, name: &UserName) -> Option<Arc<RingGroup>> {
        let domains = self.domains.read().unwrap_or_else(|p| p.into_inner());
        domains.get(&id)?.ring_groups.get(name).cloned()
    }

    /// The conference room `name` of a domain, if it is one (and the
    /// domain is loaded).
    pub fn conference_room(&self, id: DomainId, name: &UserName) -> Option<Arc<Room>> {
        let domains = self.domains.read().unwrap_or_else(|p| p.into_inner());
        domains.get(&id)?.conference_rooms.get(name).cloned()
    }

    /// The time zone of a domain's schedules; `None`: UTC, or a domain
    /// not loaded.
    pub fn time_zone(&self, id: DomainId) -> Option<TimeZone> {
        let domains = self.domains.read().unwrap_or_else(|p| p.into_inner());
        domains.get(&id)?.time_zone.clone()
    }

    /// What ring groups read of a user's calls.
    pub fn call_state(&self, id: UserId) -> CallState {
        self.calls
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
            .unwrap_or_default()
    }

    pub fn user(&self, id: UserId) -> Option<Arc<UserFacts>> {
        self.users
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Publishes the token table (after loading and after each commit):
    /// the tokens that are not revoked, replacing what was published.
    pub fn publish_tokens(&self, state: &token::Tokens) {
        let live: HashMap<Uuid, TokenFacts> = state
            .tokens
            .iter()
            .filter(|(_, t)| t.revoked_at.is_none())
            .filter_map(|(id, t)| {
                let access = match &t.scope {
                    Scope::Admin => TokenAccess::Admin,
                    Scope::Domain(name) => TokenAccess::Domain(DomainId::for_name(name)),
                };
                let secret_sha256 = sha256_from_hex(&t.secret_sha256);
                if secret_sha256.is_none() {
                    // `decide` refuses such a hash: only a hand-edited log
                    // could hold one. The token then lets nobody in.
                    tracing::warn!(token_id = %id, "token with an unreadable hash ignored");
                }
                Some((
                    *id,
                    TokenFacts {
                        secret_sha256: secret_sha256?,
                        access,
                    },
                ))
            })
            .collect();
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = live;
    }

    /// The token `id` if it exists and is not revoked, as the token actor
    /// last published it. Nothing is published before the actor loaded
    /// (`Provisioning::load_tokens`).
    pub fn token(&self, id: Uuid) -> Option<TokenFacts> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .copied()
    }
}

fn zone_of(settings: &domain::Settings) -> Option<TimeZone> {
    (!settings.time_zone.is_utc()).then(|| settings.time_zone.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(uri: &str, source: &str, transport: &str) -> serde_json::Value {
        serde_json::json!({
            "uri": uri, "params": "", "call_id": "c@test", "cseq": 2, "source": source,
            "transport": transport, "user_agent": "ua", "registered_at": 1,
            "refreshed_at": 1, "expires_at": 3_600_000_001_i64
        })
    }

    fn user(credentials: serde_json::Value, bindings: Vec<serde_json::Value>) -> user::User {
        serde_json::from_value(serde_json::json!({
            "id": "e057188e-bb25-53d1-a900-7b7d0907b95a",
            "domain_id": "82c231fa-213e-576a-b946-a3c28f72d65f",
            "domain": "example.test", "username": "alice", "status": "active",
            "display_name": "", "caller_id": "", "max_contacts": 10, "enabled": true,
            "credentials": credentials, "created_at": 1, "bindings": bindings,
            "presence": "online", "calls": {"in_progress": [], "finished": []}
        }))
        .expect("a user state")
    }

    #[test]
    fn user_facts_keep_both_ha1_and_every_reachable_contact() {
        let md5 = "4496fba5e8edb311940c3d28ae197fb7";
        let sha = "0897c8205518d6d5de0e77f71e7fabc2845ee82ae2e8b21cc0ba717551546435";
        let state = user(
            serde_json::json!({"ha1_md5": md5, "ha1_sha256": sha, "set_at": 1}),
            vec![
                binding("sip:alice@192.0.2.1:5060", "192.0.2.1:5060", "udp"),
                binding("sip:alice@[2001:db8::1]", "[2001:db8::1]:5070", "TCP"),
                binding("sip:alice@phone.invalid", "not an address", "UDP"),
                binding("sip:alice@192.0.2.2;transport=foo", "192.0.2.2:5060", "FOO"),
            ],
        );
        let facts = UserFacts::of(&state);
        assert_eq!(facts.ha1_md5(), md5);
        assert_eq!(facts.ha1_sha256(), sha);
        let contacts: Vec<_> = facts
            .contacts
            .iter()
            .map(|c| (&*c.uri, c.source.to_string(), &*c.transport))
            .collect();
        assert_eq!(
            contacts,
            [
                (
                    "sip:alice@192.0.2.1:5060",
                    "192.0.2.1:5060".to_owned(),
                    "UDP"
                ),
                (
                    "sip:alice@[2001:db8::1]",
                    "[2001:db8::1]:5070".to_owned(),
                    "TCP"
                ),
                (
                    "sip:alice@192.0.2.2;transport=foo",
                    "192.0.2.2:5060".to_owned(),
                    "FOO"
                ),
            ]
        );
    }

    #[test]
    fn token_facts_keep_live_tokens_with_their_hash_as_bytes() {
        let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        let name = DomainName::parse("example.com").unwrap();
        let create = |id: u128, scope: Scope| token::Command::Create {
            token_id: Uuid::from_u128(id),
            scope,
            secret_sha256: hash.into(),
            description: String::new(),
        };
        let mut state = token::Tokens::default();
        for command in [
            create(1, Scope::Admin),
            create(2, Scope::Domain(name.clone())),
            create(3, Scope::Admin),
            token::Command::Revoke {
                token_id: Uuid::from_u128(3),
            },
        ] {
            let events = token::decide(&state, &command, 1).unwrap();
            state = events.iter().fold(state, token::evolve);
        }
        let facts = Facts::default();
        facts.publish_tokens(&state);
        let admin = facts.token(Uuid::from_u128(1)).unwrap();
        assert_eq!(admin.access, TokenAccess::Admin);
        assert_eq!(admin.secret_sha256[..2], [0x9f, 0x86]);
        assert_eq!(admin.secret_sha256[31], 0x08);
        assert_eq!(
            facts.token(Uuid::from_u128(2)).unwrap().access,
            TokenAccess::Domain(DomainId::for_name(&name))
        );
        assert_eq!(facts.token(Uuid::from_u128(3)), None);
        assert_eq!(sha256_from_hex(&hash.to_uppercase()), None);
        assert_eq!(sha256_from_hex(&hash[1..]), None);
    }

    /// Rooms are published with the domain and follow its commits: the
    /// router finds a room (or finds that a name is none) without asking
    /// the domain's actor, and sees a room created or deleted at once.
    #[test]
    fn conference_rooms_are_published_and_follow_the_domains_commits() {
        let name = DomainName::parse("example.com").unwrap();
        let id = DomainId::for_name(&name);
        let standup = UserName::parse("standup").unwrap();
        let retro = UserName::parse("retro").unwrap();
        let facts = Facts::default();
        let mut state = domain::Domain::default();
        let commit = |state: &mut domain::Domain, command: domain::Command| {
            let events = domain::decide(state, &command, 1).unwrap();
            *state = events.iter().fold(state.clone(), domain::evolve);
            facts.apply_domain_events(id, state, &events);
        };
        commit(
            &mut state,
            domain::Command::Create {
                name: name.clone(),
                settings: domain::Settings::default(),
            },
        );
        commit(
            &mut state,
            domain::Command::CreateConferenceRoom {
                name: standup.clone(),
                patch: Default::default(),
            },
        );
        let room = facts.conference_room(id, &standup).expect("published");
        assert_eq!(room.max_participants, 50);
        assert!(facts.conference_room(id, &retro).is_none());
        commit(
            &mut state,
            domain::Command::UpdateConferenceRoom {
                name: standup.clone(),
                patch: dialtone_domain::conference_room::RoomPatch {
                    max_participants: Some(7),
                    ..Default::default()
                },
            },
        );
        assert_eq!(
            facts
                .conference_room(id, &standup)
                .unwrap()
                .max_participants,
            7
        );
        // A node that loads the domain later publishes its rooms whole.
        let loaded = Facts::default();
        loaded.publish_domain(id, &state);
        assert_eq!(
            loaded
                .conference_room(id, &standup)
                .unwrap()
                .max_participants,
            7
        );
        commit(
            &mut state,
            domain::Command::DeleteConferenceRoom {
                name: standup.clone(),
            },
        );
        assert!(facts.conference_room(id, &standup).is_none());
    }

    /// A commit of only voicemail-box events keeps the user's published
    /// facts as they are (no rebuild): the mailbox is no SIP fact.
    #[test]
    fn mailbox_events_leave_user_facts_alone_but_enabling_it_does_not() {
        use dialtone_domain::mailbox::{AudioId, Command as M, Patch, PinHash};
        let state = user(
            serde_json::json!({"ha1_md5": "aa", "ha1_sha256": "bb", "set_at": 1}),
            vec![binding("sip:alice@192.0.2.1:5060", "192.0.2.1:5060", "UDP")],
        );
        let id = UserId(Uuid::from_u128(7));
        let facts = Facts::default();
        let run = |state: user::User, command: M| {
            let emitted = user::decide(&state, &user::Command::Mailbox(command), 2).unwrap();
            let after = emitted.iter().fold(state, user::evolve);
            (after, emitted)
        };
        // Enabling the box is a routing fact: forwards to it are taken.
        let (enabled, events) = run(
            state,
            M::Configure(Patch {
                enabled: Some(true),
                pin: Some(PinHash::derive("4321", [1; 16]).unwrap()),
                ..Patch::default()
            }),
        );
        assert!(!events.iter().all(leaves_facts_alone));
        facts.publish_user(id, &enabled, Some(&events));
        let before = facts.user(id).unwrap();
        assert!(before.features.as_ref().is_some_and(|f| f.voicemail));
        // Messages and PINs are not.
        let mut after = enabled;
        let mut events = Vec::new();
        for command in [
            M::Leave {
                message_id: AudioId::from_random([2; 16]),
                from: "bob@example.test".into(),
                duration_ms: 3_000,
            },
            M::CheckPin { pin: "0000".into() },
        ] {
            let (next, emitted) = run(after, command);
            after = next;
            events.extend(emitted);
        }
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events.iter().all(leaves_facts_alone));
        assert_eq!(UserFacts::of(&after), *before);
        facts.publish_user(id, &after, Some(&events));
        assert!(Arc::ptr_eq(&before, &facts.user(id).unwrap()));
    }

    #[test]
    fn a_user_without_credentials_has_empty_ha1() {
        let facts = UserFacts::of(&user(serde_json::Value::Null, vec![]));
        assert_eq!(facts.ha1_md5(), "");
        assert_eq!(facts.ha1_sha256(), "");
        assert!(facts.contacts.is_empty());
    }
}
