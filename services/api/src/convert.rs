//! Conversions between the model and protobuf messages.

use dialtone_actors::DomainInfo;
use dialtone_actors::View;
use dialtone_domain::{domain, event, user};
use dialtone_eventlog::RecordedEvent;

use crate::payload::timestamp;
use crate::{payload, pb};

pub fn domain(info: &DomainInfo) -> pb::Domain {
    pb::Domain {
        id: info.id.to_string(),
        name: info
            .name
            .as_ref()
            .map(|n| n.to_string())
            .unwrap_or_default(),
        status: match info.status {
            domain::Status::Absent => pb::DomainStatus::Unspecified,
            domain::Status::Active => pb::DomainStatus::Active,
            domain::Status::Suspended => pb::DomainStatus::Suspended,
            domain::Status::Deleted => pb::DomainStatus::Deleted,
        } as i32,
        description: info.settings.description.clone(),
        allow_cross_domain_calls: info.settings.allow_cross_domain_calls,
        md5_allowed: info.settings.md5_allowed(),
        digest_algorithms: info.settings.digest_algorithms.names(),
        time_zone: info.settings.time_zone.to_string(),
        feature_codes: Some(crate::payload::feature_codes(
            info.settings.feature_codes.clone(),
        )),
        suspend_reason: info.suspend_reason.clone().unwrap_or_default(),
        user_count: u32::try_from(info.user_count).unwrap_or(u32::MAX),
        created_at: timestamp(info.created_at),
        version: info.version.unwrap_or_default(),
    }
}

pub fn user(view: &View<user::User>) -> pb::User {
    let s = &view.state;
    pb::User {
        id: s.id.map(|id| id.to_string()).unwrap_or_default(),
        domain_id: s.domain_id.map(|id| id.to_string()).unwrap_or_default(),
        domain: s.domain.as_ref().map(|d| d.to_string()).unwrap_or_default(),
        username: s
            .username
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_default(),
        address: s.address(),
        display_name: s.display_name.clone(),
        caller_id: s.caller_id.clone(),
        max_contacts: s.max_contacts,
        enabled: s.enabled,
        deleted: s.status == user::Status::Deleted,
        created_at: timestamp(s.created_at),
        password_set_at: s.credentials.as_ref().and_then(|c| timestamp(c.set_at)),
        version: view.version.unwrap_or_default(),
        forwarding: Some(forwarding(&s.forwarding)),
        dnd: s.dnd,
    }
}

/// A user's forwarding rules (empty strings: no rule).
pub fn forwarding(f: &dialtone_domain::forwarding::Forwarding) -> pb::Forwarding {
    let text = |t: Option<&dialtone_domain::forwarding::ForwardTarget>| {
        t.map(ToString::to_string).unwrap_or_default()
    };
    pb::Forwarding {
        always: text(f.always.as_ref()),
        busy: text(f.busy.as_ref()),
        no_answer: text(f.no_answer.as_ref().map(|r| &r.target)),
        no_answer_after_secs: f.no_answer.as_ref().map_or(0, |r| r.after_secs),
        unavailable: text(f.unavailable.as_ref()),
        always_when: when(f.when.always.as_ref()),
        busy_when: when(f.when.busy.as_ref()),
        no_answer_when: when(f.when.no_answer.as_ref()),
        unavailable_when: when(f.when.unavailable.as_ref()),
        follow_me: f.follow_me.as_ref().map(|fm| pb::FollowMe {
            targets: fm.targets.iter().map(ToString::to_string).collect(),
            after_secs: fm.after_secs,
            sequential: fm.sequential,
            ring_secs: fm.ring_secs,
        }),
    }
}

/// A ring group as the API shows it.
pub fn ring_group(info: &dialtone_actors::RingGroupInfo) -> pb::RingGroup {
    pb::RingGroup {
        address: info.address.to_string(),
        version: info.version.unwrap_or_default(),
        ..ring_group_settings(&info.group)
    }
}

