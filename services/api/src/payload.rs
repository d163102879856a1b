//! Typed protobuf payloads of events (`EventPayload`), mapped from the
//! domain's events by exhaustive matches: adding an event type to the
//! domain without a mapping here fails to compile.
//!
//! The mappings of the domain's values the payloads are made of (times,
//! settings, bindings, presence, call directions and causes) are public:
//! the services show the same values in their replies, mapped the same way.
//! This module depends on nothing else of the crate but [`crate::pb`], so
//! every other module can use it.

use dialtone_domain::call::{Cause, Direction, ForwardReason, HangupSide, TransferKind};
use dialtone_domain::dial_plan::DialPlan;
use dialtone_domain::mailbox::{self, RefusalReason};
use dialtone_domain::registration::{Binding, Presence};
use dialtone_domain::routing::SkipReason;
use dialtone_domain::trunk::Trunk;
use dialtone_domain::{conference, domain, number, token, user, Event};

use crate::pb;
use crate::pb::event_payload::Event as P;

/// The typed payload of `event`. Credentials become the time they were set:
/// HA1 values never leave the node.
pub fn payload(event: &Event) -> pb::EventPayload {
    into_payload(event.clone())
}

/// As [`payload`], taking the event (its strings move into the message).
pub fn into_payload(event: Event) -> pb::EventPayload {
    let event = match event {
        Event::Domain(e) => domain_payload(e),
        Event::User(e) => user_payload(e),
        Event::Token(e) => token_payload(e),
        Event::Conference(e) => conference_payload(e),
        Event::Number(e) => number_payload(e),
    };
    pb::EventPayload { event: Some(event) }
}

/// A protobuf timestamp from microseconds since the epoch (`None` for 0).
pub fn timestamp(us: i64) -> Option<prost_types::Timestamp> {
    if us == 0 {
        return None;
    }
    Some(prost_types::Timestamp {
        seconds: us.div_euclid(1_000_000),
        nanos: i32::try_from(us.rem_euclid(1_000_000) * 1000).unwrap_or(0),
    })
}

pub fn settings(s: &domain::Settings) -> pb::DomainSettings {
    into_settings(s.clone())
}

fn into_settings(s: domain::Settings) -> pb::DomainSettings {
    let md5_allowed = s.md5_allowed();
    pb::DomainSettings {
        description: s.description,
        allow_cross_domain_calls: s.allow_cross_domain_calls,
        md5_allowed,
        digest_algorithms: s.digest_algorithms.names(),
        time_zone: s.time_zone.to_string(),
        feature_codes: Some(feature_codes(s.feature_codes)),
    }
}

pub fn feature_codes(c: dialtone_domain::feature_codes::FeatureCodes) -> pb::FeatureCodes {
    pb::FeatureCodes {
        enabled: c.enabled,
        forward_always: c.forward_always,
        forwarding_off: c.forwarding_off,
        dnd_on: c.dnd_on,
        dnd_off: c.dnd_off,
        voicemail_own: c.voicemail_own,
        voicemail_any: c.voicemail_any,
    }
}

pub fn binding(b: &Binding) -> pb::Binding {
    into_binding(b.clone())
}

fn into_binding(b: Binding) -> pb::Binding {
    pb::Binding {
        uri: b.uri,
        params: b.params,
        q: b.q.map(u32::from),
        instance: b.instance.unwrap_or_default(),
        call_id: b.call_id,
        cseq: b.cseq,
        source: b.source,
        transport: b.transport,
        user_agent: b.user_agent.unwrap_or_default(),
        registered_at: timestamp(b.registered_at),
        refreshed_at: timestamp(b.refreshed_at),
        expires_at: timestamp(b.expires_at),
        reg_id: b.reg_id.unwrap_or_default(),
        nat: b.nat,
    }
}

