//! The conference's shipped prompts and the tones its rooms play.
//!
//! # What it owns
//! [`Prompt`] names each recording in `prompts/en/` (its file
//! [`name`](Prompt::name) and the [`text`](Prompt::text) it speaks),
//! compiled in with `include_bytes!` so that a node cannot start with one
//! missing; [`Prompts::load`] decodes them once into shared 8 kHz samples.
//! [`Tone`] names the tones (joining, leaving, hold), synthesised at load
//! ([`Prompts::tone`]). The files are G.711 µ-law WAV at 8000 Hz made by
//! `scripts/make-conference-prompts` as voicemail's are (espeak-ng, sox);
//! `prompts/README.md` lists the texts and their licence.
//!
//! # Tone frequencies
//! Tones use 1000, 1300 and 520 Hz: away from the 440/660/880 Hz tones
//! the tests' phones send (whose presence in a recording is measured by
//! frequency), and from the DTMF frequencies (697-1633 Hz pairs) as
//! single tones a DTMF detector never takes for a digit.
//!
//! # What it must not do
//! Nothing here reads a file at run time or synthesises speech.

use std::sync::Arc;

use dialtone_media::tone::sine;
use dialtone_media::wav::{read_wav, WavLimits, SAMPLE_RATE_HZ};

use crate::{Error, Result};

/// The longest prompt [`Prompts::load`] accepts (the longest shipped one
/// is under 5 s).
const MAX_PROMPT_MS: u32 = 30_000;

macro_rules! prompts {
    ($($variant:ident => $name:literal, $text:literal;)*) => {
        /// One shipped recording (its text is the variant's doc).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Prompt {
            $(
                #[doc = $text]
                $variant,
            )*
        }

        impl Prompt {
            /// Every prompt, in declaration order (`ALL[p as usize] == p`).
            pub const ALL: &'static [Prompt] = &[$(Prompt::$variant),*];

            /// The file's name without `.wav`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Prompt::$variant => $name,)*
                }
            }

            /// What the prompt says, as written in `prompts/README.md`.
            pub fn text(self) -> &'static str {
                match self {
                    $(Prompt::$variant => $text,)*
                }
            }

            fn wav(self) -> &'static [u8] {
                match self {
                    $(Prompt::$variant => include_bytes!(concat!("../prompts/en/", $name, ".wav")),)*
                }
            }
        }
    };
}

prompts! {
    EnterPin => "enter_pin", "Please enter the conference PIN, then press pound.";
    WrongPin => "wrong_pin", "That PIN is not correct.";
    TooManyTries => "too_many_tries", "That PIN was not correct three times. Goodbye.";
    RoomFull => "room_full", "This conference is full. Please try again later. Goodbye.";
    RoomLocked => "room_locked", "This conference is locked. Goodbye.";
    WaitingForModerator => "waiting_for_moderator", "Please wait. The conference will begin when the moderator joins.";
    Muted => "muted", "You are muted.";
    Unmuted => "unmuted", "You are unmuted.";
    Locked => "locked", "The conference is locked.";
    Unlocked => "unlocked", "The conference is unlocked.";
    RecordingStarted => "recording_started", "This conference is being recorded.";
    RecordingStopped => "recording_stopped", "Recording stopped.";
    AllMuted => "all_muted", "All participants are muted.";
    ModeratorsOnly => "moderators_only", "Only a moderator can do that.";
    NotAvailable => "not_available", "Sorry, that is not possible now.";
    PinLockedOut => "pin_locked_out", "Too many wrong PINs. Please try again later. Goodbye.";
}

/// A tone a room plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tone {
    /// To the caller who joins: 1000 Hz then 1300 Hz, 150 ms each.
    Joined,
    /// To everyone when someone joins: 100 ms of 1300 Hz.
    Entered,
    /// To everyone when someone leaves: 100 ms of 1000 Hz.
    Left,
    /// One period of hold audio while waiting for a moderator: 400 ms of
    /// 520 Hz, then 2.6 s of silence (played again and again).
    Hold,
}

/// Tones at -12 dBFS peak, the level of voicemail's beep.
const TONE_AMPLITUDE: i16 = 8_200;