/// A ring group's settings (address and version empty: events carry the
/// name beside them).
pub fn ring_group_settings(g: &dialtone_domain::ring_group::RingGroup) -> pb::RingGroup {
    use dialtone_domain::ring_group::Strategy as S;
    pb::RingGroup {
        address: String::new(),
        members: g
            .members
            .iter()
            .map(|m| pb::RingGroupMember {
                user: m.user.to_string(),
                ring_secs: m.ring_secs.unwrap_or(0),
            })
            .collect(),
        strategy: match g.strategy {
            S::Simultaneous => pb::RingStrategy::Simultaneous,
            S::Sequential => pb::RingStrategy::Sequential,
            S::RoundRobin => pb::RingStrategy::RoundRobin,
            S::LongestIdle => pb::RingStrategy::LongestIdle,
        } as i32,
        ring_secs: g.ring_secs,
        timeout_secs: g.timeout_secs,
        skip_busy: g.skip_busy,
        skip_dnd: g.skip_dnd,
        forwarding: Some(forwarding(&g.forwarding)),
        version: 0,
    }
}

/// A conference room as the API shows it.
pub fn conference_room(info: &dialtone_actors::ConferenceRoomInfo) -> pb::ConferenceRoom {
    let guard = &info.pin_guard;
    pb::ConferenceRoom {
        address: info.address.to_string(),
        version: info.version.unwrap_or_default(),
        pin_lockouts: guard
            .callers
            .iter()
            .map(|(caller, strikes)| pb::PinLockout {
                caller: caller.clone(),
                strikes: Some(crate::payload::pin_strikes(strikes)),
            })
            .collect(),
        room_pin_strikes: (guard.room != Default::default())
            .then(|| crate::payload::pin_strikes(&guard.room)),
        ..room_settings(&info.room)
    }
}

/// A room's settings (address and version empty: events carry the name
/// beside them). The PINs are never shown: only whether each is set.
pub fn room_settings(r: &dialtone_domain::conference_room::Room) -> pb::ConferenceRoom {
    pb::ConferenceRoom {
        address: String::new(),
        has_pin: r.pin.is_some(),
        has_moderator_pin: r.moderator_pin.is_some(),
        max_participants: r.max_participants,
        wait_for_moderator: r.wait_for_moderator,
        end_with_moderator: r.end_with_moderator,
        tones: r.tones,
        record: r.record,
        muted_on_entry: r.muted_on_entry,
        version: 0,
        pin_lockouts: Vec::new(),
        room_pin_strikes: None,
    }
}

fn when(c: Option<&dialtone_domain::schedule::TimeCondition>) -> String {
    c.map(ToString::to_string).unwrap_or_default()
}

/// The envelope of a stored event. Data of an older schema version is
/// upgraded to the current one, and secrets (HA1 values) are removed; data
/// that cannot be read is replaced by `{}` rather than shown unredacted.
pub fn envelope(e: &RecordedEvent) -> pb::EventEnvelope {
    envelope_with(e, event::Upcasters::builtin())
}

/// As [`envelope`], upcasting with `upcasters`.
pub fn envelope_with(e: &RecordedEvent, upcasters: &event::Upcasters) -> pb::EventEnvelope {
    subscribed_event(e.clone(), upcasters, true, false)
        .envelope
        .unwrap_or_default()
}

