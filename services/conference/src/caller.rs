//! One call to a conference room, sans-IO: from the answer to the
//! hang-up, what the caller hears and what the node must do.
//!
//! # The conversation
//! 1. **PIN.** A room with a PIN (participant or moderator) asks for it:
//!    digits then `#` (or [`PIN_TIMEOUT_MS`] without a key), `*` starts
//!    over. The moderator PIN makes a moderator, the participant PIN a
//!    participant; in a room with only a moderator PIN, an empty entry
//!    (`#` alone) joins as a participant. [`MAX_PIN_TRIES`] wrong entries:
//!    the caller is told, turned away (`wrong_pin`) and hung up on.
//! 2. **Join.** [`Action::Join`] asks the node to record the join on the
//!    conference's aggregate; [`Input::Joined`] or [`Input::Refused`]
//!    answers. A full or locked conference is told, turned away
//!    (`room_full`, `room_locked`) and hung up on.
//! 3. **Waiting.** A participant of a room that waits for a moderator,
//!    with none in it, hears a prompt then hold audio, again and again,
//!    until [`Input::ModeratorArrived`]. It is in the conference (the
//!    aggregate counts it) but neither hears the room nor is heard.
//! 4. **In the room** ([`Action::EnterRoom`]): the join tone to the
//!    caller and a short tone to the others (room setting `tones`). Keys:
//!    `*6` mutes or unmutes oneself (anyone), `*1` locks or unlocks, `*2`
//!    starts or stops the recording, `*3` mutes every participant who is
//!    not a moderator (moderators only; a participant is told so). Each is
//!    [`Action::Moderate`], answered by [`Input::Moderated`], and
//!    confirmed by a prompt.
//!
//! # The node's side of the contract
//! - Prompts are played to the caller alone, after what is queued for it;
//!   one [`Input::PlaybackDone`] comes when its queue has played out
//!   ([`Action::StopPlayback`] empties it; the node swallows the report
//!   of what it stopped).
//! - One timer per call; [`Input::Timeout`] carries the id of
//!   [`Action::StartTimer`], so that a stale one is ignored.
//! - The caller hanging up is [`Input::HungUp`]: the node records the
//!   leave (if it joined) itself; the call is then done.

use dialtone_domain::conference::LeaveReason;
use dialtone_domain::mailbox::PinHash;

use crate::prompts::{Prompt, Tone};

/// Wrong PIN entries before the caller is turned away.
pub const MAX_PIN_TRIES: u32 = 3;

/// No key for this long ends a PIN entry (as `#` would).
pub const PIN_TIMEOUT_MS: u32 = 10_000;

/// Digits kept of a PIN entry: a PIN is at most 12 digits; more are
/// wrong anyway, and are not kept.
const MAX_PIN_ENTRY: usize = 16;

/// What a call needs of its room's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    pub pin: Option<PinHash>,
    pub moderator_pin: Option<PinHash>,
    pub wait_for_moderator: bool,
    pub tones: bool,
    /// Each PIN entered (some digits) is checked against the room's
    /// lock-out across calls ([`Action::CheckPin`]) before it counts:
    /// the node's rooms do; `false` decides on the hashes alone.
    pub pin_lockout: bool,
}

impl Settings {
    /// The settings of a room.
    pub fn of(room: &dialtone_domain::conference_room::Room) -> Settings {
        Settings {
            pin: room.pin.clone(),
            moderator_pin: room.moderator_pin.clone(),
            wait_for_moderator: room.wait_for_moderator,
            tones: room.tones,
            pin_lockout: true,
        }
    }
}

/// What a key in the room asks the conference to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `*6`: mute oneself if unmuted, else unmute.
    ToggleMuteSelf,
    /// `*1`: lock if unlocked, else unlock.
    ToggleLock,
    /// `*2`: start recording if not recording, else stop.
    ToggleRecording,
    /// `*3`: mute every participant who is not a moderator.
    MuteAll,
}

/// What an [`Op`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Muted,
    Unmuted,
    Locked,
    Unlocked,
    RecordingStarted,
    RecordingStopped,
    AllMuted,
}

