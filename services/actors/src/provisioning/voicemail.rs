//! The voicemail box's use cases: a user's mailbox configured, read and
//! changed through the user's actor, the user found through its domain's
//! claim (as every user use case: a user whose create crashed halfway is
//! not found). Audio is not handled here: the caller stores a greeting's
//! bytes in the blob store before it names them ([`Provisioning::set_greeting`])
//! and deletes a message's bytes after the deletion is durable.
//!
//! What the domain takes from outside is made here, at the actors'
//! boundary: the PIN's random salt and new audio ids.

use dialtone_domain::mailbox::{self, AudioId, Greeting, Mailbox, MessageId, PinHash};
use dialtone_domain::{user, UserId};
use uuid::Uuid;

use super::{Provisioning, UserRef};
use crate::aggregate::{Meta, View};
use crate::Result;

/// A change of a mailbox's settings as a request gives it: `None` keeps a
/// value. The PIN is in clear here and hashed with a fresh salt by
/// [`Provisioning::configure_mailbox`]; it is never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct MailboxChange {
    pub enabled: Option<bool>,
    pub pin: Option<String>,
    pub max_message_ms: Option<u32>,
    pub max_messages: Option<u32>,
    pub pin_from_own_phone: Option<bool>,
    pub unsolicited_mwi: Option<bool>,
}

impl std::fmt::Debug for MailboxChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxChange")
            .field("enabled", &self.enabled)
            .field("pin", &self.pin.as_ref().map(|_| "<redacted>"))
            .field("max_message_ms", &self.max_message_ms)
            .field("max_messages", &self.max_messages)
            .field("pin_from_own_phone", &self.pin_from_own_phone)
            .field("unsolicited_mwi", &self.unsolicited_mwi)
            .finish()
    }
}

/// A user's mailbox, with whose it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserMailbox {
    pub user_id: UserId,
    /// `username@domain`.
    pub address: String,
    pub mailbox: Mailbox,
}

impl UserMailbox {
    fn of(view: View<user::User>) -> Self {
        UserMailbox {
            user_id: view.state.id.unwrap_or(UserId(Uuid::nil())),
            address: view.state.address(),
            mailbox: view.state.mailbox,
        }
    }
}

/// A fresh id for audio about to be stored (a greeting): 16 random bytes
/// (UUID v4).
pub fn new_audio_id() -> AudioId {
    AudioId::from_random(*Uuid::new_v4().as_bytes())
}

impl Provisioning {
    /// Configures the user's mailbox; a new PIN is hashed with a fresh
    /// random salt. A retry with the same request id returns the mailbox
    /// as it is (the actor recognises the request; the second salt is
    /// never used).
    pub async fn configure_mailbox(
        &self,
        user: &UserRef,
        change: MailboxChange,
        meta: Meta,
    ) -> Result<UserMailbox> {
        let pin = change
            .pin
            .as_deref()
            .map(|pin| PinHash::derive(pin, *Uuid::new_v4().as_bytes()))
            .transpose()?;
        let patch = mailbox::Patch {
            enabled: change.enabled,
            max_message_ms: change.max_message_ms,
            max_messages: change.max_messages,
            pin_from_own_phone: change.pin_from_own_phone,
            unsolicited_mwi: change.unsolicited_mwi,
            pin,
        };
        self.mailbox_command(user, mailbox::Command::Configure(patch), meta)
            .await
    }

    /// The user's mailbox (the default one if it was never configured).
    pub async fn get_mailbox(&self, user: &UserRef) -> Result<UserMailbox> {
        Ok(UserMailbox::of(self.get_user(user).await?))
    }

    /// Marks a message read (nothing is written if it is already).
    pub async fn mark_message_read(
        &self,
        user: &UserRef,
        message_id: &MessageId,
        meta: Meta,
    ) -> Result<UserMailbox> {
        let command = mailbox::Command::MarkRead {
            message_id: message_id.clone(),
        };
        self.mailbox_command(user, command, meta).await
    }

    /// Deletes a message from the mailbox (its audio stays in the blob
    /// store: the caller deletes it once this returned).
    pub async fn delete_message(
        &self,
        user: &UserRef,
        message_id: &MessageId,
        meta: Meta,
    ) -> Result<UserMailbox> {
        let command = mailbox::Command::Delete {
            message_id: message_id.clone(),
        };
        self.mailbox_command(user, command, meta).await
    }

    /// Sets the greeting (its audio already stored under `greeting.audio`)
    /// or, with `None`, goes back to the default one.
    pub async fn set_greeting(
        &self,
        user: &UserRef,
        greeting: Option<Greeting>,
        meta: Meta,
    ) -> Result<UserMailbox> {
        self.mailbox_command(user, mailbox::Command::SetGreeting { greeting }, meta)
            .await
    }

    async fn mailbox_command(
        &self,
        user: &UserRef,
        command: mailbox::Command,
        meta: Meta,
    ) -> Result<UserMailbox> {
        let view = self
            .user_command(user, user::Command::Mailbox(command), meta)
            .await?;
        Ok(UserMailbox::of(view))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_never_prints_its_pin_and_audio_ids_are_fresh_and_valid() {
        let change = MailboxChange {
            pin: Some("918273".into()),
            ..MailboxChange::default()
        };
        let shown = format!("{change:?}");
        assert!(!shown.contains("918273"), "{shown}");
        let (a, b) = (new_audio_id(), new_audio_id());
        assert_ne!(a, b);
        assert_eq!(AudioId::parse(a.as_str()).unwrap(), a);
    }
}
