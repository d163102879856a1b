//! Leaving a message: what a caller forwarded to a mailbox hears and does,
//! as a sans-IO state machine ([`Deposit`]) the node drives with
//! [`Input`]s and whose [`Action`]s it executes.
//!
//! The conversation: the mailbox's greeting (the owner's recording, or
//! the default prompt), a beep, then a recording up to the mailbox's
//! `max_message_ms` that ends on `#`, on silence or at the limit; the
//! message is saved and the caller hears "Goodbye". `#` during the
//! greeting skips to the beep, as PBXs do. A caller who hangs up while
//! recording has left a message: it is saved all the same. A recording
//! under [`MIN_MESSAGE_MS`] (a caller who hung up at the beep) is dropped
//! with no event. A full or disabled mailbox is said so, the refusal is
//! recorded (`Command::Refuse`) and the call ends.
//!
//! It must not decide what the mailbox accepts: the domain's `Leave`
//! checks again (a mailbox can fill up during a recording).

use dialtone_domain::mailbox::{AudioId, Command, Mailbox, RefusalReason, MIN_MESSAGE_MS};

use crate::app::{Action, Input, Prompt};

/// Silence that ends a message when no setting says otherwise: long
/// enough for a caller who pauses to think.
pub const DEFAULT_SILENCE_MS: u32 = 5_000;

/// How deposits behave on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Silence that ends a recording (0: only `#`, hang-up or the limit).
    pub silence_ms: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            silence_ms: DEFAULT_SILENCE_MS,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not answered yet.
    Waiting,
    /// Saying the mailbox cannot take a message.
    Refusing,
    Greeting,
    Beep,
    Recording,
    /// The caller hung up while recording: the recording's end decides
    /// whether it is a message.
    HungUpRecording,
    /// The message is being stored; the caller is still on.
    Saving,
    Goodbye,
    Done,
}

/// One caller leaving a message in one mailbox.
#[derive(Debug)]
pub struct Deposit {
    state: State,
    from: String,
    refusal: Option<RefusalReason>,
    greeting: Option<AudioId>,
    max_message_ms: u32,
    silence_ms: u32,
}

impl Deposit {
    /// A deposit into `mailbox` (as it is when the call arrives) by the
    /// caller `from`; nothing happens before [`Input::Answered`].
    pub fn new(mailbox: &Mailbox, from: String, settings: Settings) -> Self {
        // The domain's order: a disabled mailbox is refused as such even
        // when it is also full.
        let refusal = if !mailbox.enabled {
            Some(RefusalReason::MailboxDisabled)
        } else if mailbox.is_full() {
            Some(RefusalReason::MailboxFull)
        } else {
            None
        };
        Self {
            state: State::Waiting,
            from,
            refusal,
            greeting: mailbox.greeting.as_ref().map(|g| g.audio.clone()),
            max_message_ms: mailbox.settings.max_message_ms,
            silence_ms: settings.silence_ms,
        }
    }