fn domain_payload(e: domain::Event) -> P {
    use domain::Event as E;
    match e {
        E::DomainCreated {
            domain_id,
            name,
            settings: s,
            created_at,
        } => P::DomainCreated(pb::DomainCreated {
            domain_id: domain_id.to_string(),
            name: name.to_string(),
            settings: Some(into_settings(s)),
            created_at: timestamp(created_at),
        }),
        E::DomainUpdated { settings: s } => P::DomainUpdated(pb::DomainUpdated {
            settings: Some(into_settings(s)),
        }),
        E::DomainSuspended { reason } => P::DomainSuspended(pb::DomainSuspended {
            reason: reason.unwrap_or_default(),
        }),
        E::DomainResumed {} => P::DomainResumed(pb::DomainResumed {}),
        E::DomainDeleted {} => P::DomainDeleted(pb::DomainDeleted {}),
        E::UserNameClaimed { username, user_id } => P::UserNameClaimed(pb::UserNameClaimed {
            username: username.to_string(),
            user_id: user_id.to_string(),
        }),
        E::UserNameReleased { username, user_id } => P::UserNameReleased(pb::UserNameReleased {
            username: username.to_string(),
            user_id: user_id.to_string(),
        }),
        E::SourceLockedOut {
            source,
            scope,
            username,
            failures,
            locked_at,
            locked_until,
        } => P::SourceLockedOut(pb::SourceLockedOut {
            source,
            scope: match scope {
                domain::LockoutScope::User => pb::LockoutScope::User,
                domain::LockoutScope::Source => pb::LockoutScope::Source,
            } as i32,
            username: username.unwrap_or_default(),
            failures,
            locked_at: timestamp(locked_at),
            locked_until: timestamp(locked_until),
        }),
        E::RingGroupCreated { name, group } => P::RingGroupCreated(pb::RingGroupCreated {
            name: name.to_string(),
            group: Some(crate::convert::ring_group_settings(&group)),
        }),
        E::RingGroupUpdated { name, group } => P::RingGroupUpdated(pb::RingGroupUpdated {
            name: name.to_string(),
            group: Some(crate::convert::ring_group_settings(&group)),
        }),
        E::RingGroupDeleted { name } => P::RingGroupDeleted(pb::RingGroupDeleted {
            name: name.to_string(),
        }),
        E::ConferenceRoomCreated { name, room } => {
            P::ConferenceRoomCreated(pb::ConferenceRoomCreated {
                name: name.to_string(),
                room: Some(crate::convert::room_settings(&room)),
            })
        }
        E::ConferenceRoomUpdated { name, room } => {
            P::ConferenceRoomUpdated(pb::ConferenceRoomUpdated {
                name: name.to_string(),
                room: Some(crate::convert::room_settings(&room)),
            })
        }
        E::ConferenceRoomDeleted { name } => P::ConferenceRoomDeleted(pb::ConferenceRoomDeleted {
            name: name.to_string(),
        }),
        E::TrunkCreated { name, trunk } => P::TrunkCreated(pb::TrunkCreated {
            name: name.to_string(),
            trunk: Some(trunk_settings(&trunk)),
        }),
        E::TrunkUpdated { name, trunk } => P::TrunkUpdated(pb::TrunkUpdated {
            name: name.to_string(),
            trunk: Some(trunk_settings(&trunk)),
        }),
        E::TrunkDeleted { name } => P::TrunkDeleted(pb::TrunkDeleted {
            name: name.to_string(),
        }),
        E::DialPlanChanged { plan } => P::DialPlanChanged(pb::DialPlanChanged {
            plan: Some(dial_plan(&plan)),
        }),
        E::ConferencePinRejected {
            name,
            caller,
            authenticated,
            strikes,
            room_strikes,
            rejected_at,
        } => P::ConferencePinRejected(pb::ConferencePinRejected {
            name: name.to_string(),
            caller,
            authenticated,
            strikes: Some(pin_strikes(&strikes)),
            room_strikes: room_strikes.as_ref().map(pin_strikes),
            rejected_at: timestamp(rejected_at),
        }),
        E::ConferencePinAccepted { name, caller } => {
            P::ConferencePinAccepted(pb::ConferencePinAccepted {
                name: name.to_string(),
                caller,
            })
        }
        E::ConferencePinLockoutsCleared {
            name,
            caller,
            cleared_at,
        } => P::ConferencePinLockoutsCleared(pb::ConferencePinLockoutsCleared {
            name: name.to_string(),
            caller: caller.unwrap_or_default(),
            cleared_at: timestamp(cleared_at),
        }),
    }
}

/// A trunk's settings as the API shows them (`address` and `version`
/// left for the caller): the password never, only whether credentials are
/// set and which key sealed them.
pub fn trunk_settings(t: &Trunk) -> pb::Trunk {
    let credentials = t.credentials.as_ref();
    pb::Trunk {
        address: String::new(),
        gateways: t
            .gateways
            .iter()
            .map(|g| pb::TrunkGateway {
                uri: g.uri.clone(),
                transport: g.transport.as_str().to_owned(),
            })
            .collect(),
        has_credentials: credentials.is_some(),
        username: credentials.map(|c| c.username.clone()).unwrap_or_default(),
        realm: credentials
            .and_then(|c| c.realm.clone())
            .unwrap_or_default(),
        password_key_id: credentials
            .map(|c| c.password.key_id().to_owned())
            .unwrap_or_default(),
        register: t.register,
        register_expiry_secs: t.register_expiry_secs,
        from_domain: t.from_domain.clone().unwrap_or_default(),
        from_user: t.from_user.to_string(),
        caller_id: t.caller_id.to_string(),
        codecs: t.codecs.iter().map(|c| c.as_str().to_owned()).collect(),
        max_calls: t.max_calls.unwrap_or(0),
        inbound_sources: t.inbound_sources.iter().map(ToString::to_string).collect(),
        version: 0,
    }
}

