//! Properties of the mailbox menu: whatever the node feeds in, it never
//! panics, never asks to play a message the mailbox it was last told of
//! does not hold, lets nobody near the messages or the greeting before
//! the PIN was accepted (when one is asked), and once the caller has hung
//! up asks for nothing but dropping a greeting being recorded.
use dialtone_domain::mailbox::{AudioId, Command, Mailbox, Message, Settings};
use dialtone_voicemail::app::{Action, Input, RecordingEnd, Refusal};
use dialtone_voicemail::menu::Menu;
use proptest::prelude::*;

fn id(n: u8) -> AudioId {
    AudioId::from_random([n; 16])
}

/// A mailbox holding the messages whose bits are set in `held` (1..=4,
/// those in `read` read).
fn mailbox(held: u8, read: u8, pin_from_own_phone: bool) -> Mailbox {
    Mailbox {
        enabled: true,
        settings: Settings {
            pin_from_own_phone,
            ..Settings::default()
        },
        messages: (1..=4u8)
            .filter(|n| held & (1 << n) != 0)
            .map(|n| Message {
                message_id: id(n),
                from: "bob@example.com".into(),
                left_at: i64::from(n),
                duration_ms: 4_000,
                read: read & (1 << n) != 0,
            })
            .collect(),
        ..Mailbox::default()
    }
}

fn arb_mailbox() -> impl Strategy<Value = Mailbox> {
    (any::<u8>(), any::<u8>()).prop_map(|(held, read)| mailbox(held, read, false))
}

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        1 => Just(Input::Answered),
        6 => Just(Input::PlaybackDone),
        8 => prop::sample::select("0123456789*#A".chars().collect::<Vec<_>>()).prop_map(Input::Dtmf),
        1 => (0u32..90_000).prop_map(|duration_ms| Input::RecordingDone {
            duration_ms,
            end: RecordingEnd::Digit('#'),
        }),
        3 => prop_oneof![
            arb_mailbox().prop_map(Ok),
            Just(Err(Refusal::WrongPin)),
            Just(Err(Refusal::Locked)),
            Just(Err(Refusal::NotFound)),
            Just(Err(Refusal::Unavailable)),
            Just(Err(Refusal::Invalid("pin".into()))),
        ]
        .prop_map(Input::MailboxUpdated),
        3 => (0u8..=5, any::<bool>()).prop_map(|(n, ok)| Input::AudioReady { audio: id(n), ok }),
        2 => (0u32..8).prop_map(Input::Timeout),
        1 => Just(Input::HungUp),
    ]
}

/// Which menu: *97 without PIN, *97 with PIN, *98.
fn arb_menu() -> impl Strategy<Value = (Menu, Option<Mailbox>, bool)> {
    (0u8..3, any::<u8>(), any::<u8>()).prop_map(|(kind, held, read)| match kind {
        0 => {
            let mb = mailbox(held, read, false);
            (Menu::own_phone(mb.clone()), Some(mb), false)
        }
        1 => {
            let mb = mailbox(held, read, true);
            (Menu::own_phone(mb.clone()), Some(mb), true)
        }
        _ => (Menu::any_phone(), None, true),
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_inputs_keep_the_menu_safe(
        (mut menu, initial, pin_asked) in arb_menu(),
        answered_first: bool,
        mut inputs in prop::collection::vec(arb_input(), 0..80),
    ) {
        // Most calls are answered first; the rest try inputs out of order.
        if answered_first {
            inputs.insert(0, Input::Answered);
        }
        // The mailbox as last told to the menu.
        let mut known = initial;
        let mut checking_pin = false;
        let mut pin_accepted = !pin_asked;
        let mut hung_up = false;
        let mut hang_ups = 0;
        for input in inputs {
            match &input {
                Input::HungUp => hung_up = true,
                Input::MailboxUpdated(result) => {
                    if let Ok(mb) = result {
                        known = Some(mb.clone());
                        pin_accepted |= checking_pin;
                    }
                    checking_pin = false;
                }
                _ => {}
            }
            let actions = menu.on(input);
            for action in &actions {
                if hung_up {
                    prop_assert_eq!(action, &Action::DiscardRecording);
                }
                match action {
                    Action::PlayMessage(message_id) => {
                        prop_assert!(pin_accepted, "played before the PIN");
                        let held = known.as_ref().is_some_and(|m| m.message(message_id).is_some());
                        prop_assert!(held, "played {} which the mailbox lacks", message_id);
                    }
                    Action::Mailbox(Command::CheckPin { .. }) => {
                        prop_assert!(pin_asked);
                        checking_pin = true;
                    }
                    Action::Mailbox(_) | Action::Record { .. } | Action::SaveGreeting { .. } => {
                        prop_assert!(pin_accepted, "{:?} before the PIN", action);
                    }
                    Action::SaveMessage { .. } | Action::PlayGreeting(_) => {
                        prop_assert!(false, "the menu asked {:?}", action);
                    }
                    Action::HangUp => hang_ups += 1,
                    _ => {}
                }
            }
            if menu.is_done() {
                prop_assert!(hang_ups == 1 || hung_up);
            }
        }
        prop_assert!(hang_ups <= 1);
        prop_assert!(!menu.is_logged_in() || pin_accepted);
    }
}