    /// Whether the conversation is over (nothing more will be asked).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// What to do about `input`.
    pub fn on(&mut self, input: Input) -> Vec<Action> {
        match (self.state, input) {
            (State::Done, _) => Vec::new(),
            (State::Recording, Input::HungUp) => {
                self.state = State::HungUpRecording;
                vec![Action::StopRecording]
            }
            (State::HungUpRecording, Input::RecordingDone { duration_ms, .. }) => {
                self.state = State::Done;
                vec![self.keep_or_drop(duration_ms)]
            }
            (State::HungUpRecording, _) => Vec::new(),
            (_, Input::HungUp) => {
                // Nothing in progress to keep: a message being saved is the
                // node's to finish, a refusal was recorded when it was said.
                self.state = State::Done;
                Vec::new()
            }
            (State::Waiting, Input::Answered) => self.answer(),
            (State::Refusing, Input::PlaybackDone) => self.hang_up(),
            (State::Greeting, Input::AudioReady { audio, ok: false })
                if Some(&audio) == self.greeting.as_ref() =>
            {
                // The owner's greeting cannot be read: the caller still
                // hears that they can leave a message.
                vec![Action::Play(vec![Prompt::GreetingDefault])]
            }
            (State::Greeting, Input::Dtmf('#')) => {
                self.state = State::Beep;
                vec![Action::StopPlayback, Action::Play(vec![Prompt::Beep])]
            }
            (State::Greeting, Input::PlaybackDone) => {
                self.state = State::Beep;
                vec![Action::Play(vec![Prompt::Beep])]
            }
            (State::Beep, Input::PlaybackDone) => {
                self.state = State::Recording;
                vec![Action::Record {
                    max_duration_ms: self.max_message_ms,
                    silence_ms: self.silence_ms,
                    stop_digits: "#",
                }]
            }
            (State::Recording, Input::RecordingDone { duration_ms, .. }) => {
                // `#`, silence and the limit all end the message the same
                // way: it is kept if long enough, and the caller is let go.
                let action = self.keep_or_drop(duration_ms);
                if action == Action::DiscardRecording {
                    self.state = State::Done;
                    vec![action, Action::HangUp]
                } else {
                    self.state = State::Saving;
                    vec![action]
                }
            }
            (State::Saving, Input::MailboxUpdated(_)) => {
                // Refused or not, the message is out of the caller's hands:
                // there is nothing they could do about a failed save.
                self.state = State::Goodbye;
                vec![Action::Play(vec![Prompt::Goodbye])]
            }
            (State::Goodbye, Input::PlaybackDone) => self.hang_up(),
            _ => Vec::new(),
        }
    }

    fn answer(&mut self) -> Vec<Action> {
        if let Some(reason) = self.refusal {
            self.state = State::Refusing;
            return vec![
                Action::Play(vec![Prompt::MailboxFull]),
                Action::Mailbox(Command::Refuse {
                    from: self.from.clone(),
                    reason,
                }),
            ];
        }
        self.state = State::Greeting;
        vec![match &self.greeting {
            Some(audio) => Action::PlayGreeting(audio.clone()),
            None => Action::Play(vec![Prompt::GreetingDefault]),
        }]
    }

    fn keep_or_drop(&self, duration_ms: u32) -> Action {
        if duration_ms < MIN_MESSAGE_MS {
            Action::DiscardRecording
        } else {
            Action::SaveMessage {
                from: self.from.clone(),
                duration_ms,
            }
        }
    }

    fn hang_up(&mut self) -> Vec<Action> {
        self.state = State::Done;
        vec![Action::HangUp]
    }
}

#[cfg(test)]
mod tests {
    use dialtone_domain::mailbox::{apply, decide, Greeting, Patch, PinHash};

    use super::*;
    use crate::app::{RecordingEnd, Refusal};

    const FROM: &str = "bob@example.com";

    fn mailbox() -> Mailbox {
        let mut mailbox = Mailbox::default();
        let command = Command::Configure(Patch {
            enabled: Some(true),
            max_message_ms: Some(60_000),
            max_messages: Some(2),
            pin: Some(PinHash::derive("4321", [7; 16]).unwrap()),
            ..Patch::default()
        });
        for event in decide(&mailbox, &command, 0).unwrap() {
            apply(&mut mailbox, &event);
        }
        mailbox
    }

    fn leave(mailbox: &mut Mailbox, n: u8) {
        let command = Command::Leave {
            message_id: AudioId::from_random([n; 16]),
            from: FROM.into(),
            duration_ms: 4_000,
        };
        for event in decide(mailbox, &command, 0).unwrap() {
            apply(mailbox, &event);
        }
    }

    fn deposit(mailbox: &Mailbox) -> Deposit {
        Deposit::new(mailbox, FROM.into(), Settings::default())
    }

    /// Runs `steps` (input, the actions expected) and checks each.
    fn script(deposit: &mut Deposit, steps: Vec<(Input, Vec<Action>)>) {
        for (n, (input, expected)) in steps.into_iter().enumerate() {
            let shown = format!("{input:?}");
            assert_eq!(deposit.on(input), expected, "step {n}: {shown}");
        }
    }

    fn record_60s() -> Action {
        Action::Record {
            max_duration_ms: 60_000,
            silence_ms: 5_000,
            stop_digits: "#",
        }
    }

    fn done(duration_ms: u32, end: RecordingEnd) -> Input {
        Input::RecordingDone { duration_ms, end }
    }

