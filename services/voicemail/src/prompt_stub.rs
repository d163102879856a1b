//! A stand-in for [`crate::prompts`]' `Prompt` and `number` while the
//! shipped prompts are written beside this code; it goes when they land,
//! and nothing but the applications' code names it.

/// One shipped prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Prompt {
    GreetingDefault,
    MailboxFull,
    EnterPin,
    EnterMailbox,
    WrongPin,
    LockedOut,
    YouHave,
    NewMessage,
    NewMessages,
    SavedMessage,
    SavedMessages,
    And,
    NoMessages,
    MainMenu,
    MessageMenu,
    Message,
    From,
    MessageSaved,
    MessageDeleted,
    NoMoreMessages,
    RecordGreeting,
    GreetingSaved,
    InvalidChoice,
    Goodbye,
    Zero,
    One,
    Two,
    Three,
    Four,
    Five,
    Six,
    Seven,
    Eight,
    Nine,
    Ten,
    Eleven,
    Twelve,
    Thirteen,
    Fourteen,
    Fifteen,
    Sixteen,
    Seventeen,
    Eighteen,
    Nineteen,
    Twenty,
    Thirty,
    Forty,
    Fifty,
    Sixty,
    Seventy,
    Eighty,
    Ninety,
    Hundred,
    Thousand,
    Many,
    Beep,
}

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

/// How a count is spoken: 342 is [Three, Hundred, Forty, Two]; above 9999, "many".
pub fn number(n: u32) -> Vec<Prompt> {
    if n > 9_999 {
        return vec![Prompt::Many];
    }
    let mut out = Vec::new();
    let (thousands, rest) = (n / 1_000, n % 1_000);
    let (hundreds, rest) = (rest / 100, rest % 100);
    let unit = |k: u32| UNITS.get(k as usize).copied().unwrap_or(Prompt::Many);
    if thousands > 0 {
        out.extend([unit(thousands), Prompt::Thousand]);
    }
    if hundreds > 0 {
        out.extend([unit(hundreds), Prompt::Hundred]);
    }
    if rest >= 20 {
        out.push(
            TENS.get(rest as usize / 10 - 2)
                .copied()
                .unwrap_or(Prompt::Many),
        );
        if rest % 10 > 0 {
            out.push(unit(rest % 10));
        }
    } else if rest > 0 || out.is_empty() {
        out.push(unit(rest));
    }
    out
}