/// A dial plan as the API shows it (`domain` and `version` left for the
/// caller).
pub fn dial_plan(plan: &DialPlan) -> pb::DialPlan {
    pb::DialPlan {
        domain: String::new(),
        classes: plan
            .classes
            .iter()
            .map(|(name, users)| pb::DialPlanClass {
                name: name.clone(),
                users: users.iter().map(ToString::to_string).collect(),
            })
            .collect(),
        rules: plan
            .written()
            .into_iter()
            .map(|r| pb::DialPlanRule {
                pattern: r.pattern,
                strip: r.strip,
                prefix: r.prefix,
                trunk: r.trunk,
                allow: r.allow,
            })
            .collect(),
        version: 0,
    }
}

fn number_payload(e: number::Event) -> P {
    use number::Event as E;
    match e {
        E::NumberAssigned {
            number,
            domain_id,
            domain,
            target,
            description,
            assigned_at,
        } => P::NumberAssigned(pb::NumberAssigned {
            number: number.to_string(),
            domain_id: domain_id.to_string(),
            domain: domain.to_string(),
            target: target.to_string(),
            description,
            assigned_at: timestamp(assigned_at),
        }),
        E::NumberUpdated {
            number,
            domain_id,
            target,
            description,
        } => P::NumberUpdated(pb::NumberUpdated {
            number: number.to_string(),
            domain_id: domain_id.to_string(),
            target: target.to_string(),
            description,
        }),
        E::NumberReleased { number, domain_id } => P::NumberReleased(pb::NumberReleased {
            number: number.to_string(),
            domain_id: domain_id.to_string(),
        }),
    }
}

/// A room's or a caller's wrong PINs as the API shows them.
pub fn pin_strikes(s: &dialtone_domain::conference_pin::Strikes) -> pb::PinStrikes {
    pb::PinStrikes {
        failures: s.failures,
        last_failure_at: timestamp(s.last_failure_at),
        locked_until: s.locked_until.and_then(timestamp),
        lockouts: s.lockouts,
    }
}

pub fn leave_reason(reason: conference::LeaveReason) -> pb::LeaveReason {
    use conference::LeaveReason as L;
    match reason {
        L::HungUp => pb::LeaveReason::HungUp,
        L::Kicked => pb::LeaveReason::Kicked,
        L::RtpTimeout => pb::LeaveReason::RtpTimeout,
        L::WrongPin => pb::LeaveReason::WrongPin,
        L::RoomFull => pb::LeaveReason::RoomFull,
        L::RoomLocked => pb::LeaveReason::RoomLocked,
        L::ConferenceEnded => pb::LeaveReason::ConferenceEnded,
    }
}

pub fn end_reason(reason: conference::EndReason) -> pb::ConferenceEndReason {
    use conference::EndReason as R;
    match reason {
        R::Requested => pb::ConferenceEndReason::Requested,
        R::LastModeratorLeft => pb::ConferenceEndReason::LastModeratorLeft,
        R::Empty => pb::ConferenceEndReason::Empty,
        R::NodeRestart => pb::ConferenceEndReason::NodeRestart,
    }
}

fn conference_payload(e: conference::Event) -> P {
    use conference::Event as E;
    match e {
        E::ConferenceStarted {
            domain_id,
            room,
            max_participants,
            end_with_moderator,
            muted_on_entry,
            started_at,
        } => P::ConferenceStarted(pb::ConferenceStarted {
            domain_id: domain_id.to_string(),
            room: room.to_string(),
            max_participants,
            end_with_moderator,
            muted_on_entry,
            started_at: timestamp(started_at),
        }),
        E::ParticipantJoined {
            participant,
            caller,
            moderator,
            muted,
            joined_at,
        } => P::ParticipantJoined(pb::ParticipantJoined {
            participant: participant.to_string(),
            caller,
            moderator,
            muted,
            joined_at: timestamp(joined_at),
        }),
        E::ParticipantLeft {
            participant,
            reason,
            caller,
            left_at,
        } => P::ParticipantLeft(pb::ParticipantLeft {
            participant: participant.to_string(),
            reason: leave_reason(reason) as i32,
            caller: caller.unwrap_or_default(),
            left_at: timestamp(left_at),
        }),
        E::ParticipantMuted {
            participant,
            muted_at,
        } => P::ParticipantMuted(pb::ParticipantMuted {
            participant: participant.to_string(),
            muted_at: timestamp(muted_at),
        }),
        E::ParticipantUnmuted {
            participant,
            unmuted_at,
        } => P::ParticipantUnmuted(pb::ParticipantUnmuted {
            participant: participant.to_string(),
            unmuted_at: timestamp(unmuted_at),
        }),
        E::ParticipantTalking {
            participant,
            talking,
            changed_at,
        } => P::ParticipantTalking(pb::ParticipantTalking {
            participant: participant.to_string(),
            talking,
            changed_at: timestamp(changed_at),
        }),
        E::ConferenceLocked { locked_at } => P::ConferenceLocked(pb::ConferenceLocked {
            locked_at: timestamp(locked_at),
        }),
        E::ConferenceUnlocked { unlocked_at } => P::ConferenceUnlocked(pb::ConferenceUnlocked {
            unlocked_at: timestamp(unlocked_at),
        }),
        E::ConferenceRecordingStarted { audio, started_at } => {
            P::ConferenceRecordingStarted(pb::ConferenceRecordingStarted {
                audio: audio.to_string(),
                started_at: timestamp(started_at),
            })
        }
        E::ConferenceRecordingStopped {
            audio,
            duration_ms,
            stopped_at,
        } => P::ConferenceRecordingStopped(pb::ConferenceRecordingStopped {
            audio: audio.to_string(),
            duration_ms,
            stopped_at: timestamp(stopped_at),
        }),
        E::ConferenceRecordingRequested {
            action,
            requested_at,
        } => P::ConferenceRecordingRequested(pb::ConferenceRecordingRequested {
            action: action.as_str().to_owned(),
            requested_at: timestamp(requested_at),
        }),
        E::ConferenceEnded { reason, ended_at } => P::ConferenceEnded(pb::ConferenceEnded {
            reason: end_reason(reason) as i32,
            ended_at: timestamp(ended_at),
        }),
    }
}