    fn save(duration_ms: u32) -> Action {
        Action::SaveMessage {
            from: FROM.into(),
            duration_ms,
        }
    }

    fn play(prompts: &[Prompt]) -> Action {
        Action::Play(prompts.to_vec())
    }

    #[test]
    fn a_caller_leaves_a_message_ended_by_silence() {
        let mailbox = mailbox();
        let mut d = deposit(&mailbox);
        script(
            &mut d,
            vec![
                (Input::Answered, vec![play(&[Prompt::GreetingDefault])]),
                (Input::Dtmf('5'), vec![]),
                (Input::PlaybackDone, vec![play(&[Prompt::Beep])]),
                (Input::PlaybackDone, vec![record_60s()]),
                (done(12_340, RecordingEnd::Silence), vec![save(12_340)]),
                (
                    Input::MailboxUpdated(Ok(mailbox.clone())),
                    vec![play(&[Prompt::Goodbye])],
                ),
                (Input::PlaybackDone, vec![Action::HangUp]),
                (Input::HungUp, vec![]),
            ],
        );
        assert!(d.is_done());
    }

    #[test]
    fn pound_skips_the_owners_greeting_and_ends_the_message() {
        let mut mailbox = mailbox();
        let audio = AudioId::from_random([9; 16]);
        mailbox.greeting = Some(Greeting {
            audio: audio.clone(),
            duration_ms: 3_000,
        });
        let mut d = deposit(&mailbox);
        script(
            &mut d,
            vec![
                (Input::Answered, vec![Action::PlayGreeting(audio.clone())]),
                (Input::AudioReady { audio, ok: true }, vec![]),
                (
                    Input::Dtmf('#'),
                    vec![Action::StopPlayback, play(&[Prompt::Beep])],
                ),
                // A second # at the beep is not a message's end yet.
                (Input::Dtmf('#'), vec![]),
                (Input::PlaybackDone, vec![record_60s()]),
                (Input::Dtmf('#'), vec![]),
                (done(2_000, RecordingEnd::Digit('#')), vec![save(2_000)]),
                (
                    Input::MailboxUpdated(Err(Refusal::Unavailable)),
                    vec![play(&[Prompt::Goodbye])],
                ),
                (Input::PlaybackDone, vec![Action::HangUp]),
            ],
        );
        assert!(d.is_done());
    }

    #[test]
    fn an_unreadable_greeting_falls_back_to_the_default() {
        let mut mailbox = mailbox();
        let audio = AudioId::from_random([9; 16]);
        mailbox.greeting = Some(Greeting {
            audio: audio.clone(),
            duration_ms: 3_000,
        });
        let mut d = deposit(&mailbox);
        script(
            &mut d,
            vec![
                (Input::Answered, vec![Action::PlayGreeting(audio.clone())]),
                // Another audio's failure is not ours.
                (
                    Input::AudioReady {
                        audio: AudioId::from_random([8; 16]),
                        ok: false,
                    },
                    vec![],
                ),
                (
                    Input::AudioReady { audio, ok: false },
                    vec![play(&[Prompt::GreetingDefault])],
                ),
                (Input::PlaybackDone, vec![play(&[Prompt::Beep])]),
            ],
        );
    }

    #[test]
    fn hanging_up_while_recording_leaves_the_message() {
        let mailbox = mailbox();
        let mut d = deposit(&mailbox);
        script(
            &mut d,
            vec![
                (Input::Answered, vec![play(&[Prompt::GreetingDefault])]),
                (Input::PlaybackDone, vec![play(&[Prompt::Beep])]),
                (Input::PlaybackDone, vec![record_60s()]),
                (Input::HungUp, vec![Action::StopRecording]),
                (Input::Dtmf('1'), vec![]),
                (done(8_000, RecordingEnd::Stopped), vec![save(8_000)]),
                (Input::MailboxUpdated(Ok(mailbox.clone())), vec![]),
                (Input::PlaybackDone, vec![]),
            ],
        );
        assert!(d.is_done());
    }