impl Outcome {
    /// The confirmation the caller hears.
    pub fn prompt(self) -> Prompt {
        match self {
            Outcome::Muted => Prompt::Muted,
            Outcome::Unmuted => Prompt::Unmuted,
            Outcome::Locked => Prompt::Locked,
            Outcome::Unlocked => Prompt::Unlocked,
            Outcome::RecordingStarted => Prompt::RecordingStarted,
            Outcome::RecordingStopped => Prompt::RecordingStopped,
            Outcome::AllMuted => Prompt::AllMuted,
        }
    }
}

/// Why the conference did not take the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Full,
    Locked,
    /// The node could not record the join (its log or actor failing).
    Unavailable,
}

/// The room's lock-out on a PIN entered ([`Action::CheckPin`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinVerdict {
    /// The right PIN, and the caller is not locked out.
    Accepted,
    /// A wrong PIN, counted; the caller may try again (up to
    /// [`MAX_PIN_TRIES`] this call).
    Rejected,
    /// The caller is locked out (by this wrong PIN or before it): told so,
    /// turned away.
    LockedOut,
    /// The lock-out could not be checked (the log failing).
    Unavailable,
}

/// What happened on the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// The caller hears us (the ACK arrived).
    Answered,
    Dtmf(char),
    PlaybackDone,
    Timeout(u32),
    /// The join is recorded: as a moderator or not, muted on entry or
    /// not, and whether a moderator is in the conference now.
    Joined {
        moderator: bool,
        muted: bool,
        moderator_present: bool,
    },
    /// The join was refused.
    Refused(Refusal),
    /// A moderator joined while this caller waited.
    ModeratorArrived,
    /// The answer to [`Action::CheckPin`].
    PinChecked(PinVerdict),
    /// The answer to [`Action::Moderate`]: what it did, or `None` when it
    /// could not be done.
    Moderated(Option<Outcome>),
    /// Someone else (a moderator's `*3`, an operator) muted (`true`) or
    /// unmuted this caller.
    MutedByOthers(bool),
    /// The caller hung up, or its media stopped.
    HungUp,
}

/// What the node is asked to do for this call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Queue these prompts for the caller alone.
    Play(Vec<Prompt>),
    /// Queue this tone for the caller alone.
    PlayTone(Tone),
    /// Play this tone to everyone in the room.
    PlayToRoom(Tone),
    /// Empty the caller's queue.
    StopPlayback,
    /// Record the join on the conference; [`Input::Joined`] or
    /// [`Input::Refused`] answers.
    Join {
        moderator: bool,
    },
    /// Record a PIN entered (right or wrong) against the room's lock-out
    /// across calls; [`Input::PinChecked`] answers.
    CheckPin {
        right: bool,
    },
    /// The caller hears the room, and is heard unless muted.
    EnterRoom,
    /// Record the caller as turned away for this reason (it never
    /// joined).
    TurnAway(LeaveReason),
    /// Run this operation on the conference; [`Input::Moderated`] answers.
    Moderate(Op),
    StartTimer {
        id: u32,
        duration_ms: u32,
    },
    /// End the call (BYE).
    HangUp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Before the ACK.
    Answering,
    Pin {
        digits: String,
        tries: u32,
    },
    /// Waiting for [`Input::PinChecked`]: `moderator` is what a right PIN
    /// makes of the caller.
    PinCheck {
        tries: u32,
        moderator: bool,
    },
    Joining,
    Waiting,
    InRoom {
        star: bool,
        busy: bool,
    },
    /// Telling the caller why it is hung up on.
    Leaving,
    Done,
}

/// One call to a room.
#[derive(Debug)]
pub struct Caller {
    settings: Settings,
    state: State,
    moderator: bool,
    timer_id: u32,
    timer: Option<u32>,
}

impl Caller {
    pub fn new(settings: Settings) -> Caller {
        Caller {
            settings,
            state: State::Answering,
            moderator: false,
            timer_id: 0,
            timer: None,
        }
    }

    /// Whether the call is over (hung up, or about to be).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the caller is in the room (hears it, is heard).
    pub fn is_in_room(&self) -> bool {
        matches!(self.state, State::InRoom { .. })
    }

    /// Whether the caller waits for a moderator.
    pub fn is_waiting(&self) -> bool {
        self.state == State::Waiting
    }

