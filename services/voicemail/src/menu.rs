//! The mailbox menu: what an owner who dials their mailbox hears and
//! does, as a sans-IO state machine ([`Menu`]) the node drives with
//! [`Input`]s and whose [`Action`]s it executes.
//!
//! # The conversation
//! - Getting in: `*97` from the owner's registered phone
//!   ([`Menu::own_phone`]) goes straight in unless the mailbox's
//!   `pin_from_own_phone` asks for the PIN; `*98` from any phone
//!   ([`Menu::any_phone`]) asks for the mailbox, then the PIN (digits,
//!   then `#`). A mailbox that does not exist is not said so: its PIN is
//!   asked and found wrong, so that the menu tells nobody which mailboxes
//!   exist. [`WRONG_PINS_PER_CALL`] wrong PINs end the call; the lock-out
//!   after more, across calls, is the domain's (`CheckPin`).
//! - In: "You have N new messages and M saved messages", then the main
//!   menu: 1 new messages, 2 saved messages, 3 record the greeting, `*`
//!   goodbye.
//! - Listening: each message is announced ("Message 2") and played, then
//!   the message menu: 4 replay, 5 save, 6 next, 7 delete, `*` main menu.
//!   A new message played to its end is marked read (as most voicemail
//!   systems do); 5 marks it read without listening to the end and goes
//!   on. After the last one, "No more messages" and the main menu.
//! - A digit while a prompt or message plays stops it (barge-in) and
//!   counts. A digit that is no choice is said so and the menu repeated;
//!   [`NO_INPUT_TIMEOUT_MS`] without a digit repeats it too, and the
//!   [`NO_INPUT_LIMIT`]th time in a row says goodbye.
//!
//! It must not check the PIN itself (the domain does, and counts) and
//! never plays a message the mailbox it knows of does not hold.

use dialtone_domain::mailbox::{Command, Mailbox, MessageId, MIN_MESSAGE_MS};

use crate::app::{Action, Input, Prompt, Refusal, Timer};
use crate::prompts::number;

/// How long a menu waits for a digit before it repeats itself.
pub const NO_INPUT_TIMEOUT_MS: u32 = 10_000;
/// How long PIN or mailbox entry waits for the next digit before it asks
/// again.
pub const DIGIT_TIMEOUT_MS: u32 = 10_000;
/// Timeouts in a row after which the menu says goodbye: a caller who
/// walked away does not hold a call forever.
pub const NO_INPUT_LIMIT: u32 = 3;
/// Wrong PINs after which the call ends (the domain locks the mailbox
/// after more, across calls).
pub const WRONG_PINS_PER_CALL: u32 = 3;
/// Limits of a greeting's recording.
pub const GREETING_MAX_MS: u32 = 60_000;
pub const GREETING_SILENCE_MS: u32 = 3_000;
/// A shorter greeting is a slip of the finger, not a greeting: dropped.
pub const MIN_GREETING_MS: u32 = MIN_MESSAGE_MS;
/// Digits kept of a mailbox number or PIN: bounds what a caller who leans
/// on the keypad can make the menu hold.
const MAX_ENTRY_DIGITS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    Mailbox,
    Pin,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not answered yet.
    Waiting,
    /// Asking for digits, then `#`.
    Collecting(Entry),
    LookingUp,
    CheckingPin,
    MainMenu,
    /// The current message announced and played; `audio_ready` once its
    /// audio was fetched (until then, a `PlaybackDone` is the
    /// announcement's).
    Message {
        audio_ready: bool,
    },
    MessageMenu,
    /// "Record your greeting after the tone", then the tone.
    GreetingPrompt,
    RecordingGreeting,
    SavingGreeting,
    /// Saying goodbye (or why not): the call ends after it.
    Leaving,
    Done,
}

/// One call to the mailbox menu.
#[derive(Debug)]
pub struct Menu {
    state: State,
    /// The mailbox as last heard of (`None`: not known yet, or `*98`'s
    /// look-up found none).
    mailbox: Option<Mailbox>,
    any_phone: bool,
    pin_required: bool,
    logged_in: bool,
    digits: String,
    wrong_pins: u32,
    no_inputs: u32,
    /// Prompts or a message queued in the node.
    playing: bool,
    /// The message whose audio was asked for and not yet answered.
    fetching: Option<MessageId>,
    /// The messages being listened to (new or saved, when chosen) and the
    /// current one's position.
    list: Vec<MessageId>,
    index: usize,
    timer: Timer,
}

impl Menu {
    /// `*97` from the owner's registered phone, with the owner's mailbox.
    pub fn own_phone(mailbox: Mailbox) -> Self {
        let pin_required = mailbox.settings.pin_from_own_phone;
        Self::new(Some(mailbox), false, pin_required)
    }