/// `"admin"` or the domain name, as the API shows a token's scope.
pub fn scope(scope: &token::Scope) -> String {
    match scope {
        token::Scope::Admin => "admin".to_owned(),
        token::Scope::Domain(name) => name.to_string(),
    }
}

/// The hash of the secret is left out: it never leaves the node.
fn token_payload(e: token::Event) -> P {
    use token::Event as E;
    match e {
        E::TokenCreated {
            token_id,
            scope: s,
            secret_sha256: _,
            description,
            created_at,
        } => P::TokenCreated(pb::TokenCreated {
            token_id: token_id.to_string(),
            scope: scope(&s),
            description,
            created_at: timestamp(created_at),
        }),
        E::TokenRevoked {
            token_id,
            revoked_at,
        } => P::TokenRevoked(pb::TokenRevoked {
            token_id: token_id.to_string(),
            revoked_at: timestamp(revoked_at),
        }),
    }
}

fn user_payload(e: user::Event) -> P {
    use user::Event as E;
    match e {
        E::UserCreated {
            user_id,
            domain_id,
            domain,
            username,
            display_name,
            caller_id,
            max_contacts,
            enabled,
            credentials,
            created_at,
        } => P::UserCreated(pb::UserCreated {
            user_id: user_id.to_string(),
            domain_id: domain_id.to_string(),
            domain: domain.to_string(),
            username: username.to_string(),
            display_name,
            caller_id,
            max_contacts,
            enabled,
            password_set_at: timestamp(credentials.set_at),
            created_at: timestamp(created_at),
        }),
        E::PasswordChanged { credentials } => P::PasswordChanged(pb::PasswordChanged {
            password_set_at: timestamp(credentials.set_at),
        }),
        E::UserUpdated {
            display_name,
            caller_id,
            max_contacts,
        } => P::UserUpdated(pb::UserUpdated {
            display_name,
            caller_id,
            max_contacts,
        }),
        E::ForwardingChanged { forwarding } => P::ForwardingChanged(pb::ForwardingChanged {
            forwarding: Some(crate::convert::forwarding(&forwarding)),
        }),
        E::DndChanged { dnd } => P::DndChanged(pb::DndChanged { dnd }),
        E::UserEnabled {} => P::UserEnabled(pb::UserEnabled {}),
        E::UserDisabled {} => P::UserDisabled(pb::UserDisabled {}),
        E::UserDeleted { reason } => P::UserDeleted(pb::UserDeleted {
            reason: reason.unwrap_or_default(),
        }),
        E::ContactRegistered { binding: b } => P::ContactRegistered(pb::ContactRegistered {
            binding: Some(into_binding(b)),
        }),
        E::ContactRefreshed {
            uri,
            instance,
            reg_id,
            call_id,
            cseq,
            source,
            transport,
            nat,
            user_agent,
            q,
            params,
            refreshed_at,
            expires_at,
        } => P::ContactRefreshed(pb::ContactRefreshed {
            uri,
            instance: instance.unwrap_or_default(),
            reg_id: reg_id.unwrap_or_default(),
            nat,
            call_id,
            cseq,
            source,
            transport,
            user_agent: user_agent.unwrap_or_default(),
            q: q.map(u32::from),
            params,
            refreshed_at: timestamp(refreshed_at),
            expires_at: timestamp(expires_at),
        }),
        E::ContactRemoved {
            uri,
            instance,
            reg_id,
            reason,
        } => P::ContactRemoved(pb::ContactRemoved {
            uri,
            instance: instance.unwrap_or_default(),
            reg_id: reg_id.unwrap_or_default(),
            reason,
        }),
        E::ContactExpired {
            uri,
            instance,
            reg_id,
            expired_at,
        } => P::ContactExpired(pb::ContactExpired {
            uri,
            instance: instance.unwrap_or_default(),
            reg_id: reg_id.unwrap_or_default(),
            expired_at: timestamp(expired_at),
        }),
        E::ContactReplaced {
            uri,
            instance,
            reg_id,
            replaced_by,
        } => P::ContactReplaced(pb::ContactReplaced {
            uri,
            instance: instance.unwrap_or_default(),
            reg_id: reg_id.unwrap_or_default(),
            replaced_by,
        }),
        E::PresenceChanged {
            presence: now,
            previous,
        } => P::PresenceChanged(pb::PresenceChanged {
            presence: presence(now) as i32,
            previous: presence(previous) as i32,
        }),
        E::CallStarted {
            call_id,
            direction: d,
            from,
            to,
            sip_call_id,
            started_at,
        } => P::CallStarted(pb::CallStarted {
            call_id,
            direction: direction(d) as i32,
            from,
            to,
            sip_call_id,
            started_at: timestamp(started_at),
        }),
        E::CallRinging { call_id } => P::CallRinging(pb::CallRinging { call_id }),
        E::CallAnswered {
            call_id,
            contact,
            answered_at,
        } => P::CallAnswered(pb::CallAnswered {
            call_id,
            contact,
            answered_at: timestamp(answered_at),
        }),
        E::CallEnded {
            call_id,
            cause: c,
            hangup_side: side,
            duration_ms,
            ended_at,
        } => P::CallEnded(pb::CallEnded {
            call_id,
            cause: cause(c) as i32,
            hangup_side: hangup_side(side) as i32,
            duration_ms,
            ended_at: timestamp(ended_at),
        }),
        E::CallFailed {
            call_id,
            sip_status,
            cause: c,
            failed_at,
        } => P::CallFailed(pb::CallFailed {
            call_id,
            sip_status: u32::from(sip_status),
            cause: cause(c) as i32,
            failed_at: timestamp(failed_at),
        }),
        E::CallForwarded {
            call_id,
            to,
            reason,
            forwarded_at,
        } => P::CallForwarded(pb::CallForwarded {
            call_id,
            to,
            reason: forward_reason(reason) as i32,
            forwarded_at: timestamp(forwarded_at),
        }),
        E::CallForwardSkipped {
            call_id,
            to,
            rule,
            why,
        } => P::CallForwardSkipped(pb::CallForwardSkipped {
            call_id,
            to,
            rule: forward_reason(rule) as i32,
            why: skip_reason(why) as i32,
        }),
        E::CallTransferred {
            call_id,
            new_call_id,
            transferor,
            transferee,
            target,
            kind,
            replaced_call_id,
            transferred_at,
        } => P::CallTransferred(pb::CallTransferred {
            call_id,
            new_call_id,
            transferor,
            transferee,
            target,
            kind: transfer_kind(kind) as i32,
            replaced_call_id: replaced_call_id.unwrap_or_default(),
            transferred_at: timestamp(transferred_at),
        }),
        E::MailboxConfigured { enabled, settings } => P::MailboxConfigured(pb::MailboxConfigured {
            enabled,
            settings: Some(mailbox_settings(settings)),
        }),
        // The PIN's hash never leaves the node (`event::redact_secrets`).
        E::MailboxPinChanged { pin: _ } => P::MailboxPinChanged(pb::MailboxPinChanged {}),
        E::MailboxPinAccepted {} => P::MailboxPinAccepted(pb::MailboxPinAccepted {}),
        E::MailboxPinRejected { attempts } => {
            P::MailboxPinRejected(pb::MailboxPinRejected { attempts })
        }
        E::MailboxLockedOut {
            attempts,
            locked_until,
        } => P::MailboxLockedOut(pb::MailboxLockedOut {
            attempts,
            locked_until: timestamp(locked_until),
        }),
        E::VoicemailLeft {
            message_id,
            from,
            duration_ms,
            left_at,
        } => P::VoicemailLeft(pb::VoicemailLeft {
            message_id: message_id.to_string(),
            from,
            duration_ms,
            left_at: timestamp(left_at),
        }),
        E::VoicemailRefused {
            from,
            reason,
            refused_at,
        } => P::VoicemailRefused(pb::VoicemailRefused {
            from,
            reason: refusal_reason(reason) as i32,
            refused_at: timestamp(refused_at),
        }),
        E::VoicemailRead {
            message_id,
            read_at,
        } => P::VoicemailRead(pb::VoicemailRead {
            message_id: message_id.to_string(),
            read_at: timestamp(read_at),
        }),
        E::VoicemailDeleted {
            message_id,
            deleted_at,
        } => P::VoicemailDeleted(pb::VoicemailDeleted {
            message_id: message_id.to_string(),
            deleted_at: timestamp(deleted_at),
        }),
        E::GreetingChanged {
            greeting,
            changed_at,
        } => P::GreetingChanged(pb::GreetingChanged {
            greeting: greeting.map(|g| pb::Greeting {
                audio_id: g.audio.to_string(),
                duration_ms: g.duration_ms,
            }),
            changed_at: timestamp(changed_at),
        }),
    }
}