/// Every prompt and tone decoded to 8 kHz mono samples, shared by all
/// calls.
#[derive(Clone)]
pub struct Prompts {
    samples: Vec<Arc<[i16]>>,
    joined: Arc<[i16]>,
    entered: Arc<[i16]>,
    left: Arc<[i16]>,
    hold: Arc<[i16]>,
}

impl Prompts {
    /// Decodes every shipped prompt and makes the tones; an error is a
    /// packaging mistake and names the prompt.
    pub fn load() -> Result<Prompts> {
        let limits = WavLimits {
            max_duration_ms: MAX_PROMPT_MS,
        };
        let samples = Prompt::ALL
            .iter()
            .map(|&prompt| {
                read_wav(prompt.wav(), limits)
                    .map(Arc::from)
                    .map_err(|source| Error::Prompt {
                        name: prompt.name(),
                        source,
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let tone = |hz: f64, ms: u32| sine(hz, TONE_AMPLITUDE, ms, SAMPLE_RATE_HZ);
        let mut joined = tone(1000.0, 150);
        joined.extend(tone(1300.0, 150));
        let mut hold = tone(520.0, 400);
        hold.resize(hold.len() + (SAMPLE_RATE_HZ as usize * 2600 / 1000), 0);
        Ok(Prompts {
            samples,
            joined: joined.into(),
            entered: tone(1300.0, 100).into(),
            left: tone(1000.0, 100).into(),
            hold: hold.into(),
        })
    }

    /// The prompt's samples (a shared handle, no copy).
    pub fn get(&self, prompt: Prompt) -> Arc<[i16]> {
        match self.samples.get(prompt as usize) {
            Some(samples) => Arc::clone(samples),
            None => Arc::from(Vec::new()),
        }
    }

    /// The tone's samples.
    pub fn tone(&self, tone: Tone) -> Arc<[i16]> {
        Arc::clone(match tone {
            Tone::Joined => &self.joined,
            Tone::Entered => &self.entered,
            Tone::Left => &self.left,
            Tone::Hold => &self.hold,
        })
    }
}

impl std::fmt::Debug for Prompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prompts")
            .field("prompts", &self.samples.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use dialtone_media::tone::goertzel_power;

    use super::*;

    #[test]
    fn every_prompt_loads_as_speech_of_a_few_seconds() {
        let prompts = Prompts::load().unwrap();
        for (index, &prompt) in Prompt::ALL.iter().enumerate() {
            assert_eq!(prompt as usize, index);
            let samples = prompts.get(prompt);
            let ms = samples.len() * 1000 / SAMPLE_RATE_HZ as usize;
            assert!((500..6000).contains(&ms), "{prompt:?}: {ms} ms");
            let peak = samples.iter().map(|s| i32::from(*s).abs()).max().unwrap();
            // norm -3: a peak near 23 200.
            assert!(peak > 20_000, "{prompt:?}: peak {peak}");
        }
    }

    #[test]
    fn the_script_the_readme_and_the_code_agree() {
        let script = include_str!("../../../scripts/make-conference-prompts");
        let readme = include_str!("../prompts/README.md");
        for &prompt in Prompt::ALL {
            let line = format!("\"{}|{}\"", prompt.name(), prompt.text());
            assert!(script.contains(&line), "script lacks {line}");
            let row = format!("| `{}.wav` | {} |", prompt.name(), prompt.text());
            assert!(readme.contains(&row), "README lacks {row}");
        }
    }

    #[test]
    fn tones_are_at_their_frequencies_and_lengths() {
        let prompts = Prompts::load().unwrap();
        let joined = prompts.tone(Tone::Joined);
        assert_eq!(joined.len(), 2400);
        let first = &joined[..1200];
        assert!(goertzel_power(first, 1000.0, 8000) > 100.0 * goertzel_power(first, 1300.0, 8000));
        assert_eq!(prompts.tone(Tone::Entered).len(), 800);
        assert_eq!(prompts.tone(Tone::Left).len(), 800);
        let hold = prompts.tone(Tone::Hold);
        assert_eq!(hold.len(), 24_000);
        assert!(hold[3200..].iter().all(|&s| s == 0));
    }
}