    /// `*98` from any phone: the mailbox is asked for, then its PIN.
    pub fn any_phone() -> Self {
        Self::new(None, true, true)
    }

    fn new(mailbox: Option<Mailbox>, any_phone: bool, pin_required: bool) -> Self {
        Self {
            state: State::Waiting,
            mailbox,
            any_phone,
            pin_required,
            logged_in: false,
            digits: String::new(),
            wrong_pins: 0,
            no_inputs: 0,
            playing: false,
            fetching: None,
            list: Vec::new(),
            index: 0,
            timer: Timer::default(),
        }
    }

    /// Whether the conversation is over (nothing more will be asked).
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the caller has proved they may hear this mailbox.
    pub fn is_logged_in(&self) -> bool {
        self.logged_in
    }

    /// The mailbox as the menu last heard of it.
    pub fn mailbox(&self) -> Option<&Mailbox> {
        self.mailbox.as_ref()
    }

    /// What to do about `input`.
    pub fn on(&mut self, input: Input) -> Vec<Action> {
        let mut out = Vec::new();
        match (self.state, input) {
            (State::Done, _) => {}
            (State::RecordingGreeting, Input::HungUp) => {
                // A greeting is kept only when its owner ends it with `#`
                // or silence: one cut off by a hang-up would replace a good
                // greeting with half of a new one.
                self.state = State::Done;
                out.push(Action::DiscardRecording);
            }
            (_, Input::HungUp) => self.state = State::Done,
            (State::Waiting, Input::Answered) => self.start(&mut out),
            // Even before the answer: the mailbox may change meanwhile.
            (_, Input::MailboxUpdated(result)) => self.mailbox_updated(result, &mut out),
            (State::Waiting, _) => {}
            (_, Input::PlaybackDone) => self.playback_done(&mut out),
            (_, Input::Dtmf(digit)) => self.digit(digit, &mut out),
            (_, Input::Timeout(id)) => {
                if self.timer.fired(id) {
                    self.timeout(&mut out);
                }
            }
            (_, Input::AudioReady { audio, ok }) => {
                if self.fetching.as_ref() == Some(&audio) {
                    self.fetching = None;
                    self.audio_ready(ok, &mut out);
                }
            }
            (State::RecordingGreeting, Input::RecordingDone { duration_ms, .. }) => {
                if duration_ms < MIN_GREETING_MS {
                    out.push(Action::DiscardRecording);
                    self.main_menu(Vec::new(), &mut out);
                } else {
                    self.state = State::SavingGreeting;
                    out.push(Action::SaveGreeting { duration_ms });
                }
            }
            (_, Input::Answered | Input::RecordingDone { .. }) => {}
        }
        out
    }

    fn start(&mut self, out: &mut Vec<Action>) {
        if self.any_phone {
            self.collect(Entry::Mailbox, Vec::new(), out);
        } else if self.pin_required {
            self.collect(Entry::Pin, Vec::new(), out);
        } else {
            self.log_in(out);
        }
    }

    fn playback_done(&mut self, out: &mut Vec<Action>) {
        if !self.playing {
            // Stopped playback's late report: nothing was waiting for it.
            return;
        }
        self.playing = false;
        match self.state {
            State::Collecting(_) => out.push(self.timer.start(DIGIT_TIMEOUT_MS)),
            State::MainMenu | State::MessageMenu => {
                out.push(self.timer.start(NO_INPUT_TIMEOUT_MS));
            }
            State::Message { audio_ready: true } => {
                if let Some(id) = self.current_new_message() {
                    out.push(Action::Mailbox(Command::MarkRead { message_id: id }));
                }
                self.state = State::MessageMenu;
                self.play(vec![Prompt::MessageMenu], out);
            }
            State::GreetingPrompt => {
                self.state = State::RecordingGreeting;
                out.push(Action::Record {
                    max_duration_ms: GREETING_MAX_MS,
                    silence_ms: GREETING_SILENCE_MS,
                    stop_digits: "#",
                });
            }
            State::Leaving => {
                self.state = State::Done;
                out.push(Action::HangUp);
            }
            // The announcement ended before the message's audio came: it
            // plays when it does.
            _ => {}
        }
    }

