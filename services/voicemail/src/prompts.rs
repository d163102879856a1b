//! The shipped prompts: what voicemail says, and how it says a count.
//!
//! # What it owns
//! [`Prompt`] names each recording in `prompts/en/` (one variant per file,
//! with its file [`name`](Prompt::name) and the [`text`](Prompt::text) it
//! speaks); the files are compiled into the binary with `include_bytes!`,
//! so a node cannot start with a prompt missing. [`Prompts::load`] decodes
//! every one once, at start-up, into shared 8 kHz samples that every call
//! plays from ([`Prompts::get`] hands out an `Arc`, not a copy).
//! [`number`] says which prompts speak a count ("three hundred forty two",
//! American style, without "and").
//!
//! The files are G.711 µ-law WAV at 8000 Hz, synthesised by
//! `scripts/make-prompts` (espeak-ng and sox); `prompts/README.md` lists
//! each text, how it was made and its licence. Changing a text means
//! changing it in all three places; the tests check that they agree.
//!
//! # What it must not do
//! Nothing here reads a file at run time or synthesises speech: the
//! prompts are data in the repository, made once, reviewed, and committed.

use std::sync::Arc;

use dialtone_media::wav::{read_wav, WavLimits};

use crate::{Error, Result};

/// The longest prompt [`Prompts::load`] accepts: room above the longest
/// shipped one (the message menu, about 11 s) without letting a
/// mis-generated file of minutes through.
const MAX_PROMPT_MS: u32 = 30_000;

/// Declares the prompts once: each variant, its file's stem under
/// `prompts/en/` and its text, so the three cannot drift apart in code.
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

            /// The file's name without `.wav`, e.g. `"greeting_default"`.
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

            /// The WAV file's bytes, compiled in.
            fn wav(self) -> &'static [u8] {
                match self {
                    $(Prompt::$variant => include_bytes!(concat!("../prompts/en/", $name, ".wav")),)*
                }
            }
        }
    };
}

prompts! {
    GreetingDefault => "greeting_default", "The person you called is not available. Please leave a message after the tone. When you are done, hang up or press the pound key.";
    GreetingUnavailableFor => "greeting_unavailable_for", "Please leave a message for";
    MailboxFull => "mailbox_full", "The mailbox of the person you called is full. Please try again later. Goodbye.";
    EnterPin => "enter_pin", "Please enter your PIN, then press pound.";
    EnterMailbox => "enter_mailbox", "Please enter the mailbox number, then press pound.";
    WrongPin => "wrong_pin", "That PIN is not correct.";
    LockedOut => "locked_out", "Too many wrong PINs. This mailbox is locked for a while. Goodbye.";
    YouHave => "you_have", "You have";
    NewMessage => "new_message", "new message";
    NewMessages => "new_messages", "new messages";
    SavedMessage => "saved_message", "saved message";
    SavedMessages => "saved_messages", "saved messages";
    And => "and", "and";
    NoMessages => "no_messages", "You have no messages.";
    MainMenu => "main_menu", "To listen to new messages, press 1. For saved messages, press 2. To record your greeting, press 3. To exit, press star.";
    MessageMenu => "message_menu", "To replay, press 4. To save, press 5. For the next message, press 6. To delete, press 7. For the main menu, press star.";
    Message => "message", "Message";
    From => "from", "from";
    MessageSaved => "message_saved", "Message saved.";
    MessageDeleted => "message_deleted", "Message deleted.";
    NoMoreMessages => "no_more_messages", "No more messages.";
    RecordGreeting => "record_greeting", "Record your greeting after the tone, then press pound.";
    GreetingSaved => "greeting_saved", "Your greeting is saved.";
    InvalidChoice => "invalid_choice", "Sorry, that is not a choice.";
    Goodbye => "goodbye", "Goodbye.";
    Zero => "zero", "zero";
    One => "one", "one";
    Two => "two", "two";
    Three => "three", "three";
    Four => "four", "four";
    Five => "five", "five";
    Six => "six", "six";
    Seven => "seven", "seven";
    Eight => "eight", "eight";
    Nine => "nine", "nine";
    Ten => "ten", "ten";
    Eleven => "eleven", "eleven";
    Twelve => "twelve", "twelve";
    Thirteen => "thirteen", "thirteen";
    Fourteen => "fourteen", "fourteen";
    Fifteen => "fifteen", "fifteen";
    Sixteen => "sixteen", "sixteen";
    Seventeen => "seventeen", "seventeen";
    Eighteen => "eighteen", "eighteen";
    Nineteen => "nineteen", "nineteen";
    Twenty => "twenty", "twenty";
    Thirty => "thirty", "thirty";
    Forty => "forty", "forty";
    Fifty => "fifty", "fifty";
    Sixty => "sixty", "sixty";
    Seventy => "seventy", "seventy";
    Eighty => "eighty", "eighty";
    Ninety => "ninety", "ninety";
    Hundred => "hundred", "hundred";
    Thousand => "thousand", "thousand";
    Many => "many", "many";
    Beep => "beep", "(a tone: 250 ms of 1 kHz)";
}