    /// Whether the caller joined as a moderator.
    pub fn is_moderator(&self) -> bool {
        self.moderator
    }

    fn start_timer(&mut self, duration_ms: u32) -> Action {
        self.timer_id = self.timer_id.wrapping_add(1);
        self.timer = Some(self.timer_id);
        Action::StartTimer {
            id: self.timer_id,
            duration_ms,
        }
    }

    pub fn on(&mut self, input: Input) -> Vec<Action> {
        if input == Input::HungUp {
            self.state = State::Done;
            return vec![];
        }
        match (&mut self.state, input) {
            (State::Answering, Input::Answered) => {
                if self.settings.pin.is_some() || self.settings.moderator_pin.is_some() {
                    self.state = State::Pin {
                        digits: String::new(),
                        tries: 0,
                    };
                    vec![
                        Action::Play(vec![Prompt::EnterPin]),
                        self.start_timer(PIN_TIMEOUT_MS),
                    ]
                } else {
                    self.state = State::Joining;
                    vec![Action::Join { moderator: false }]
                }
            }
            (State::Pin { digits, .. }, Input::Dtmf(digit)) => match digit {
                '0'..='9' => {
                    if digits.len() < MAX_PIN_ENTRY {
                        digits.push(digit);
                    }
                    let stop = if digits.len() == 1 {
                        // The caller is typing: the prompt can stop.
                        Some(Action::StopPlayback)
                    } else {
                        None
                    };
                    stop.into_iter()
                        .chain([self.start_timer(PIN_TIMEOUT_MS)])
                        .collect()
                }
                '*' => {
                    digits.clear();
                    vec![self.start_timer(PIN_TIMEOUT_MS)]
                }
                '#' => self.submit_pin(),
                _ => vec![],
            },
            (State::Pin { .. }, Input::Timeout(id)) if self.timer == Some(id) => {
                self.timer = None;
                self.submit_pin()
            }
            (State::PinCheck { tries, moderator }, Input::PinChecked(verdict)) => {
                let (tries, moderator) = (*tries, *moderator);
                match verdict {
                    PinVerdict::Accepted => {
                        self.state = State::Joining;
                        vec![Action::Join { moderator }]
                    }
                    PinVerdict::Rejected => self.wrong_pin(tries),
                    PinVerdict::LockedOut => {
                        self.state = State::Leaving;
                        vec![
                            Action::Play(vec![Prompt::PinLockedOut]),
                            Action::TurnAway(LeaveReason::WrongPin),
                        ]
                    }
                    PinVerdict::Unavailable => {
                        self.state = State::Leaving;
                        vec![Action::Play(vec![Prompt::NotAvailable])]
                    }
                }
            }
            (
                State::Joining,
                Input::Joined {
                    moderator: joined_as,
                    muted,
                    moderator_present,
                },
            ) => {
                self.moderator = joined_as;
                if self.settings.wait_for_moderator && !joined_as && !moderator_present {
                    self.state = State::Waiting;
                    vec![
                        Action::Play(vec![Prompt::WaitingForModerator]),
                        Action::PlayTone(Tone::Hold),
                    ]
                } else {
                    self.enter(muted)
                }
            }
            (State::Joining, Input::Refused(refusal)) => {
                let (prompt, reason) = match refusal {
                    Refusal::Full => (Prompt::RoomFull, Some(LeaveReason::RoomFull)),
                    Refusal::Locked => (Prompt::RoomLocked, Some(LeaveReason::RoomLocked)),
                    Refusal::Unavailable => (Prompt::NotAvailable, None),
                };
                self.state = State::Leaving;
                let mut actions = vec![Action::Play(vec![prompt])];
                actions.extend(reason.map(Action::TurnAway));
                actions
            }
            (State::Waiting, Input::PlaybackDone) => vec![Action::PlayTone(Tone::Hold)],
            (State::Waiting, Input::ModeratorArrived) => {
                let mut actions = vec![Action::StopPlayback];
                actions.extend(self.enter(false));
                actions
            }
            (State::InRoom { star, busy }, Input::Dtmf(digit)) => {
                if digit == '*' {
                    *star = true;
                    return vec![];
                }
                if !std::mem::take(star) || *busy {
                    return vec![];
                }
                let op = match digit {
                    '6' => Op::ToggleMuteSelf,
                    '1' => Op::ToggleLock,
                    '2' => Op::ToggleRecording,
                    '3' => Op::MuteAll,
                    _ => return vec![],
                };
                if op != Op::ToggleMuteSelf && !self.moderator {
                    return vec![Action::Play(vec![Prompt::ModeratorsOnly])];
                }
                *busy = true;
                vec![Action::Moderate(op)]
            }
            (State::InRoom { busy, .. }, Input::Moderated(outcome)) => {
                *busy = false;
                vec![Action::Play(vec![
                    outcome.map_or(Prompt::NotAvailable, Outcome::prompt)
                ])]
            }
            (State::InRoom { .. } | State::Waiting, Input::MutedByOthers(muted)) => {
                vec![Action::Play(vec![if muted {
                    Prompt::Muted
                } else {
                    Prompt::Unmuted
                }])]
            }
            (State::Leaving, Input::PlaybackDone) => {
                self.state = State::Done;
                vec![Action::HangUp]
            }
            _ => vec![],
        }
    }