    fn digit(&mut self, digit: char, out: &mut Vec<Action>) {
        let state = self.state;
        let menu = matches!(
            state,
            State::Collecting(_) | State::MainMenu | State::Message { .. } | State::MessageMenu
        );
        if !menu || !(digit.is_ascii_digit() || digit == '*' || digit == '#') {
            return;
        }
        self.no_inputs = 0;
        self.timer.cancel();
        if self.playing || self.fetching.is_some() {
            out.push(Action::StopPlayback);
            self.playing = false;
            self.fetching = None;
        }
        match state {
            State::Collecting(entry) => self.entry_digit(entry, digit, out),
            State::MainMenu => match digit {
                '1' => self.listen(false, out),
                '2' => self.listen(true, out),
                '3' => {
                    self.state = State::GreetingPrompt;
                    self.play(vec![Prompt::RecordGreeting, Prompt::Beep], out);
                }
                '*' => self.leave(vec![Prompt::Goodbye], out),
                _ => self.play(vec![Prompt::InvalidChoice, Prompt::MainMenu], out),
            },
            _ => self.message_digit(digit, out),
        }
    }

    fn entry_digit(&mut self, entry: Entry, digit: char, out: &mut Vec<Action>) {
        match digit {
            '#' if self.digits.is_empty() => self.collect(entry, Vec::new(), out),
            '#' => {
                let digits = std::mem::take(&mut self.digits);
                match (entry, &self.mailbox) {
                    (Entry::Mailbox, _) => {
                        self.state = State::LookingUp;
                        out.push(Action::LookUpMailbox(digits));
                    }
                    // No such mailbox: the same answer as a wrong PIN.
                    (Entry::Pin, None) => self.wrong_pin(out),
                    (Entry::Pin, Some(_)) => {
                        self.state = State::CheckingPin;
                        out.push(Action::Mailbox(Command::CheckPin { pin: digits }));
                    }
                }
            }
            // `*` starts the entry over, as on most IVRs.
            '*' => self.collect(entry, Vec::new(), out),
            _ => {
                if self.digits.len() < MAX_ENTRY_DIGITS {
                    self.digits.push(digit);
                }
                out.push(self.timer.start(DIGIT_TIMEOUT_MS));
            }
        }
    }

    fn message_digit(&mut self, digit: char, out: &mut Vec<Action>) {
        let current = self.list.get(self.index).cloned();
        match (digit, current) {
            ('4', Some(_)) => self.play_message(Vec::new(), out),
            ('5', Some(_)) => {
                if let Some(id) = self.current_new_message() {
                    out.push(Action::Mailbox(Command::MarkRead { message_id: id }));
                }
                self.index += 1;
                self.play_message(vec![Prompt::MessageSaved], out);
            }
            ('6', Some(_)) => {
                self.index += 1;
                self.play_message(Vec::new(), out);
            }
            ('7', Some(id)) => {
                out.push(Action::Mailbox(Command::Delete { message_id: id }));
                self.index += 1;
                self.play_message(vec![Prompt::MessageDeleted], out);
            }
            ('*', _) | (_, None) => self.main_menu(Vec::new(), out),
            _ => {
                self.state = State::MessageMenu;
                self.play(vec![Prompt::InvalidChoice, Prompt::MessageMenu], out);
            }
        }
    }

    fn timeout(&mut self, out: &mut Vec<Action>) {
        let again = match self.state {
            State::Collecting(_) | State::MainMenu | State::MessageMenu => self.state,
            _ => return,
        };
        self.no_inputs += 1;
        if self.no_inputs >= NO_INPUT_LIMIT {
            self.leave(vec![Prompt::Goodbye], out);
            return;
        }
        match again {
            State::Collecting(entry) => self.collect(entry, Vec::new(), out),
            State::MainMenu => self.play(vec![Prompt::MainMenu], out),
            _ => self.play(vec![Prompt::MessageMenu], out),
        }
    }

    fn mailbox_updated(&mut self, result: Result<Mailbox, Refusal>, out: &mut Vec<Action>) {
        match (self.state, result) {
            (State::LookingUp, Ok(mailbox)) => {
                self.mailbox = Some(mailbox);
                self.collect(Entry::Pin, Vec::new(), out);
            }
            (State::LookingUp | State::CheckingPin, Err(Refusal::Unavailable)) => {
                self.leave(vec![Prompt::Goodbye], out);
            }
            (State::LookingUp | State::CheckingPin, Err(Refusal::Locked)) => {
                self.leave(vec![Prompt::LockedOut], out);
            }
            (State::LookingUp, Err(_)) => {
                self.mailbox = None;
                self.collect(Entry::Pin, Vec::new(), out);
            }
            (State::CheckingPin, Ok(mailbox)) => {
                self.mailbox = Some(mailbox);
                self.log_in(out);
            }
            (State::CheckingPin, Err(_)) => self.wrong_pin(out),
            (State::SavingGreeting, Ok(mailbox)) => {
                self.mailbox = Some(mailbox);
                self.main_menu(vec![Prompt::GreetingSaved], out);
            }
            (State::SavingGreeting, Err(_)) => self.main_menu(Vec::new(), out),
            (_, Ok(mailbox)) => {
                // The answer to a MarkRead or Delete: the mailbox as it is
                // now, which the list is checked against.
                if self.mailbox.is_some() {
                    self.mailbox = Some(mailbox);
                }
            }
            // A message deleted meanwhile, or storage failing: the owner
            // goes on with the list.
            (_, Err(_)) => {}
        }
    }