pub fn mailbox_settings(s: mailbox::Settings) -> pb::MailboxSettings {
    pb::MailboxSettings {
        max_message_ms: s.max_message_ms,
        max_messages: s.max_messages,
        pin_from_own_phone: s.pin_from_own_phone,
        unsolicited_mwi: s.unsolicited_mwi,
    }
}

pub fn refusal_reason(r: RefusalReason) -> pb::VoicemailRefusalReason {
    match r {
        RefusalReason::MailboxFull => pb::VoicemailRefusalReason::MailboxFull,
        RefusalReason::MailboxDisabled => pb::VoicemailRefusalReason::MailboxDisabled,
    }
}

pub fn transfer_kind(k: TransferKind) -> pb::TransferKind {
    match k {
        TransferKind::Blind => pb::TransferKind::Blind,
        TransferKind::Attended => pb::TransferKind::Attended,
    }
}

pub fn skip_reason(r: SkipReason) -> pb::ForwardSkipReason {
    match r {
        SkipReason::Loop => pb::ForwardSkipReason::Loop,
        SkipReason::HopLimit => pb::ForwardSkipReason::HopLimit,
        SkipReason::PlanLimit => pb::ForwardSkipReason::PlanLimit,
        SkipReason::NotRoutable => pb::ForwardSkipReason::NotRoutable,
        SkipReason::UnknownTarget => pb::ForwardSkipReason::UnknownTarget,
        SkipReason::TargetUnavailable => pb::ForwardSkipReason::TargetUnavailable,
        SkipReason::CrossDomainForbidden => pb::ForwardSkipReason::CrossDomainForbidden,
        SkipReason::TargetBusy => pb::ForwardSkipReason::TargetBusy,
        SkipReason::TargetNotRegistered => pb::ForwardSkipReason::TargetNotRegistered,
    }
}

