//! The conference rooms' use cases: a room is domain state (ADR 0025), so
//! each is one command to, or one query of, the room's domain actor.
//!
//! What the domain takes from outside is made here, at the actors'
//! boundary: the PINs' random salts. A PIN is checked as typed (digits,
//! 4 to 12, the field named) before it is hashed, and is never printed.

use dialtone_domain::conference_room::{check_pin, Room, RoomPatch};
use dialtone_domain::domain;
use dialtone_domain::mailbox::PinHash;
use dialtone_domain::names::UserAddress;
use dialtone_domain::{DomainId, Error as DomainError};
use uuid::Uuid;

use super::{not_found_domain, DomainRef, Provisioning};
use crate::aggregate::Meta;
use crate::{Error, Result};

/// A change of a room's settings as a request gives it: `None` keeps a
/// value (or takes its default, for a new room). A PIN is in clear here:
/// `Some("")` removes it, anything else must be 4 to 12 digits.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RoomChange {
    pub pin: Option<String>,
    pub moderator_pin: Option<String>,
    pub max_participants: Option<u32>,
    pub wait_for_moderator: Option<bool>,
    pub end_with_moderator: Option<bool>,
    pub tones: Option<bool>,
    pub record: Option<bool>,
    pub muted_on_entry: Option<bool>,
}

impl std::fmt::Debug for RoomChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pin = |p: &Option<String>| p.as_ref().map(|_| "<redacted>");
        f.debug_struct("RoomChange")
            .field("pin", &pin(&self.pin))
            .field("moderator_pin", &pin(&self.moderator_pin))
            .field("max_participants", &self.max_participants)
            .field("wait_for_moderator", &self.wait_for_moderator)
            .field("end_with_moderator", &self.end_with_moderator)
            .field("tones", &self.tones)
            .field("record", &self.record)
            .field("muted_on_entry", &self.muted_on_entry)
            .finish()
    }
}

/// A conference room and the version of its domain's stream when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConferenceRoomInfo {
    pub address: UserAddress,
    pub room: Room,
    /// The domain stream's version (`None`: empty stream).
    pub version: Option<u64>,
}

/// A PIN as a patch takes it: `None` keeps it, `""` removes it, digits are
/// checked (naming `field`) and hashed with a fresh random salt.
fn hashed_pin(field: &'static str, pin: Option<&str>) -> Result<Option<Option<PinHash>>> {
    match pin.map(str::trim) {
        None => Ok(None),
        Some("") => Ok(Some(None)),
        Some(pin) => {
            check_pin(field, pin)?;
            Ok(Some(Some(PinHash::derive(
                pin,
                *Uuid::new_v4().as_bytes(),
            )?)))
        }
    }
}

impl Provisioning {
    /// Creates the room `address` (a name of its domain no user, group or
    /// room holds); settings not given take their defaults.
    pub async fn create_conference_room(
        &self,
        address: &UserAddress,
        change: RoomChange,
        meta: Meta,
    ) -> Result<ConferenceRoomInfo> {
        let patch = self.room_patch(None, &change)?;
        let command = domain::Command::CreateConferenceRoom {
            name: address.username.clone(),
            patch,
        };
        self.room_command(address, command, meta).await
    }

    /// Changes some settings of the room `address`.
    pub async fn update_conference_room(
        &self,
        address: &UserAddress,
        change: RoomChange,
        meta: Meta,
    ) -> Result<ConferenceRoomInfo> {
        let current = self.get_conference_room(address).await?;
        let patch = self.room_patch(Some(&current.room), &change)?;
        let command = domain::Command::UpdateConferenceRoom {
            name: address.username.clone(),
            patch,
        };
        self.room_command(address, command, meta).await
    }

    /// Deletes the room `address`; what it was.
    pub async fn delete_conference_room(
        &self,
        address: &UserAddress,
        meta: Meta,
    ) -> Result<ConferenceRoomInfo> {
        let before = self.get_conference_room(address).await?;
        let command = domain::Command::DeleteConferenceRoom {
            name: address.username.clone(),
        };
        let version = self
            .directory
            .execute_domain(DomainId::for_name(&address.domain), command, meta, |r| {
                r.version
            })
            .await?;
        Ok(ConferenceRoomInfo { version, ..before })
    }