    fn audio_ready(&mut self, ok: bool, out: &mut Vec<Action>) {
        if self.state != (State::Message { audio_ready: false }) {
            return;
        }
        if ok {
            self.state = State::Message { audio_ready: true };
            self.playing = true;
        } else {
            // Unreadable audio: the message menu still lets the owner
            // delete it or go on.
            self.state = State::MessageMenu;
            self.play(vec![Prompt::MessageMenu], out);
        }
    }

    fn collect(&mut self, entry: Entry, mut prompts: Vec<Prompt>, out: &mut Vec<Action>) {
        self.state = State::Collecting(entry);
        self.digits.clear();
        if entry == Entry::Mailbox {
            self.mailbox = None;
        }
        prompts.push(match entry {
            Entry::Mailbox => Prompt::EnterMailbox,
            Entry::Pin => Prompt::EnterPin,
        });
        self.play(prompts, out);
    }

    fn wrong_pin(&mut self, out: &mut Vec<Action>) {
        self.wrong_pins += 1;
        if self.wrong_pins >= WRONG_PINS_PER_CALL {
            self.leave(vec![Prompt::WrongPin, Prompt::Goodbye], out);
        } else if self.any_phone {
            // The mailbox number may be what was mistyped.
            self.collect(Entry::Mailbox, vec![Prompt::WrongPin], out);
        } else {
            self.collect(Entry::Pin, vec![Prompt::WrongPin], out);
        }
    }

    fn log_in(&mut self, out: &mut Vec<Action>) {
        self.logged_in = true;
        self.no_inputs = 0;
        let (new, saved) = self.mailbox.as_ref().map_or((0, 0), Mailbox::counts);
        self.main_menu(summary(new, saved), out);
    }

    fn main_menu(&mut self, mut prompts: Vec<Prompt>, out: &mut Vec<Action>) {
        self.state = State::MainMenu;
        prompts.push(Prompt::MainMenu);
        self.play(prompts, out);
    }

    fn listen(&mut self, read: bool, out: &mut Vec<Action>) {
        self.list = self
            .mailbox
            .iter()
            .flat_map(|m| &m.messages)
            .filter(|m| m.read == read)
            .map(|m| m.message_id.clone())
            .collect();
        self.index = 0;
        self.play_message(Vec::new(), out);
    }

    /// Announces and plays the message at `index` or the first after it
    /// that the mailbox still holds, after `prompts`; past the end, "no
    /// more messages" and the main menu.
    fn play_message(&mut self, mut prompts: Vec<Prompt>, out: &mut Vec<Action>) {
        let held = |id: &MessageId| {
            self.mailbox
                .as_ref()
                .is_some_and(|m| m.message(id).is_some())
        };
        while self.list.get(self.index).is_some_and(|id| !held(id)) {
            self.index += 1;
        }
        let Some(id) = self.list.get(self.index).cloned() else {
            prompts.push(Prompt::NoMoreMessages);
            self.main_menu(prompts, out);
            return;
        };
        self.state = State::Message { audio_ready: false };
        prompts.push(Prompt::Message);
        prompts.extend(number(u32::try_from(self.index + 1).unwrap_or(u32::MAX)));
        self.play(prompts, out);
        self.fetching = Some(id.clone());
        out.push(Action::PlayMessage(id));
    }

    /// The current message, if the mailbox holds it unread.
    fn current_new_message(&self) -> Option<MessageId> {
        let id = self.list.get(self.index)?;
        let message = self.mailbox.as_ref()?.message(id)?;
        (!message.read).then(|| id.clone())
    }

    fn leave(&mut self, prompts: Vec<Prompt>, out: &mut Vec<Action>) {
        self.state = State::Leaving;
        self.play(prompts, out);
    }

    fn play(&mut self, prompts: Vec<Prompt>, out: &mut Vec<Action>) {
        self.playing = true;
        self.timer.cancel();
        out.push(Action::Play(prompts));
    }
}