/// The envelope of a stored event with its data as JSON (`json`) and/or as
/// a typed payload (`typed`), both upgraded to the current schema version
/// with `upcasters`. Data that cannot be read gives `{}` and no payload.
/// Takes the event so that its strings move into the message.
pub fn subscribed_event(
    e: RecordedEvent,
    upcasters: &event::Upcasters,
    json: bool,
    typed: bool,
) -> pb::SubscribedEvent {
    let current = upcasters.current_version(&e.event_type);
    let mut payload = None;
    let mut data_json = String::new();
    if e.schema_version >= current && !event::has_secrets(&e.event_type) {
        // Current data without secrets (the common case): decode it once
        // for the payload and show the stored JSON as it is.
        if typed {
            payload = upcasters
                .decode(&e.event_type, e.schema_version, &e.data)
                .ok()
                .map(payload::into_payload);
        }
        if json {
            let valid =
                payload.is_some() || serde_json::from_str::<serde::de::IgnoredAny>(&e.data).is_ok();
            if valid && e.schema_version == current {
                data_json = e.data;
            } else {
                data_json = "{}".to_owned();
            }
        }
    } else {
        let value = serde_json::from_str(&e.data)
            .ok()
            .and_then(|v| upcasters.upcast(&e.event_type, e.schema_version, v).ok());
        if typed {
            payload = value
                .clone()
                .and_then(|v| upcasters.decode_value(&e.event_type, current, v).ok())
                .map(payload::into_payload);
        }
        if json {
            data_json = value
                .map(|v| event::redact_secrets(&e.event_type, v))
                .and_then(|v| serde_json::to_string(&v).ok())
                .unwrap_or_else(|| "{}".to_owned());
        }
    }
    let category = event::category_of(&e.event_type)
        .map(|c| c.as_str().to_owned())
        .unwrap_or_default();
    let envelope = pb::EventEnvelope {
        position: e.position,
        stream: e.stream,
        version: e.version,
        event_id: e.event_id.to_string(),
        schema_version: current.max(e.schema_version),
        r#type: e.event_type,
        occurred_at: timestamp(e.occurred_at_us),
        domain_id: e.domain_id.map(|id| id.to_string()).unwrap_or_default(),
        user_id: e.user_id.map(|id| id.to_string()).unwrap_or_default(),
        node: e.node,
        correlation_id: e.correlation_id.unwrap_or_default(),
        category,
        data_json,
    };
    pb::SubscribedEvent {
        envelope: Some(envelope),
        payload,
    }
}

/// A registered contact as the status API shows it, with the connection
/// it is reached on when the node knows one (`flow`).
pub fn contact(
    b: &dialtone_domain::registration::Binding,
    flow: Option<dialtone_actors::FlowFact>,
) -> pb::Contact {
    pb::Contact {
        nat: b.nat,
        reg_id: b.reg_id.unwrap_or_default(),
        connection_id: flow.map(|f| f.connection).unwrap_or_default(),
        local_address: flow
            .and_then(|f| f.local)
            .map(|a| a.to_string())
            .unwrap_or_default(),
        uri: b.uri.clone(),
        source: b.source.clone(),
        transport: b.transport.clone(),
        user_agent: b.user_agent.clone().unwrap_or_default(),
        registered_at: timestamp(b.registered_at),
        refreshed_at: timestamp(b.refreshed_at),
        expires_at: timestamp(b.expires_at),
        instance: b.instance.clone().unwrap_or_default(),
        call_id: b.call_id.clone(),
        cseq: b.cseq,
        q: b.q.map(u32::from).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use dialtone_domain::mailbox::PinHash;
    use dialtone_domain::{user, Event};
    use dialtone_eventlog::RecordedEvent;
    use uuid::Uuid;

    use super::*;

    fn recorded(event: &Event) -> RecordedEvent {
        RecordedEvent {
            position: 1,
            stream: format!("user-{}", Uuid::nil()),
            version: 0,
            event_id: Uuid::nil(),
            event_type: event.event_type().to_owned(),
            schema_version: 1,
            occurred_at_us: 1,
            domain_id: None,
            user_id: Some(Uuid::nil()),
            node: "n".to_owned(),
            correlation_id: None,
            data: event.to_data().unwrap(),
        }
    }

    /// A mailbox PIN's hash is in the log but never in what the API shows,
    /// neither as JSON nor typed.
    #[test]
    fn a_mailbox_pin_hash_is_never_shown() {
        let pin = PinHash::derive("4321", [9; 16]).unwrap();
        let event = Event::User(user::Event::MailboxPinChanged { pin: pin.clone() });
        let stored = recorded(&event);
        assert!(stored.data.contains(pin.as_str()));
        let shown = subscribed_event(stored, event::Upcasters::builtin(), true, true);
        let envelope = shown.envelope.unwrap();
        assert_eq!(envelope.data_json, "{}");
        assert_eq!(envelope.category, "provisioning");
        assert_eq!(
            shown.payload.unwrap().event,
            Some(pb::event_payload::Event::MailboxPinChanged(
                pb::MailboxPinChanged {}
            ))
        );
    }
}