pub fn forward_reason(r: ForwardReason) -> pb::ForwardReason {
    match r {
        ForwardReason::Unconditional => pb::ForwardReason::Unconditional,
        ForwardReason::UserBusy => pb::ForwardReason::UserBusy,
        ForwardReason::NoAnswer => pb::ForwardReason::NoAnswer,
        ForwardReason::Unavailable => pb::ForwardReason::Unavailable,
        ForwardReason::DoNotDisturb => pb::ForwardReason::DoNotDisturb,
    }
}

pub fn presence(p: Presence) -> pb::PresenceState {
    match p {
        Presence::Offline => pb::PresenceState::Offline,
        Presence::Online => pb::PresenceState::Online,
        Presence::Ringing => pb::PresenceState::Ringing,
        Presence::OnCall => pb::PresenceState::OnCall,
        Presence::Dnd => pb::PresenceState::Dnd,
    }
}

pub fn direction(d: Direction) -> pb::CallDirection {
    match d {
        Direction::Outbound => pb::CallDirection::Outbound,
        Direction::Inbound => pb::CallDirection::Inbound,
    }
}

pub fn cause(c: Cause) -> pb::CallCause {
    match c {
        Cause::NormalClearing => pb::CallCause::NormalClearing,
        Cause::OriginatorCancel => pb::CallCause::OriginatorCancel,
        Cause::UserBusy => pb::CallCause::UserBusy,
        Cause::NoAnswer => pb::CallCause::NoAnswer,
        Cause::CallRejected => pb::CallCause::CallRejected,
        Cause::NotFound => pb::CallCause::NotFound,
        Cause::Unavailable => pb::CallCause::Unavailable,
        Cause::Timeout => pb::CallCause::Timeout,
        Cause::NodeRestart => pb::CallCause::NodeRestart,
        Cause::AnsweredElsewhere => pb::CallCause::AnsweredElsewhere,
        Cause::Transferred => pb::CallCause::Transferred,
    }
}

pub fn hangup_side(side: HangupSide) -> pb::HangupSide {
    match side {
        HangupSide::Caller => pb::HangupSide::Caller,
        HangupSide::Callee => pb::HangupSide::Callee,
        HangupSide::System => pb::HangupSide::System,
    }
}