/// "You have 2 new messages and 1 saved message", or "You have no
/// messages".
fn summary(new: u32, saved: u32) -> Vec<Prompt> {
    if new == 0 && saved == 0 {
        return vec![Prompt::NoMessages];
    }
    let mut prompts = vec![Prompt::YouHave];
    if new > 0 {
        prompts.extend(number(new));
        prompts.push(if new == 1 {
            Prompt::NewMessage
        } else {
            Prompt::NewMessages
        });
    }
    if new > 0 && saved > 0 {
        prompts.push(Prompt::And);
    }
    if saved > 0 {
        prompts.extend(number(saved));
        prompts.push(if saved == 1 {
            Prompt::SavedMessage
        } else {
            Prompt::SavedMessages
        });
    }
    prompts
}

#[cfg(test)]
mod tests {
    use dialtone_domain::mailbox::{apply, decide, AudioId, Greeting, Message, Patch, PinHash};

    use super::*;
    use crate::app::RecordingEnd;

    use Prompt::*;

    fn id(n: u8) -> AudioId {
        AudioId::from_random([n; 16])
    }

    /// An enabled mailbox with PIN 4321, and `new` then `saved` messages.
    fn mailbox(new: u8, saved: u8) -> Mailbox {
        let mut mailbox = Mailbox::default();
        let command = Command::Configure(Patch {
            enabled: Some(true),
            pin: Some(PinHash::derive("4321", [7; 16]).unwrap()),
            ..Patch::default()
        });
        for event in decide(&mailbox, &command, 0).unwrap() {
            apply(&mut mailbox, &event);
        }
        for n in 0..new + saved {
            mailbox.messages.push(Message {
                message_id: id(n + 1),
                from: "bob@example.com".into(),
                left_at: i64::from(n),
                duration_ms: 5_000,
                read: n >= new,
            });
        }
        mailbox
    }

    /// What the node's actor would answer to `command`.
    fn after(mailbox: &Mailbox, command: Command) -> Mailbox {
        let mut mailbox = mailbox.clone();
        for event in decide(&mailbox, &command, 0).unwrap() {
            apply(&mut mailbox, &event);
        }
        mailbox
    }

    fn play(prompts: &[Prompt]) -> Action {
        Action::Play(prompts.to_vec())
    }

    fn timer(id: u32) -> Action {
        Action::StartTimer {
            id,
            duration_ms: 10_000,
        }
    }

    fn script(menu: &mut Menu, steps: Vec<(Input, Vec<Action>)>) {
        for (n, (input, expected)) in steps.into_iter().enumerate() {
            let shown = format!("{input:?}");
            assert_eq!(menu.on(input), expected, "step {n}: {shown}");
        }
    }

    fn keys(menu: &mut Menu, digits: &str) -> Vec<Action> {
        digits
            .chars()
            .flat_map(|d| menu.on(Input::Dtmf(d)))
            .collect()
    }

    #[test]
    fn the_summary_says_each_count_with_its_plural() {
        assert_eq!(summary(0, 0), vec![NoMessages]);
        assert_eq!(summary(1, 0), vec![YouHave, One, NewMessage]);
        assert_eq!(summary(0, 2), vec![YouHave, Two, SavedMessages]);
        assert_eq!(
            summary(21, 1),
            vec![YouHave, Twenty, One, NewMessages, And, One, SavedMessage]
        );
    }

    #[test]
    fn the_owners_phone_goes_straight_in_and_stars_out() {
        let mut menu = Menu::own_phone(mailbox(2, 1));
        script(
            &mut menu,
            vec![
                (Input::Dtmf('1'), vec![]),
                (
                    Input::Answered,
                    vec![play(&[
                        YouHave,
                        Two,
                        NewMessages,
                        And,
                        One,
                        SavedMessage,
                        MainMenu,
                    ])],
                ),
                (Input::PlaybackDone, vec![timer(1)]),
                (Input::Dtmf('*'), vec![play(&[Goodbye])]),
                (Input::Dtmf('1'), vec![]),
                (Input::PlaybackDone, vec![Action::HangUp]),
                (Input::HungUp, vec![]),
            ],
        );
        assert!(menu.is_logged_in() && menu.is_done());
    }

    #[test]
    fn the_owners_phone_asks_the_pin_when_the_setting_says_so() {
        let mut mb = mailbox(0, 0);
        mb.settings.pin_from_own_phone = true;
        let mut menu = Menu::own_phone(mb.clone());
        assert_eq!(menu.on(Input::Answered), vec![play(&[EnterPin])]);
        // Barge-in: the first digit stops the prompt.
        assert_eq!(
            keys(&mut menu, "43"),
            vec![Action::StopPlayback, timer(1), timer(2)]
        );
        assert_eq!(keys(&mut menu, "21"), vec![timer(3), timer(4)]);
        assert_eq!(
            keys(&mut menu, "#"),
            vec![Action::Mailbox(Command::CheckPin { pin: "4321".into() })]
        );
        assert!(!menu.is_logged_in());
        assert_eq!(
            menu.on(Input::MailboxUpdated(Ok(mb))),
            vec![play(&[NoMessages, MainMenu])]
        );
        assert!(menu.is_logged_in());
    }