/// Zero to nineteen, each its own word.
const UNITS: [Prompt; 20] = [
    Prompt::Zero,
    Prompt::One,
    Prompt::Two,
    Prompt::Three,
    Prompt::Four,
    Prompt::Five,
    Prompt::Six,
    Prompt::Seven,
    Prompt::Eight,
    Prompt::Nine,
    Prompt::Ten,
    Prompt::Eleven,
    Prompt::Twelve,
    Prompt::Thirteen,
    Prompt::Fourteen,
    Prompt::Fifteen,
    Prompt::Sixteen,
    Prompt::Seventeen,
    Prompt::Eighteen,
    Prompt::Nineteen,
];

/// Twenty to ninety, by their tens digit minus two.
const TENS: [Prompt; 8] = [
    Prompt::Twenty,
    Prompt::Thirty,
    Prompt::Forty,
    Prompt::Fifty,
    Prompt::Sixty,
    Prompt::Seventy,
    Prompt::Eighty,
    Prompt::Ninety,
];

/// The largest count [`number`] speaks as a number; above it, "many".
/// A mailbox holds at most 1000 messages, so no caller hears "many"
/// today; one digit before "thousand" keeps every count to at most six
/// prompts.
pub const MAX_SPOKEN: u32 = 9999;

/// The prompts that speak `n`: 0 → "zero", 21 → "twenty one", 342 →
/// "three hundred forty two", 1000 → "one thousand", above
/// [`MAX_SPOKEN`] → "many".
pub fn number(n: u32) -> Vec<Prompt> {
    if n > MAX_SPOKEN {
        return vec![Prompt::Many];
    }
    if n == 0 {
        return vec![Prompt::Zero];
    }
    // Every index below is a digit (n ≤ 9999) or a remainder below 20, so
    // each lookup finds its word; `get` rather than `[]` because the crate
    // keeps panics out of the paths a call runs through.
    let unit = |digit: u32| UNITS.get(digit as usize).copied();
    let mut spoken = Vec::with_capacity(6);
    let (thousands, hundreds, rest) = (n / 1000, n / 100 % 10, n % 100);
    if thousands > 0 {
        spoken.extend(unit(thousands));
        spoken.push(Prompt::Thousand);
    }
    if hundreds > 0 {
        spoken.extend(unit(hundreds));
        spoken.push(Prompt::Hundred);
    }
    if rest >= 20 {
        spoken.extend(TENS.get((rest / 10 - 2) as usize).copied());
        if rest % 10 > 0 {
            spoken.extend(unit(rest % 10));
        }
    } else if rest > 0 {
        spoken.extend(unit(rest));
    }
    spoken
}

/// Every prompt decoded to 8 kHz mono samples, shared by all calls.
#[derive(Clone)]
pub struct Prompts {
    /// One entry per prompt, in [`Prompt::ALL`]'s order.
    samples: Vec<Arc<[i16]>>,
}

impl Prompts {
    /// Decodes every shipped prompt; the node does it once, at start-up,
    /// and shares the result between calls. An error is a packaging mistake (a file that is not a
    /// WAV file the media plane reads) and names the prompt.
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
        Ok(Prompts { samples })
    }

    /// The prompt's samples at 8000 Hz (a shared handle, no copy).
    pub fn get(&self, prompt: Prompt) -> Arc<[i16]> {
        // `load` made one entry per prompt in declaration order, which is
        // the discriminant's order, so this index is always present.
        match self.samples.get(prompt as usize) {
            Some(samples) => Arc::clone(samples),
            None => Arc::from(Vec::new()),
        }
    }
}