    fn submit_pin(&mut self) -> Vec<Action> {
        let State::Pin { digits, tries } = &mut self.state else {
            return vec![];
        };
        let entered = std::mem::take(digits);
        let moderator = self
            .settings
            .moderator_pin
            .as_ref()
            .is_some_and(|pin| !entered.is_empty() && pin.matches(&entered));
        let participant = match &self.settings.pin {
            Some(pin) => !entered.is_empty() && pin.matches(&entered),
            None => entered.is_empty(),
        };
        let tries = *tries;
        if self.settings.pin_lockout && !entered.is_empty() {
            // Counted (or refused) across calls before it counts here.
            self.timer = None;
            self.state = State::PinCheck { tries, moderator };
            return vec![
                Action::StopPlayback,
                Action::CheckPin {
                    right: moderator || participant,
                },
            ];
        }
        if moderator || participant {
            self.timer = None;
            self.state = State::Joining;
            return vec![Action::StopPlayback, Action::Join { moderator }];
        }
        self.wrong_pin(tries)
    }

    /// A wrong entry, the caller's `tries`th before it: told and asked
    /// again, or turned away after [`MAX_PIN_TRIES`].
    fn wrong_pin(&mut self, tries: u32) -> Vec<Action> {
        let tries = tries + 1;
        if tries >= MAX_PIN_TRIES {
            self.timer = None;
            self.state = State::Leaving;
            return vec![
                Action::StopPlayback,
                Action::Play(vec![Prompt::TooManyTries]),
                Action::TurnAway(LeaveReason::WrongPin),
            ];
        }
        self.state = State::Pin {
            digits: String::new(),
            tries,
        };
        vec![
            Action::StopPlayback,
            Action::Play(vec![Prompt::WrongPin, Prompt::EnterPin]),
            self.start_timer(PIN_TIMEOUT_MS),
        ]
    }