    #[test]
    fn any_phone_asks_the_mailbox_then_the_pin_and_retries_a_wrong_one() {
        let mb = mailbox(1, 0);
        let mut menu = Menu::any_phone();
        assert_eq!(menu.on(Input::Answered), vec![play(&[EnterMailbox])]);
        assert_eq!(menu.on(Input::PlaybackDone), vec![timer(1)]);
        assert_eq!(keys(&mut menu, "201"), vec![timer(2), timer(3), timer(4)]);
        assert_eq!(
            keys(&mut menu, "#"),
            vec![Action::LookUpMailbox("201".into())]
        );
        assert_eq!(
            menu.on(Input::MailboxUpdated(Ok(mb.clone()))),
            vec![play(&[EnterPin])]
        );
        assert_eq!(menu.on(Input::PlaybackDone), vec![timer(5)]);
        keys(&mut menu, "1111");
        assert_eq!(
            keys(&mut menu, "#"),
            vec![Action::Mailbox(Command::CheckPin { pin: "1111".into() })]
        );
        // Wrong: the mailbox is asked again (it may be what was mistyped).
        assert_eq!(
            menu.on(Input::MailboxUpdated(Err(Refusal::WrongPin))),
            vec![play(&[WrongPin, EnterMailbox])]
        );
        keys(&mut menu, "201#");
        menu.on(Input::MailboxUpdated(Ok(mb.clone())));
        keys(&mut menu, "4321");
        assert_eq!(
            keys(&mut menu, "#"),
            vec![Action::Mailbox(Command::CheckPin { pin: "4321".into() })]
        );
        assert_eq!(
            menu.on(Input::MailboxUpdated(Ok(mb))),
            vec![play(&[YouHave, One, NewMessage, MainMenu])]
        );
        assert!(menu.is_logged_in());
    }

    #[test]
    fn an_unknown_mailbox_is_answered_as_a_wrong_pin_and_three_end_the_call() {
        let mut menu = Menu::any_phone();
        menu.on(Input::Answered);
        for attempt in 1..=WRONG_PINS_PER_CALL {
            keys(&mut menu, "999#");
            assert_eq!(
                menu.on(Input::MailboxUpdated(Err(Refusal::NotFound))),
                vec![play(&[EnterPin])]
            );
            // No CheckPin is sent for a mailbox that does not exist.
            let actions = keys(&mut menu, "1234#");
            assert!(
                !actions.iter().any(|a| matches!(a, Action::Mailbox(_))),
                "{actions:?}"
            );
            let expected = if attempt < WRONG_PINS_PER_CALL {
                play(&[WrongPin, EnterMailbox])
            } else {
                play(&[WrongPin, Goodbye])
            };
            assert_eq!(actions.last(), Some(&expected), "attempt {attempt}");
        }
        assert_eq!(menu.on(Input::PlaybackDone), vec![Action::HangUp]);
        assert!(!menu.is_logged_in() && menu.is_done());
    }

    #[test]
    fn a_locked_mailbox_says_so_and_hangs_up() {
        let mut mb = mailbox(0, 0);
        mb.settings.pin_from_own_phone = true;
        let mut menu = Menu::own_phone(mb);
        menu.on(Input::Answered);
        keys(&mut menu, "0000#");
        assert_eq!(
            menu.on(Input::MailboxUpdated(Err(Refusal::Locked))),
            vec![play(&[LockedOut])]
        );
        assert_eq!(keys(&mut menu, "4321#"), vec![]);
        assert_eq!(menu.on(Input::PlaybackDone), vec![Action::HangUp]);
        assert!(!menu.is_logged_in());
    }