/// The variant name of a payload, which is the stored type name of the
/// event it was mapped from.
pub fn type_name(payload: &pb::EventPayload) -> Option<&'static str> {
    Some(match payload.event.as_ref()? {
        P::DomainCreated(_) => "DomainCreated",
        P::DomainUpdated(_) => "DomainUpdated",
        P::DomainSuspended(_) => "DomainSuspended",
        P::DomainResumed(_) => "DomainResumed",
        P::DomainDeleted(_) => "DomainDeleted",
        P::UserNameClaimed(_) => "UserNameClaimed",
        P::UserNameReleased(_) => "UserNameReleased",
        P::SourceLockedOut(_) => "SourceLockedOut",
        P::RingGroupCreated(_) => "RingGroupCreated",
        P::RingGroupUpdated(_) => "RingGroupUpdated",
        P::RingGroupDeleted(_) => "RingGroupDeleted",
        P::ConferenceRoomCreated(_) => "ConferenceRoomCreated",
        P::ConferenceRoomUpdated(_) => "ConferenceRoomUpdated",
        P::ConferenceRoomDeleted(_) => "ConferenceRoomDeleted",
        P::ConferencePinRejected(_) => "ConferencePinRejected",
        P::ConferencePinAccepted(_) => "ConferencePinAccepted",
        P::ConferencePinLockoutsCleared(_) => "ConferencePinLockoutsCleared",
        P::ConferenceStarted(_) => "ConferenceStarted",
        P::ParticipantJoined(_) => "ParticipantJoined",
        P::ParticipantLeft(_) => "ParticipantLeft",
        P::ParticipantMuted(_) => "ParticipantMuted",
        P::ParticipantUnmuted(_) => "ParticipantUnmuted",
        P::ParticipantTalking(_) => "ParticipantTalking",
        P::ConferenceLocked(_) => "ConferenceLocked",
        P::ConferenceUnlocked(_) => "ConferenceUnlocked",
        P::ConferenceRecordingStarted(_) => "ConferenceRecordingStarted",
        P::ConferenceRecordingStopped(_) => "ConferenceRecordingStopped",
        P::ConferenceRecordingRequested(_) => "ConferenceRecordingRequested",
        P::ConferenceEnded(_) => "ConferenceEnded",
        P::TrunkCreated(_) => "TrunkCreated",
        P::TrunkUpdated(_) => "TrunkUpdated",
        P::TrunkDeleted(_) => "TrunkDeleted",
        P::DialPlanChanged(_) => "DialPlanChanged",
        P::NumberAssigned(_) => "NumberAssigned",
        P::NumberUpdated(_) => "NumberUpdated",
        P::NumberReleased(_) => "NumberReleased",
        P::UserCreated(_) => "UserCreated",
        P::PasswordChanged(_) => "PasswordChanged",
        P::UserUpdated(_) => "UserUpdated",
        P::UserEnabled(_) => "UserEnabled",
        P::UserDisabled(_) => "UserDisabled",
        P::UserDeleted(_) => "UserDeleted",
        P::ForwardingChanged(_) => "ForwardingChanged",
        P::DndChanged(_) => "DndChanged",
        P::ContactRegistered(_) => "ContactRegistered",
        P::ContactRefreshed(_) => "ContactRefreshed",
        P::ContactRemoved(_) => "ContactRemoved",
        P::ContactExpired(_) => "ContactExpired",
        P::ContactReplaced(_) => "ContactReplaced",
        P::PresenceChanged(_) => "PresenceChanged",
        P::CallStarted(_) => "CallStarted",
        P::CallRinging(_) => "CallRinging",
        P::CallAnswered(_) => "CallAnswered",
        P::CallEnded(_) => "CallEnded",
        P::CallFailed(_) => "CallFailed",
        P::CallForwarded(_) => "CallForwarded",
        P::CallForwardSkipped(_) => "CallForwardSkipped",
        P::CallTransferred(_) => "CallTransferred",
        P::MailboxConfigured(_) => "MailboxConfigured",
        P::MailboxPinChanged(_) => "MailboxPinChanged",
        P::MailboxPinAccepted(_) => "MailboxPinAccepted",
        P::MailboxPinRejected(_) => "MailboxPinRejected",
        P::MailboxLockedOut(_) => "MailboxLockedOut",
        P::VoicemailLeft(_) => "VoicemailLeft",
        P::VoicemailRefused(_) => "VoicemailRefused",
        P::VoicemailRead(_) => "VoicemailRead",
        P::VoicemailDeleted(_) => "VoicemailDeleted",
        P::GreetingChanged(_) => "GreetingChanged",
        P::TokenCreated(_) => "TokenCreated",
        P::TokenRevoked(_) => "TokenRevoked",
    })
}

#[cfg(test)]
mod tests {
    use dialtone_domain::event::EVENT_TYPES;
    use prost::Message as _;