    #[test]
    fn a_recording_under_a_second_is_no_message() {
        let mut d = deposit(&mailbox());
        script(
            &mut d,
            vec![
                (Input::Answered, vec![play(&[Prompt::GreetingDefault])]),
                (Input::PlaybackDone, vec![play(&[Prompt::Beep])]),
                (Input::PlaybackDone, vec![record_60s()]),
                (
                    done(MIN_MESSAGE_MS - 1, RecordingEnd::Digit('#')),
                    vec![Action::DiscardRecording, Action::HangUp],
                ),
            ],
        );
        assert!(d.is_done());
        // Hung up at the beep: dropped too, and no hang-up of ours.
        let mut d = deposit(&mailbox());
        script(
            &mut d,
            vec![
                (Input::Answered, vec![play(&[Prompt::GreetingDefault])]),
                (Input::PlaybackDone, vec![play(&[Prompt::Beep])]),
                (Input::PlaybackDone, vec![record_60s()]),
                (Input::HungUp, vec![Action::StopRecording]),
                (
                    done(300, RecordingEnd::Stopped),
                    vec![Action::DiscardRecording],
                ),
            ],
        );
        assert!(d.is_done());
    }

    #[test]
    fn the_limit_ends_and_keeps_the_message() {
        let mailbox = mailbox();
        let mut d = deposit(&mailbox);
        script(
            &mut d,
            vec![
                (Input::Answered, vec![play(&[Prompt::GreetingDefault])]),
                (Input::PlaybackDone, vec![play(&[Prompt::Beep])]),
                (Input::PlaybackDone, vec![record_60s()]),
                (done(60_000, RecordingEnd::MaxDuration), vec![save(60_000)]),
                (
                    Input::MailboxUpdated(Ok(mailbox.clone())),
                    vec![play(&[Prompt::Goodbye])],
                ),
                (Input::PlaybackDone, vec![Action::HangUp]),
            ],
        );
    }

    #[test]
    fn the_silence_setting_is_passed_on() {
        let mailbox = mailbox();
        let mut d = Deposit::new(&mailbox, FROM.into(), Settings { silence_ms: 0 });
        d.on(Input::Answered);
        d.on(Input::PlaybackDone);
        assert_eq!(
            d.on(Input::PlaybackDone),
            vec![Action::Record {
                max_duration_ms: 60_000,
                silence_ms: 0,
                stop_digits: "#",
            }]
        );
    }

    #[test]
    fn a_full_mailbox_is_said_recorded_and_hung_up() {
        let mut mailbox = mailbox();
        leave(&mut mailbox, 1);
        leave(&mut mailbox, 2);
        assert!(mailbox.is_full());
        let mut d = deposit(&mailbox);
        script(
            &mut d,
            vec![
                (
                    Input::Answered,
                    vec![
                        play(&[Prompt::MailboxFull]),
                        Action::Mailbox(Command::Refuse {
                            from: FROM.into(),
                            reason: RefusalReason::MailboxFull,
                        }),
                    ],
                ),
                (Input::Dtmf('#'), vec![]),
                (Input::MailboxUpdated(Ok(mailbox.clone())), vec![]),
                (Input::PlaybackDone, vec![Action::HangUp]),
                (Input::HungUp, vec![]),
            ],
        );
        assert!(d.is_done());
    }

    #[test]
    fn a_disabled_mailbox_is_refused_as_disabled_even_when_full() {
        let mut mailbox = mailbox();
        leave(&mut mailbox, 1);
        leave(&mut mailbox, 2);
        mailbox.enabled = false;
        let mut d = deposit(&mailbox);
        assert_eq!(
            d.on(Input::Answered),
            vec![
                play(&[Prompt::MailboxFull]),
                Action::Mailbox(Command::Refuse {
                    from: FROM.into(),
                    reason: RefusalReason::MailboxDisabled,
                }),
            ]
        );
        assert_eq!(d.on(Input::PlaybackDone), vec![Action::HangUp]);
    }

    #[test]
    fn a_caller_gone_before_the_answer_leaves_nothing() {
        let mut mailbox = mailbox();
        leave(&mut mailbox, 1);
        leave(&mut mailbox, 2);
        let mut d = deposit(&mailbox);
        assert_eq!(d.on(Input::HungUp), vec![]);
        assert_eq!(d.on(Input::Answered), vec![]);
        assert!(d.is_done());
    }
}