    #[test]
    fn listen_save_delete_next_through_the_new_messages() {
        let mb = mailbox(3, 0);
        let mut menu = Menu::own_phone(mb.clone());
        menu.on(Input::Answered);
        script(
            &mut menu,
            vec![
                (Input::PlaybackDone, vec![timer(1)]),
                (
                    Input::Dtmf('1'),
                    vec![play(&[Message, One]), Action::PlayMessage(id(1))],
                ),
                // The announcement ends before the audio is fetched: wait.
                (Input::PlaybackDone, vec![]),
                (
                    Input::AudioReady {
                        audio: id(1),
                        ok: true,
                    },
                    vec![],
                ),
                // Played to its end: marked read.
                (
                    Input::PlaybackDone,
                    vec![
                        Action::Mailbox(Command::MarkRead { message_id: id(1) }),
                        play(&[MessageMenu]),
                    ],
                ),
                (
                    Input::MailboxUpdated(Ok(after(&mb, Command::MarkRead { message_id: id(1) }))),
                    vec![],
                ),
                (Input::PlaybackDone, vec![timer(2)]),
                // 4 replays it, announcement included.
                (
                    Input::Dtmf('4'),
                    vec![play(&[Message, One]), Action::PlayMessage(id(1))],
                ),
                (
                    Input::AudioReady {
                        audio: id(1),
                        ok: true,
                    },
                    vec![],
                ),
                // 7 while it plays: stopped, deleted, the next one.
                (
                    Input::Dtmf('7'),
                    vec![
                        Action::StopPlayback,
                        Action::Mailbox(Command::Delete { message_id: id(1) }),
                        play(&[MessageDeleted, Message, Two]),
                        Action::PlayMessage(id(2)),
                    ],
                ),
                // 5 while message 2 is being fetched: marked read without
                // listening to the end, and on to message 3.
                (
                    Input::Dtmf('5'),
                    vec![
                        Action::StopPlayback,
                        Action::Mailbox(Command::MarkRead { message_id: id(2) }),
                        play(&[MessageSaved, Message, Three]),
                        Action::PlayMessage(id(3)),
                    ],
                ),
                // 6 skips message 3, which stays new; the list ends.
                (
                    Input::Dtmf('6'),
                    vec![Action::StopPlayback, play(&[NoMoreMessages, MainMenu])],
                ),
                (
                    Input::AudioReady {
                        audio: id(3),
                        ok: true,
                    },
                    vec![],
                ),
                (Input::PlaybackDone, vec![timer(3)]),
            ],
        );
    }

    #[test]
    fn saved_messages_are_listed_apart_and_a_missing_one_is_skipped() {
        let mb = mailbox(1, 2);
        let mut menu = Menu::own_phone(mb.clone());
        menu.on(Input::Answered);
        assert_eq!(
            keys(&mut menu, "2"),
            vec![
                Action::StopPlayback,
                play(&[Message, One]),
                Action::PlayMessage(id(2)),
            ]
        );
        // Message 3 is deleted elsewhere meanwhile; the node says so.
        let gone = after(&mb, Command::Delete { message_id: id(3) });
        assert_eq!(menu.on(Input::MailboxUpdated(Ok(gone))), vec![]);
        assert_eq!(
            keys(&mut menu, "6"),
            vec![Action::StopPlayback, play(&[NoMoreMessages, MainMenu])]
        );
        // Saved messages are not marked read again.
        menu.on(Input::PlaybackDone);
        keys(&mut menu, "2");
        menu.on(Input::AudioReady {
            audio: id(2),
            ok: true,
        });
        assert_eq!(menu.on(Input::PlaybackDone), vec![play(&[MessageMenu])]);
    }

    #[test]
    fn unreadable_audio_goes_to_the_message_menu() {
        let mut menu = Menu::own_phone(mailbox(1, 0));
        menu.on(Input::Answered);
        keys(&mut menu, "1");
        assert_eq!(
            menu.on(Input::AudioReady {
                audio: id(1),
                ok: false
            }),
            vec![play(&[MessageMenu])]
        );
        assert_eq!(menu.on(Input::PlaybackDone), vec![timer(1)]);
        assert_eq!(
            keys(&mut menu, "7"),
            vec![
                Action::Mailbox(Command::Delete { message_id: id(1) }),
                play(&[MessageDeleted, NoMoreMessages, MainMenu]),
            ]
        );
    }