    fn snake_case(name: &str) -> String {
        let mut out = String::new();
        for (i, c) in name.chars().enumerate() {
            if c.is_ascii_uppercase() {
                if i > 0 {
                    out.push('_');
                }
                out.push(c.to_ascii_lowercase());
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The exhaustive matches above cover every domain event; this checks
    /// the contract side: `EventPayload` has a field (and a message) named
    /// after every stored type, and nothing else.
    #[test]
    fn every_event_type_has_a_payload_field_and_message() {
        let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap();
        let events = set
            .file
            .iter()
            .find(|f| f.name() == "dialtone/v1/events.proto")
            .unwrap();
        let payload = events
            .message_type
            .iter()
            .find(|m| m.name() == "EventPayload")
            .unwrap();
        let mut fields: Vec<(String, String)> = payload
            .field
            .iter()
            .map(|f| (f.name().to_owned(), f.type_name().to_owned()))
            .collect();
        fields.sort();
        let mut expected: Vec<(String, String)> = EVENT_TYPES
            .iter()
            .map(|(t, _)| (snake_case(t), format!(".dialtone.v1.{t}")))
            .collect();
        expected.sort();
        assert_eq!(fields, expected);
    }

    #[test]
    fn type_names_match_the_stored_names() {
        use dialtone_domain::{domain, Event};
        let event = Event::Domain(domain::Event::DomainResumed {});
        let payload = super::payload(&event);
        assert_eq!(super::type_name(&payload), Some(event.event_type()));
    }

    #[test]
    fn conference_events_map_to_their_payloads_without_pins() {
        use crate::pb;
        use crate::pb::event_payload::Event as P;
        use dialtone_domain::conference::{EndReason, Event as C, LeaveReason, ParticipantId};
        use dialtone_domain::conference_room::Room;
        use dialtone_domain::mailbox::PinHash;
        use dialtone_domain::{domain::Event as D, Event, UserName};
        let room = Room {
            pin: Some(PinHash::derive("2468", [1; 16]).unwrap()),
            moderator_pin: None,
            max_participants: 12,
            ..Room::default()
        };
        let created = super::payload(&Event::Domain(D::ConferenceRoomCreated {
            name: UserName::parse("standup").unwrap(),
            room: Box::new(room),
        }));
        let bytes = created.encode_to_vec();
        assert!(!bytes.windows(7).any(|w| w == b"sha256$"));
        match created.event {
            Some(P::ConferenceRoomCreated(pb::ConferenceRoomCreated {
                name,
                room: Some(room),
            })) => {
                assert_eq!(name, "standup");
                assert!(room.has_pin && !room.has_moderator_pin);
                assert_eq!(room.max_participants, 12);
                assert!(room.tones && !room.record);
            }
            other => panic!("{other:?}"),
        }
        let participant = ParticipantId(uuid::Uuid::from_u128(5));
        let left = super::payload(&Event::Conference(C::ParticipantLeft {
            participant,
            reason: LeaveReason::WrongPin,
            caller: Some("mallory@example.com".into()),
            left_at: 2_500_000,
        }));
        match left.event {
            Some(P::ParticipantLeft(l)) => {
                assert_eq!(l.participant, participant.to_string());
                assert_eq!(l.reason(), pb::LeaveReason::WrongPin);
                assert_eq!(l.caller, "mallory@example.com");
                assert_eq!(
                    l.left_at.map(|t| (t.seconds, t.nanos)),
                    Some((2, 500_000_000))
                );
            }
            other => panic!("{other:?}"),
        }
        for (reason, expected) in [
            (EndReason::Requested, pb::ConferenceEndReason::Requested),
            (
                EndReason::LastModeratorLeft,
                pb::ConferenceEndReason::LastModeratorLeft,
            ),
            (EndReason::Empty, pb::ConferenceEndReason::Empty),
            (EndReason::NodeRestart, pb::ConferenceEndReason::NodeRestart),
        ] {
            let event = Event::Conference(C::ConferenceEnded {
                reason,
                ended_at: 1,
            });
            let payload = super::payload(&event);
            assert_eq!(super::type_name(&payload), Some("ConferenceEnded"));
            match payload.event {
                Some(P::ConferenceEnded(e)) => assert_eq!(e.reason(), expected),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn mailbox_events_map_to_their_payloads() {
        use dialtone_domain::mailbox::{AudioId, Greeting, PinHash, RefusalReason, Settings};
        use dialtone_domain::{user::Event as U, Event};
        let id = AudioId::from_random([0xab; 16]);
        let events = [
            U::MailboxConfigured {
                enabled: true,
                settings: Settings::default(),
            },
            U::MailboxPinChanged {
                pin: PinHash::derive("4321", [1; 16]).unwrap(),
            },
            U::MailboxPinAccepted {},
            U::MailboxPinRejected { attempts: 2 },
            U::MailboxLockedOut {
                attempts: 5,
                locked_until: 7_000_000,
            },
            U::VoicemailLeft {
                message_id: id.clone(),
                from: "bob@example.com".into(),
                duration_ms: 4_000,
                left_at: 1,
            },
            U::VoicemailRefused {
                from: "bob@example.com".into(),
                reason: RefusalReason::MailboxFull,
                refused_at: 1,
            },
            U::VoicemailRead {
                message_id: id.clone(),
                read_at: 1,
            },
            U::VoicemailDeleted {
                message_id: id.clone(),
                deleted_at: 1,
            },
            U::GreetingChanged {
                greeting: Some(Greeting {
                    audio: id.clone(),
                    duration_ms: 3_000,
                }),
                changed_at: 1,
            },
        ];
        for event in events {
            let event = Event::User(event);
            let payload = super::payload(&event);
            assert_eq!(super::type_name(&payload), Some(event.event_type()));
            // The PIN's hash is not in the typed payload.
            assert!(!format!("{payload:?}").contains("sha256$"), "{payload:?}");
        }
        let left = super::payload(&Event::User(U::VoicemailLeft {
            message_id: id.clone(),
            from: "bob@example.com".into(),
            duration_ms: 4_000,
            left_at: 1_500_000,
        }));
        let Some(super::P::VoicemailLeft(left)) = left.event else {
            panic!("{left:?}")
        };
        assert_eq!(left.message_id, id.as_str());
        assert_eq!(left.left_at.unwrap().seconds, 1);
    }
}