    fn enter(&mut self, muted: bool) -> Vec<Action> {
        self.state = State::InRoom {
            star: false,
            busy: false,
        };
        let mut actions = vec![Action::EnterRoom];
        if self.settings.tones {
            actions.push(Action::PlayTone(Tone::Joined));
            actions.push(Action::PlayToRoom(Tone::Entered));
        }
        if muted {
            actions.push(Action::Play(vec![Prompt::Muted]));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pin: &str) -> PinHash {
        PinHash::derive(pin, [7; 16]).unwrap()
    }

    fn open_room() -> Settings {
        Settings {
            tones: true,
            ..Settings::default()
        }
    }

    fn pin_room() -> Settings {
        Settings {
            pin: Some(hash("2468")),
            moderator_pin: Some(hash("1357")),
            tones: true,
            ..Settings::default()
        }
    }

    fn keys(caller: &mut Caller, keys: &str) -> Vec<Action> {
        keys.chars()
            .flat_map(|k| caller.on(Input::Dtmf(k)))
            .collect()
    }

    fn joined(moderator: bool) -> Input {
        Input::Joined {
            moderator,
            muted: false,
            moderator_present: moderator,
        }
    }

    fn guarded_room() -> Settings {
        Settings {
            pin_lockout: true,
            ..pin_room()
        }
    }

    #[test]
    fn with_the_lock_out_every_entry_is_checked_before_it_counts() {
        let mut caller = Caller::new(guarded_room());
        caller.on(Input::Answered);
        // Wrong: checked, then counted as a try when the room says so.
        assert_eq!(
            keys(&mut caller, "1111#").last(),
            Some(&Action::CheckPin { right: false })
        );
        // Keys while it is checked are ignored.
        assert!(keys(&mut caller, "2468#").is_empty());
        let actions = caller.on(Input::PinChecked(PinVerdict::Rejected));
        assert!(actions.contains(&Action::Play(vec![Prompt::WrongPin, Prompt::EnterPin])));
        // The moderator PIN, accepted: joins as a moderator.
        assert_eq!(
            keys(&mut caller, "1357#").last(),
            Some(&Action::CheckPin { right: true })
        );
        assert_eq!(
            caller.on(Input::PinChecked(PinVerdict::Accepted)),
            vec![Action::Join { moderator: true }]
        );
    }

    #[test]
    fn a_locked_out_caller_is_told_and_turned_away_even_with_the_right_pin() {
        let mut caller = Caller::new(guarded_room());
        caller.on(Input::Answered);
        assert_eq!(
            keys(&mut caller, "2468#").last(),
            Some(&Action::CheckPin { right: true })
        );
        assert_eq!(
            caller.on(Input::PinChecked(PinVerdict::LockedOut)),
            vec![
                Action::Play(vec![Prompt::PinLockedOut]),
                Action::TurnAway(LeaveReason::WrongPin),
            ]
        );
        assert_eq!(caller.on(Input::PlaybackDone), vec![Action::HangUp]);
        assert!(caller.is_done());
    }

    #[test]
    fn three_rejected_entries_still_end_the_call_and_an_empty_one_is_not_checked() {
        let mut caller = Caller::new(guarded_room());
        caller.on(Input::Answered);
        // An empty entry is no guess: a try, but nothing to check.
        let actions = keys(&mut caller, "#");
        assert!(!actions.iter().any(|a| matches!(a, Action::CheckPin { .. })));
        keys(&mut caller, "1111#");
        caller.on(Input::PinChecked(PinVerdict::Rejected));
        keys(&mut caller, "2222#");
        assert_eq!(
            caller.on(Input::PinChecked(PinVerdict::Rejected)),
            vec![
                Action::StopPlayback,
                Action::Play(vec![Prompt::TooManyTries]),
                Action::TurnAway(LeaveReason::WrongPin),
            ]
        );
    }

    #[test]
    fn an_open_room_joins_at_once_with_tones() {
        let mut caller = Caller::new(open_room());
        assert_eq!(
            caller.on(Input::Answered),
            vec![Action::Join { moderator: false }]
        );
        assert_eq!(
            caller.on(joined(false)),
            vec![
                Action::EnterRoom,
                Action::PlayTone(Tone::Joined),
                Action::PlayToRoom(Tone::Entered),
            ]
        );
        assert!(caller.is_in_room());
        assert!(!caller.is_moderator());
    }

    #[test]
    fn a_room_without_tones_plays_none_and_a_muted_entry_is_told() {
        let mut caller = Caller::new(Settings::default());
        caller.on(Input::Answered);
        let actions = caller.on(Input::Joined {
            moderator: false,
            muted: true,
            moderator_present: false,
        });
        assert_eq!(
            actions,
            vec![Action::EnterRoom, Action::Play(vec![Prompt::Muted])]
        );
    }

    #[test]
    fn the_participant_pin_joins_a_participant_and_the_moderator_pin_a_moderator() {
        let mut caller = Caller::new(pin_room());
        let actions = caller.on(Input::Answered);
        assert_eq!(actions[0], Action::Play(vec![Prompt::EnterPin]));
        assert!(matches!(
            actions[1],
            Action::StartTimer {
                duration_ms: PIN_TIMEOUT_MS,
                ..
            }
        ));
        let actions = keys(&mut caller, "2468#");
        assert_eq!(actions.first(), Some(&Action::StopPlayback));
        assert_eq!(actions.last(), Some(&Action::Join { moderator: false }));

        let mut caller = Caller::new(pin_room());
        caller.on(Input::Answered);
        let actions = keys(&mut caller, "1357#");
        assert_eq!(actions.last(), Some(&Action::Join { moderator: true }));
        caller.on(joined(true));
        assert!(caller.is_moderator());
    }

    #[test]
    fn star_starts_the_pin_over() {
        let mut caller = Caller::new(pin_room());
        caller.on(Input::Answered);
        let actions = keys(&mut caller, "99*2468#");
        assert_eq!(actions.last(), Some(&Action::Join { moderator: false }));
    }

    #[test]
    fn three_wrong_pins_turn_the_caller_away_after_telling_it() {
        let mut caller = Caller::new(pin_room());
        caller.on(Input::Answered);
        for _ in 0..2 {
            let actions = keys(&mut caller, "1111#");
            assert!(actions.contains(&Action::Play(vec![Prompt::WrongPin, Prompt::EnterPin])));
            assert!(!caller.is_done());
        }
        let actions = keys(&mut caller, "2222#");
        assert_eq!(
            actions[actions.len() - 3..],
            [
                Action::StopPlayback,
                Action::Play(vec![Prompt::TooManyTries]),
                Action::TurnAway(LeaveReason::WrongPin),
            ]
        );
        assert!(!actions.iter().any(|a| matches!(a, Action::Join { .. })));
        // Hung up once the caller has heard why.
        assert!(!caller.is_done());
        assert_eq!(caller.on(Input::PlaybackDone), vec![Action::HangUp]);
        assert!(caller.is_done());
    }

    #[test]
    fn silence_counts_as_an_entry_and_a_stale_timer_is_ignored() {
        let mut caller = Caller::new(pin_room());
        let Action::StartTimer { id: first, .. } = caller.on(Input::Answered)[1] else {
            panic!("no timer");
        };
        let actions = caller.on(Input::Dtmf('2'));
        let Some(&Action::StartTimer { id: second, .. }) = actions.last() else {
            panic!("no timer");
        };
        assert_eq!(caller.on(Input::Timeout(first)), vec![]);
        let actions = caller.on(Input::Timeout(second));
        assert!(actions.contains(&Action::Play(vec![Prompt::WrongPin, Prompt::EnterPin])));
    }

    #[test]
    fn a_room_with_only_a_moderator_pin_takes_an_empty_entry_as_a_participant() {
        let mut caller = Caller::new(Settings {
            moderator_pin: Some(hash("1357")),
            ..Settings::default()
        });
        caller.on(Input::Answered);
        assert_eq!(
            keys(&mut caller, "#").last(),
            Some(&Action::Join { moderator: false })
        );
    }

    #[test]
    fn a_full_or_locked_room_is_told_then_hung_up() {
        for (refusal, prompt, reason) in [
            (Refusal::Full, Prompt::RoomFull, LeaveReason::RoomFull),
            (Refusal::Locked, Prompt::RoomLocked, LeaveReason::RoomLocked),
        ] {
            let mut caller = Caller::new(open_room());
            caller.on(Input::Answered);
            assert_eq!(
                caller.on(Input::Refused(refusal)),
                vec![Action::Play(vec![prompt]), Action::TurnAway(reason)]
            );
            assert_eq!(caller.on(Input::PlaybackDone), vec![Action::HangUp]);
            assert!(caller.is_done());
        }
        let mut caller = Caller::new(open_room());
        caller.on(Input::Answered);
        assert_eq!(
            caller.on(Input::Refused(Refusal::Unavailable)),
            vec![Action::Play(vec![Prompt::NotAvailable])]
        );
    }

    #[test]
    fn a_participant_waits_on_hold_until_a_moderator_arrives() {
        let mut caller = Caller::new(Settings {
            wait_for_moderator: true,
            moderator_pin: Some(hash("1357")),
            tones: true,
            ..Settings::default()
        });
        caller.on(Input::Answered);
        keys(&mut caller, "#");
        assert_eq!(
            caller.on(joined(false)),
            vec![
                Action::Play(vec![Prompt::WaitingForModerator]),
                Action::PlayTone(Tone::Hold),
            ]
        );
        assert!(caller.is_waiting());
        // The hold audio loops; keys do nothing while waiting.
        assert_eq!(
            caller.on(Input::PlaybackDone),
            vec![Action::PlayTone(Tone::Hold)]
        );
        assert_eq!(keys(&mut caller, "*6"), vec![]);
        let actions = caller.on(Input::ModeratorArrived);
        assert_eq!(actions[0], Action::StopPlayback);
        assert_eq!(actions[1], Action::EnterRoom);
        assert!(caller.is_in_room());
    }

    #[test]
    fn a_participant_does_not_wait_when_a_moderator_is_in() {
        let mut caller = Caller::new(Settings {
            wait_for_moderator: true,
            ..Settings::default()
        });
        caller.on(Input::Answered);
        let actions = caller.on(Input::Joined {
            moderator: false,
            muted: false,
            moderator_present: true,
        });
        assert_eq!(actions, vec![Action::EnterRoom]);
    }

    #[test]
    fn star_six_toggles_ones_own_mute_with_a_confirmation() {
        let mut caller = Caller::new(open_room());
        caller.on(Input::Answered);
        caller.on(joined(false));
        assert_eq!(
            keys(&mut caller, "*6"),
            vec![Action::Moderate(Op::ToggleMuteSelf)]
        );
        // A second key while the first is being done is ignored.
        assert_eq!(keys(&mut caller, "*6"), vec![]);
        assert_eq!(
            caller.on(Input::Moderated(Some(Outcome::Muted))),
            vec![Action::Play(vec![Prompt::Muted])]
        );
        assert_eq!(
            keys(&mut caller, "*6"),
            vec![Action::Moderate(Op::ToggleMuteSelf)]
        );
        assert_eq!(
            caller.on(Input::Moderated(None)),
            vec![Action::Play(vec![Prompt::NotAvailable])]
        );
        // A digit without a star does nothing.
        assert_eq!(keys(&mut caller, "6"), vec![]);
    }

    #[test]
    fn moderator_keys_are_for_moderators_only() {
        let mut participant = Caller::new(pin_room());
        participant.on(Input::Answered);
        keys(&mut participant, "2468#");
        participant.on(joined(false));
        for key in ["*1", "*2", "*3"] {
            assert_eq!(
                keys(&mut participant, key),
                vec![Action::Play(vec![Prompt::ModeratorsOnly])]
            );
        }
        let mut moderator = Caller::new(pin_room());
        moderator.on(Input::Answered);
        keys(&mut moderator, "1357#");
        moderator.on(joined(true));
        for (key, op, outcome, prompt) in [
            ("*1", Op::ToggleLock, Outcome::Locked, Prompt::Locked),
            (
                "*2",
                Op::ToggleRecording,
                Outcome::RecordingStarted,
                Prompt::RecordingStarted,
            ),
            ("*3", Op::MuteAll, Outcome::AllMuted, Prompt::AllMuted),
            ("*1", Op::ToggleLock, Outcome::Unlocked, Prompt::Unlocked),
            (
                "*2",
                Op::ToggleRecording,
                Outcome::RecordingStopped,
                Prompt::RecordingStopped,
            ),
        ] {
            assert_eq!(keys(&mut moderator, key), vec![Action::Moderate(op)]);
            assert_eq!(
                moderator.on(Input::Moderated(Some(outcome))),
                vec![Action::Play(vec![prompt])]
            );
        }
    }

    #[test]
    fn being_muted_by_others_is_told() {
        let mut caller = Caller::new(open_room());
        caller.on(Input::Answered);
        caller.on(joined(false));
        assert_eq!(
            caller.on(Input::MutedByOthers(true)),
            vec![Action::Play(vec![Prompt::Muted])]
        );
    }

    #[test]
    fn hanging_up_ends_the_call_in_any_state() {
        let mut caller = Caller::new(pin_room());
        caller.on(Input::Answered);
        keys(&mut caller, "12");
        assert_eq!(caller.on(Input::HungUp), vec![]);
        assert!(caller.is_done());
        // Nothing afterwards does anything.
        assert_eq!(caller.on(Input::Dtmf('#')), vec![]);
    }
}