    #[test]
    fn the_owner_records_a_greeting() {
        let mb = mailbox(0, 0);
        let mut menu = Menu::own_phone(mb.clone());
        menu.on(Input::Answered);
        menu.on(Input::PlaybackDone);
        script(
            &mut menu,
            vec![
                (Input::Dtmf('3'), vec![play(&[RecordGreeting, Beep])]),
                (Input::Dtmf('#'), vec![]),
                (
                    Input::PlaybackDone,
                    vec![Action::Record {
                        max_duration_ms: 60_000,
                        silence_ms: 3_000,
                        stop_digits: "#",
                    }],
                ),
                (
                    Input::RecordingDone {
                        duration_ms: 4_500,
                        end: RecordingEnd::Digit('#'),
                    },
                    vec![Action::SaveGreeting { duration_ms: 4_500 }],
                ),
                (
                    Input::MailboxUpdated(Ok(after(
                        &mb,
                        Command::SetGreeting {
                            greeting: Some(Greeting {
                                audio: id(40),
                                duration_ms: 4_500,
                            }),
                        },
                    ))),
                    vec![play(&[GreetingSaved, MainMenu])],
                ),
                (
                    Input::Dtmf('3'),
                    vec![Action::StopPlayback, play(&[RecordGreeting, Beep])],
                ),
                (
                    Input::PlaybackDone,
                    vec![Action::Record {
                        max_duration_ms: 60_000,
                        silence_ms: 3_000,
                        stop_digits: "#",
                    }],
                ),
                // Too short: dropped, back to the menu.
                (
                    Input::RecordingDone {
                        duration_ms: 400,
                        end: RecordingEnd::Digit('#'),
                    },
                    vec![Action::DiscardRecording, play(&[MainMenu])],
                ),
                (
                    Input::Dtmf('3'),
                    vec![Action::StopPlayback, play(&[RecordGreeting, Beep])],
                ),
                (
                    Input::PlaybackDone,
                    vec![Action::Record {
                        max_duration_ms: 60_000,
                        silence_ms: 3_000,
                        stop_digits: "#",
                    }],
                ),
                // Cut off by a hang-up: dropped.
                (Input::HungUp, vec![Action::DiscardRecording]),
                (
                    Input::RecordingDone {
                        duration_ms: 9_000,
                        end: RecordingEnd::Stopped,
                    },
                    vec![],
                ),
            ],
        );
        assert!(menu.mailbox().unwrap().greeting.is_some());
    }

    #[test]
    fn silence_repeats_the_menu_and_the_third_time_says_goodbye() {
        let mut menu = Menu::own_phone(mailbox(0, 0));
        menu.on(Input::Answered);
        script(
            &mut menu,
            vec![
                (Input::PlaybackDone, vec![timer(1)]),
                (Input::Timeout(1), vec![play(&[MainMenu])]),
                (Input::PlaybackDone, vec![timer(2)]),
                // A stale timer's timeout is ignored.
                (Input::Timeout(1), vec![]),
                // A digit resets the count.
                (Input::Dtmf('9'), vec![play(&[InvalidChoice, MainMenu])]),
                (Input::PlaybackDone, vec![timer(3)]),
                (Input::Timeout(2), vec![]),
                (Input::Timeout(3), vec![play(&[MainMenu])]),
                (Input::PlaybackDone, vec![timer(4)]),
                (Input::Timeout(4), vec![play(&[MainMenu])]),
                (Input::PlaybackDone, vec![timer(5)]),
                (Input::Timeout(5), vec![play(&[Goodbye])]),
                (Input::PlaybackDone, vec![Action::HangUp]),
            ],
        );
        assert!(menu.is_done());
    }

    #[test]
    fn pin_entry_times_out_into_a_fresh_prompt() {
        let mut menu = Menu::any_phone();
        menu.on(Input::Answered);
        menu.on(Input::PlaybackDone);
        assert_eq!(keys(&mut menu, "20"), vec![timer(2), timer(3)]);
        // 10 s after the last digit: asked again, the digits forgotten.
        assert_eq!(menu.on(Input::Timeout(3)), vec![play(&[EnterMailbox])]);
        keys(&mut menu, "7");
        assert_eq!(
            keys(&mut menu, "#"),
            vec![Action::LookUpMailbox("7".into())]
        );
        // `#` alone asks again; `*` starts over.
        let mut menu = Menu::any_phone();
        menu.on(Input::Answered);
        assert_eq!(
            keys(&mut menu, "#"),
            vec![Action::StopPlayback, play(&[EnterMailbox])]
        );
        assert_eq!(
            keys(&mut menu, "12*"),
            vec![
                Action::StopPlayback,
                timer(1),
                timer(2),
                play(&[EnterMailbox])
            ]
        );
        assert_eq!(
            keys(&mut menu, "3#"),
            vec![
                Action::StopPlayback,
                timer(3),
                Action::LookUpMailbox("3".into())
            ]
        );
    }

    #[test]
    fn barge_in_stops_the_summary_and_the_digit_counts() {
        let mut menu = Menu::own_phone(mailbox(1, 0));
        menu.on(Input::Answered);
        assert_eq!(
            keys(&mut menu, "1"),
            vec![
                Action::StopPlayback,
                play(&[Message, One]),
                Action::PlayMessage(id(1)),
            ]
        );
        assert_eq!(
            keys(&mut menu, "*"),
            vec![Action::StopPlayback, play(&[MainMenu])]
        );
        // The stopped fetch's late report changes nothing.
        assert_eq!(
            menu.on(Input::AudioReady {
                audio: id(1),
                ok: true
            }),
            vec![]
        );
        assert_eq!(menu.on(Input::PlaybackDone), vec![timer(1)]);
        assert_eq!(keys(&mut menu, "8"), vec![play(&[InvalidChoice, MainMenu])]);
    }
}
