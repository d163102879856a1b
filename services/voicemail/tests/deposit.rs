//! Properties of the deposit application: whatever the node feeds in, it
//! never panics, asks for a recording to be saved at most once, and once
//! the caller has hung up asks for nothing but the end of the recording
//! in progress.
use dialtone_domain::mailbox::{AudioId, Greeting, Mailbox, Message, Settings};
use dialtone_voicemail::app::{Action, Input, RecordingEnd, Refusal};
use dialtone_voicemail::deposit::{self, Deposit};
use proptest::prelude::*;

fn audio(n: u8) -> AudioId {
    AudioId::from_random([n; 16])
}

fn arb_input() -> impl Strategy<Value = Input> {
    prop_oneof![
        Just(Input::Answered),
        Just(Input::PlaybackDone),
        prop::sample::select(vec!['0', '1', '5', '9', '*', '#']).prop_map(Input::Dtmf),
        (0u32..200_000, 0u8..4).prop_map(|(duration_ms, end)| Input::RecordingDone {
            duration_ms,
            end: match end {
                0 => RecordingEnd::MaxDuration,
                1 => RecordingEnd::Silence,
                2 => RecordingEnd::Digit('#'),
                _ => RecordingEnd::Stopped,
            },
        }),
        any::<bool>().prop_map(|ok| Input::MailboxUpdated(if ok {
            Ok(Mailbox::default())
        } else {
            Err(Refusal::Unavailable)
        })),
        (0u8..3, any::<bool>()).prop_map(|(n, ok)| Input::AudioReady {
            audio: audio(n),
            ok
        }),
        (0u32..4).prop_map(Input::Timeout),
        Just(Input::HungUp),
    ]
}

fn arb_mailbox() -> impl Strategy<Value = Mailbox> {
    (any::<bool>(), 1u32..4, 0u8..4, any::<bool>()).prop_map(
        |(enabled, max_messages, messages, greeting)| Mailbox {
            enabled,
            settings: Settings {
                max_messages,
                max_message_ms: 30_000,
                ..Settings::default()
            },
            greeting: greeting.then(|| Greeting {
                audio: audio(1),
                duration_ms: 2_000,
            }),
            messages: (0..messages)
                .map(|n| Message {
                    message_id: audio(10 + n),
                    from: "carol@example.com".into(),
                    left_at: 0,
                    duration_ms: 3_000,
                    read: false,
                })
                .collect(),
            ..Mailbox::default()
        },
    )
}

proptest! {
    #[test]
    fn any_inputs_keep_the_deposit_sane(
        mailbox in arb_mailbox(),
        inputs in prop::collection::vec(arb_input(), 0..40),
    ) {
        let mut deposit = Deposit::new(&mailbox, "bob@example.com".into(), deposit::Settings::default());
        let refused = !mailbox.enabled || mailbox.is_full();
        let mut hung_up = false;
        let mut ended_recording = 0;
        let mut hang_ups = 0;
        for input in inputs {
            if input == Input::HungUp {
                hung_up = true;
            }
            for action in deposit.on(input) {
                match &action {
                    Action::SaveMessage { duration_ms, .. } => {
                        prop_assert!(!refused);
                        prop_assert!(*duration_ms >= 1_000);
                        ended_recording += 1;
                    }
                    Action::DiscardRecording => ended_recording += 1,
                    Action::Record { max_duration_ms, .. } => {
                        prop_assert!(!refused);
                        prop_assert_eq!(*max_duration_ms, 30_000);
                    }
                    Action::PlayMessage(_) | Action::LookUpMailbox(_) => {
                        prop_assert!(false, "a deposit asked {:?}", action);
                    }
                    Action::HangUp => hang_ups += 1,
                    _ => {}
                }
                if hung_up {
                    prop_assert!(
                        matches!(
                            action,
                            Action::StopRecording | Action::SaveMessage { .. } | Action::DiscardRecording
                        ),
                        "{:?} after the caller hung up",
                        action
                    );
                }
            }
        }
        prop_assert!(ended_recording <= 1);
        prop_assert!(hang_ups <= 1);
    }
}