impl std::fmt::Debug for Prompts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Half a million samples are no use in a log line.
        let total: usize = self.samples.iter().map(|s| s.len()).sum();
        f.debug_struct("Prompts")
            .field("prompts", &self.samples.len())
            .field("samples", &total)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dialtone_media::tone::{longest_tone_ms, tone_presence, SILENCE_RMS};
    use dialtone_media::wav::SAMPLE_RATE_HZ;

    use super::*;

    fn rms(samples: &[i16]) -> f64 {
        let sum: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
        (sum / samples.len().max(1) as f64).sqrt()
    }

    fn peak(samples: &[i16]) -> i32 {
        samples
            .iter()
            .map(|&s| i32::from(s).abs())
            .max()
            .unwrap_or(0)
    }

    fn ms(samples: usize) -> usize {
        samples * 1000 / SAMPLE_RATE_HZ as usize
    }

    #[test]
    fn declaration_order_is_the_discriminant_order() {
        for (index, &prompt) in Prompt::ALL.iter().enumerate() {
            assert_eq!(prompt as usize, index, "{prompt:?}");
        }
        assert_eq!(Prompt::ALL.len(), 57);
        let names: std::collections::BTreeSet<_> = Prompt::ALL.iter().map(|p| p.name()).collect();
        assert_eq!(names.len(), Prompt::ALL.len(), "names are unique");
    }

    #[test]
    fn every_file_is_8khz_mono_mulaw() {
        for &prompt in Prompt::ALL {
            let wav = prompt.wav();
            // sox writes `fmt ` first; its fields are at fixed offsets.
            assert_eq!(&wav[12..16], b"fmt ", "{}", prompt.name());
            let field = |at: usize| u16::from_le_bytes([wav[at], wav[at + 1]]);
            assert_eq!(field(20), 7, "{}: format tag µ-law", prompt.name());
            assert_eq!(field(22), 1, "{}: mono", prompt.name());
            let rate = u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]);
            assert_eq!(rate, 8000, "{}", prompt.name());
        }
    }

    #[test]
    fn every_prompt_loads_with_a_sensible_length_and_level() {
        let prompts = Prompts::load().unwrap();
        for &prompt in Prompt::ALL {
            let samples = prompts.get(prompt);
            let duration_ms = ms(samples.len());
            assert!(
                (200..=12_000).contains(&duration_ms),
                "{}: {duration_ms} ms",
                prompt.name()
            );
            let level = rms(&samples);
            assert!(
                level > 10.0 * SILENCE_RMS,
                "{}: RMS {level:.0} is close to silence",
                prompt.name()
            );
            if prompt != Prompt::Beep {
                // Normalised to -3 dBFS peak (23197); µ-law's steps near
                // full scale are about 1000 apart.
                let peak = peak(&samples);
                assert!(
                    (21_500..=24_500).contains(&peak),
                    "{}: peak {peak}",
                    prompt.name()
                );
            }
        }
    }

    #[test]
    fn silence_at_either_end_is_trimmed_to_about_50_ms() {
        let prompts = Prompts::load().unwrap();
        for &prompt in Prompt::ALL.iter().filter(|&&p| p != Prompt::Beep) {
            let samples = prompts.get(prompt);
            // 5 ms windows: where sound starts and ends.
            let loud: Vec<bool> = samples
                .chunks(40)
                .map(|window| rms(window) >= SILENCE_RMS)
                .collect();
            let first = loud.iter().position(|&l| l).unwrap() * 5;
            let last = (loud.len() - 1 - loud.iter().rposition(|&l| l).unwrap()) * 5;
            assert!((45..=60).contains(&first), "{}: {first} ms", prompt.name());
            assert!((45..=60).contains(&last), "{}: {last} ms", prompt.name());
        }
    }

    #[test]
    fn the_beep_is_250_ms_of_1_khz() {
        let prompts = Prompts::load().unwrap();
        let beep = prompts.get(Prompt::Beep);
        assert_eq!(beep.len(), 2000);
        // 10 ms windows: the first and last hold the 5 ms fades, which
        // still hold the tone.
        assert_eq!(longest_tone_ms(&beep, 1000.0, SAMPLE_RATE_HZ, 10), 250);
        for other_hz in [440.0, 800.0, 1200.0] {
            assert!(!tone_presence(&beep, other_hz, SAMPLE_RATE_HZ, 10)
                .into_iter()
                .any(|present| present));
        }
        // -12 dBFS peak, the speech's loudness rather than its peak.
        assert!((7_800..=8_700).contains(&peak(&beep)), "{}", peak(&beep));
        // Faded in and out: no click at the ends.
        assert!(beep[0].abs() < 300 && beep[1999].abs() < 300);
    }

    #[test]
    fn get_shares_rather_than_copies() {
        let prompts = Prompts::load().unwrap();
        let first = prompts.get(Prompt::MainMenu);
        let second = prompts.get(Prompt::MainMenu);
        assert!(Arc::ptr_eq(&first, &second));
        assert_eq!(
            format!("{prompts:?}"),
            format!(
                "Prompts {{ prompts: 57, samples: {} }}",
                Prompt::ALL
                    .iter()
                    .map(|&p| prompts.get(p).len())
                    .sum::<usize>()
            )
        );
    }

    #[test]
    fn numbers_are_spoken_american_style() {
        use Prompt::*;
        let cases: &[(u32, &[Prompt])] = &[
            (0, &[Zero]),
            (1, &[One]),
            (7, &[Seven]),
            (10, &[Ten]),
            (13, &[Thirteen]),
            (19, &[Nineteen]),
            (20, &[Twenty]),
            (21, &[Twenty, One]),
            (40, &[Forty]),
            (99, &[Ninety, Nine]),
            (100, &[One, Hundred]),
            (101, &[One, Hundred, One]),
            (110, &[One, Hundred, Ten]),
            (342, &[Three, Hundred, Forty, Two]),
            (999, &[Nine, Hundred, Ninety, Nine]),
            (1000, &[One, Thousand]),
            (1001, &[One, Thousand, One]),
            (1015, &[One, Thousand, Fifteen]),
            (2300, &[Two, Thousand, Three, Hundred]),
            (9999, &[Nine, Thousand, Nine, Hundred, Ninety, Nine]),
            (10_000, &[Many]),
            (u32::MAX, &[Many]),
        ];
        for (n, spoken) in cases {
            assert_eq!(number(*n), *spoken, "{n}");
        }
    }

    /// Reads the words back as a listener would add them up.
    fn hear(spoken: &[Prompt]) -> Option<u32> {
        let mut total = 0;
        let mut group = 0;
        for &prompt in spoken {
            if let Some(value) = UNITS.iter().position(|&p| p == prompt) {
                group += value as u32;
            } else if let Some(tens) = TENS.iter().position(|&p| p == prompt) {
                group += (tens as u32 + 2) * 10;
            } else if prompt == Prompt::Hundred {
                group *= 100;
            } else if prompt == Prompt::Thousand {
                total += group * 1000;
                group = 0;
            } else {
                return None;
            }
        }
        Some(total + group)
    }

    #[test]
    fn every_count_up_to_9999_is_heard_as_itself() {
        for n in 0..=MAX_SPOKEN {
            let spoken = number(n);
            assert_eq!(hear(&spoken), Some(n), "{n}: {spoken:?}");
            assert!(spoken.len() <= 6, "{n}: {spoken:?}");
            assert!(n == 0 || !spoken.contains(&Prompt::Zero), "{n}: {spoken:?}");
        }
    }

    fn repository_file(path: &str) -> String {
        let full = format!("{}/{path}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
    }

    /// The README's table rows: `| `name.wav` | text |`.
    fn readme_rows() -> BTreeMap<String, String> {
        repository_file("prompts/README.md")
            .lines()
            .filter_map(|line| {
                let row = line.strip_prefix("| `")?;
                let (file, rest) = row.split_once("` |")?;
                let text = rest.trim().strip_suffix('|')?.trim();
                Some((file.to_owned(), text.to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_readme_lists_exactly_the_files_with_their_texts() {
        let rows = readme_rows();
        let in_directory: Vec<String> =
            std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/prompts/en"))
                .unwrap()
                .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".wav"))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .collect();
        assert_eq!(
            rows.keys().cloned().collect::<Vec<_>>(),
            in_directory,
            "README rows against prompts/en/*.wav"
        );
        let declared: BTreeMap<String, String> = Prompt::ALL
            .iter()
            .map(|p| (format!("{}.wav", p.name()), p.text().to_owned()))
            .collect();
        assert_eq!(rows, declared, "README against Prompt::text");
    }

    #[test]
    fn the_script_synthesises_every_text_but_the_beep() {
        // Its lines are `  "name|text"` in the `prompts` array.
        let script = repository_file("../../scripts/make-prompts");
        let synthesised: BTreeMap<String, String> = script
            .lines()
            .filter_map(|line| {
                let entry = line.trim().strip_prefix('"')?.strip_suffix('"')?;
                let (name, text) = entry.split_once('|')?;
                Some((name.to_owned(), text.to_owned()))
            })
            .collect();
        let declared: BTreeMap<String, String> = Prompt::ALL
            .iter()
            .filter(|&&p| p != Prompt::Beep)
            .map(|p| (p.name().to_owned(), p.text().to_owned()))
            .collect();
        assert_eq!(synthesised, declared);
    }
}