    pub async fn get_conference_room(&self, address: &UserAddress) -> Result<ConferenceRoomInfo> {
        let name = address.username.clone();
        let found = self
            .directory
            .query_domain(DomainId::for_name(&address.domain), move |r| {
                r.state.exists().then(|| {
                    r.state
                        .conference_rooms
                        .get(&name)
                        .cloned()
                        .map(|room| (room, r.version))
                })
            })
            .await?;
        match found {
            None => Err(Error::Domain(DomainError::NotFound(format!(
                "domain {}",
                address.domain
            )))),
            Some(None) => Err(not_found_room(address)),
            Some(Some((room, version))) => Ok(ConferenceRoomInfo {
                address: address.clone(),
                room,
                version,
            }),
        }
    }

    /// The conference rooms of a domain, by name.
    pub async fn list_conference_rooms(
        &self,
        domain: &DomainRef,
    ) -> Result<Vec<ConferenceRoomInfo>> {
        let found = self
            .directory
            .query_domain(domain.id(), |r| {
                let name = r.state.name.clone()?;
                r.state.exists().then(|| {
                    r.state
                        .conference_rooms
                        .iter()
                        .map(|(n, room)| ConferenceRoomInfo {
                            address: UserAddress {
                                username: n.clone(),
                                domain: name.clone(),
                            },
                            room: room.clone(),
                            version: r.version,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .await?;
        found.ok_or_else(|| not_found_domain(domain))
    }

    /// The patch of `change`: PINs checked and hashed; a moderator PIN
    /// equal to the participant PIN (given now, or kept from `current`)
    /// is refused, since it would make every participant a moderator.
    fn room_patch(&self, current: Option<&Room>, change: &RoomChange) -> Result<RoomPatch> {
        let pin = hashed_pin("pin", change.pin.as_deref())?;
        let moderator_pin = hashed_pin("moderator_pin", change.moderator_pin.as_deref())?;
        let same = match (clear(&change.pin), clear(&change.moderator_pin)) {
            (Some(p), Some(m)) => p == m,
            (Some(p), None) if change.moderator_pin.is_none() => current
                .and_then(|r| r.moderator_pin.as_ref())
                .is_some_and(|h| h.matches(p)),
            (None, Some(m)) if change.pin.is_none() => current
                .and_then(|r| r.pin.as_ref())
                .is_some_and(|h| h.matches(m)),
            _ => false,
        };
        if same {
            return Err(Error::Domain(DomainError::Invalid {
                field: "moderator_pin",
                reason: "must differ from the participant PIN".into(),
            }));
        }
        Ok(RoomPatch {
            pin,
            moderator_pin,
            max_participants: change.max_participants,
            wait_for_moderator: change.wait_for_moderator,
            end_with_moderator: change.end_with_moderator,
            tones: change.tones,
            record: change.record,
            muted_on_entry: change.muted_on_entry,
        })
    }

    async fn room_command(
        &self,
        address: &UserAddress,
        command: domain::Command,
        meta: Meta,
    ) -> Result<ConferenceRoomInfo> {
        let name = address.username.clone();
        let found = self
            .directory
            .execute_domain(
                DomainId::for_name(&address.domain),
                command,
                meta,
                move |r| {
                    r.state
                        .conference_rooms
                        .get(&name)
                        .cloned()
                        .map(|room| (room, r.version))
                },
            )
            .await?;
        let (room, version) = found.ok_or_else(|| not_found_room(address))?;
        Ok(ConferenceRoomInfo {
            address: address.clone(),
            room,
            version,
        })
    }
}

/// A PIN given and not empty (not a removal), trimmed.
fn clear(pin: &Option<String>) -> Option<&str> {
    pin.as_deref().map(str::trim).filter(|p| !p.is_empty())
}

fn not_found_room(address: &UserAddress) -> Error {
    Error::Domain(DomainError::NotFound(format!("conference room {address}")))
}
