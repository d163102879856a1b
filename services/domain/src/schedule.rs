//! Time conditions for routing rules: "business hours", "closed on
//! holidays" (ADR 0017).
//!
//! A [`Schedule`] is written as text, one clause per `;`:
//!
//! ```text
//! mon-fri 09:00-12:00, 13:00-17:00; sat 10:00-14:00;
//! holidays 2026-12-25, 2027-01-01; holidays 2026-12-24 12:00-24:00
//! ```
//!
//! - A weekly clause is a set of days (`mon`..`sun` or the full names,
//!   ranges `mon-fri`, wrapping ranges `fri-mon`, lists `mon,wed,fri`,
//!   `daily` or `*`) and one or more time ranges `HH:MM-HH:MM`. `24:00` may
//!   end a range; a range that ends before it starts (`22:00-06:00`) belongs
//!   to its start day and runs into the next one.
//! - A `holidays` clause lists dates (`2026-12-25`) and date ranges
//!   (`2026-12-24..2026-12-26`), optionally followed by time ranges (a
//!   partial holiday; without them, whole days). Holidays are exclusions: a
//!   moment in a holiday is outside the schedule whatever the weekly clauses
//!   say. A schedule therefore needs at least one weekly clause: holidays
//!   alone would cover nothing.
//!
//! Words are case-insensitive and whitespace is free around `,`, `-` and
//! `..`. [`Schedule`]'s `Display` writes the canonical form (lower case,
//! day sets folded into ranges) and parsing it gives the same schedule back.
//!
//! Times are wall-clock times in a [`TimeZone`], passed in with `now` (the
//! domain reads no clock): on a spring-forward day the skipped local times
//! simply never happen, so they are never covered; in the hour repeated in
//! autumn, a covered local time is covered both times it happens.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::civil::{Date, DateTime};
use serde::{Deserialize, Serialize};

use crate::{Error, Result, Timestamp};

const FIELD: &str = "schedule";
const MINUTES_PER_DAY: usize = 24 * 60;
const MICROS_PER_DAY: i64 = 86_400 * 1_000_000;

/// An IANA time zone ("Europe/Berlin", "America/New_York", "UTC"), from the
/// database compiled into the program, so a schedule means the same on
/// every machine whatever its tzdata. Written and serialized as its name.
#[derive(Clone)]
pub struct TimeZone {
    /// The database's own spelling of the name (lookups ignore case).
    name: String,
    zone: jiff::tz::TimeZone,
}

impl TimeZone {
    /// Looks the name up; the error names the value that is not a zone.
    pub fn parse(input: &str) -> Result<Self> {
        let field = "time zone";
        let name = input.trim();
        if name.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        let zone = jiff::tz::TimeZone::get(name).map_err(|_| {
            Error::invalid(
                field,
                format!("\"{name}\" is not an IANA time zone name (such as Europe/Berlin)"),
            )
        })?;
        let name = zone.iana_name().unwrap_or(name).to_owned();
        Ok(TimeZone { name, zone })
    }

    /// Coordinated Universal Time.
    pub fn utc() -> Self {
        TimeZone {
            name: "UTC".to_owned(),
            zone: jiff::tz::TimeZone::UTC,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The wall-clock time at `instant`.
    fn local(&self, instant: jiff::Timestamp) -> DateTime {
        self.zone.to_datetime(instant)
    }
}

impl TimeZone {
    /// Whether this is UTC, the zone of a domain that never set one.
    pub fn is_utc(&self) -> bool {
        self.name == "UTC"
    }
}

/// UTC: the time zone of a domain that never set one.
impl Default for TimeZone {
    fn default() -> Self {
        TimeZone::utc()
    }
}

impl PartialEq for TimeZone {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}

impl Eq for TimeZone {}

impl std::hash::Hash for TimeZone {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state);
    }
}

impl fmt::Debug for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TimeZone").field(&self.name).finish()
    }
}

impl fmt::Display for TimeZone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl FromStr for TimeZone {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TimeZone::parse(s)
    }
}

impl TryFrom<String> for TimeZone {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        TimeZone::parse(&value)
    }
}

impl From<TimeZone> for String {
    fn from(value: TimeZone) -> Self {
        value.name
    }
}

impl Serialize for TimeZone {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.name)
    }
}

impl<'de> Deserialize<'de> for TimeZone {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        TimeZone::parse(&name).map_err(serde::de::Error::custom)
    }
}

/// When a routing rule applies: weekly opening times less holidays, in
/// local time. See the [module documentation](self) for the text form.
///
/// The text is compiled once, when parsed, into one bit per minute of the
/// week and per holiday date, so [`Schedule::contains`] is two bit lookups
/// and a binary search over the holiday dates: no allocation, no parsing,
/// cheap enough to run on every call routed.
#[derive(Clone, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Schedule {
    clauses: Vec<Clause>,
    compiled: Box<Compiled>,
}

impl Schedule {
    /// The longest text accepted, in bytes.
    pub const MAX_LEN: usize = 4096;
    /// The most clauses a schedule may have.
    pub const MAX_CLAUSES: usize = 64;
    /// The most holiday dates, counted over all `holidays` clauses, a date
    /// range counting each of its days: a year's worth. This also bounds
    /// the memory a schedule takes (one 180-byte minute mask per date).
    pub const MAX_HOLIDAY_DATES: usize = 366;
    /// How far [`Schedule::next_change`] looks ahead.
    pub const HORIZON_DAYS: i64 = 400;

    pub fn parse(input: &str) -> Result<Self> {
        if input.len() > Self::MAX_LEN {
            return Err(Error::invalid(
                FIELD,
                format!("{} bytes, at most {} allowed", input.len(), Self::MAX_LEN),
            ));
        }
        let texts: Vec<&str> = input
            .split(';')
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .collect();
        if texts.is_empty() {
            return Err(Error::invalid(FIELD, "must not be empty"));
        }
        if texts.len() > Self::MAX_CLAUSES {
            return Err(Error::invalid(
                FIELD,
                format!(
                    "{} clauses, at most {} allowed",
                    texts.len(),
                    Self::MAX_CLAUSES
                ),
            ));
        }
        let mut clauses = Vec::with_capacity(texts.len());
        let mut holiday_dates = 0;
        for (index, text) in texts.iter().enumerate() {
            let clause = Clause::parse(text, &mut holiday_dates).map_err(|reason| {
                Error::invalid(FIELD, format!("clause {}: {reason}", index + 1))
            })?;
            clauses.push(clause);
        }
        if !clauses.iter().any(|c| matches!(c, Clause::Weekly { .. })) {
            return Err(Error::invalid(
                FIELD,
                "holidays only take time out of weekly clauses, and there is none \
                 (for every day but the holidays, add \"daily 00:00-24:00\")",
            ));
        }
        let compiled = Box::new(Compiled::new(&clauses));
        Ok(Schedule { clauses, compiled })
    }

    /// Whether the moment `now_us` (µs since the Unix epoch) is in the
    /// schedule, in the wall-clock time of `tz`. A moment outside the range
    /// of calendar dates (beyond the years -9999..9999) is outside.
    ///
    /// Allocation-free: this is meant to run on every call routed.
    pub fn contains(&self, now_us: Timestamp, tz: &TimeZone) -> bool {
        self.contains_local(&LocalTime::new(now_us, tz))
    }

    /// [`Schedule::contains`] at a moment already read on the wall clock
    /// of its time zone: for testing many schedules at one moment, reading
    /// the clock once (the time zone conversion costs more than the test).
    pub fn contains_local(&self, local: &LocalTime) -> bool {
        local
            .0
            .is_some_and(|minute| self.compiled.covers_minute(&minute))
    }

    /// The next moment after `now_us` at which [`Schedule::contains`]
    /// changes its answer: it gives the same answer from `now_us` up to,
    /// not including, the moment returned, and the other one at it. `None`
    /// when it does not change within [`Schedule::HORIZON_DAYS`] days.
    ///
    /// For telling a caller "closed until Monday 09:00"; it scans minute
    /// masks day by day, so it costs more than `contains` (tens of
    /// microseconds for a year of unchanging schedule).
    pub fn next_change(&self, now_us: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        let horizon_us = now_us.checked_add(Self::HORIZON_DAYS * MICROS_PER_DAY)?;
        let mut at = jiff::Timestamp::from_microsecond(now_us).ok()?;
        let inside = self.compiled.covers(tz.local(at));
        // Between two transitions of the zone (DST changes) wall-clock time
        // runs at a fixed offset, so the next change there is the next
        // minute whose mask bit differs, mapped back with that offset. A
        // transition itself may jump over or back across a boundary: then
        // the answer at the transition decides.
        loop {
            let offset = tz.zone.to_offset(at);
            let transition = tz.zone.following(at).next().map(|t| t.timestamp());
            let change = self
                .compiled
                .next_local_change(offset.to_datetime(at), inside, Self::HORIZON_DAYS + 2)
                .and_then(|local| offset.to_timestamp(local).ok());
            if let Some(change) = change {
                if transition.is_none_or(|transition| change < transition) {
                    let change_us = change.as_microsecond();
                    return (change_us <= horizon_us).then_some(change_us);
                }
            }
            let transition = transition?;
            if transition.as_microsecond() > horizon_us {
                return None;
            }
            if self.compiled.covers(tz.local(transition)) != inside {
                return Some(transition.as_microsecond());
            }
            at = transition;
        }
    }
}

impl PartialEq for Schedule {
    fn eq(&self, other: &Self) -> bool {
        // `compiled` is a function of the clauses.
        self.clauses == other.clauses
    }
}

impl Eq for Schedule {}

impl fmt::Debug for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Schedule").field(&self.to_string()).finish()
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, clause) in self.clauses.iter().enumerate() {
            if index > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{clause}")?;
        }
        Ok(())
    }
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Schedule::parse(s)
    }
}

impl TryFrom<String> for Schedule {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Schedule::parse(&value)
    }
}

impl From<Schedule> for String {
    fn from(value: Schedule) -> Self {
        value.to_string()
    }
}

/// A moment as the wall clock of a [`TimeZone`] shows it, to the minute:
/// read once ([`LocalTime::new`]) to test any number of schedules at that
/// moment ([`Schedule::contains_local`], [`TimeCondition::holds_local`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalTime(Option<LocalMinute>);

impl LocalTime {
    /// The moment `now_us` (µs since the Unix epoch) in `tz`. A moment
    /// outside the range of calendar dates is in no schedule.
    pub fn new(now_us: Timestamp, tz: &TimeZone) -> Self {
        LocalTime(
            jiff::Timestamp::from_microsecond(now_us)
                .ok()
                .map(|instant| LocalMinute::of(tz.local(instant))),
        )
    }
}

/// What [`Compiled::covers_minute`] reads of a wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct LocalMinute {
    date: Date,
    /// Monday 0.
    weekday: usize,
    minute: usize,
}

impl LocalMinute {
    fn of(local: DateTime) -> Self {
        let date = local.date();
        LocalMinute {
            date,
            weekday: Compiled::weekday(date),
            minute: minute_of_day(local),
        }
    }
}

/// Whether a [`TimeCondition`] holds inside its schedule or outside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Applies {
    Inside,
    Outside,
}

/// A schedule with a direction: `inside mon-fri 09:00-17:00` holds during
/// business hours, `outside mon-fri 09:00-17:00` out of them. Without the
/// word, `inside`; `Display` always writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TimeCondition {
    pub applies: Applies,
    pub schedule: Schedule,
}

impl TimeCondition {
    pub fn parse(input: &str) -> Result<Self> {
        let text = input.trim_start();
        let word_end = text
            .find(|c: char| c.is_ascii_whitespace())
            .unwrap_or(text.len());
        let (word, rest) = text.split_at(word_end);
        let (applies, schedule) = if word.eq_ignore_ascii_case("inside") {
            (Applies::Inside, rest)
        } else if word.eq_ignore_ascii_case("outside") {
            (Applies::Outside, rest)
        } else {
            (Applies::Inside, text)
        };
        Ok(TimeCondition {
            applies,
            schedule: Schedule::parse(schedule)?,
        })
    }

    /// Whether the condition holds at `now_us` in `tz`. Allocation-free,
    /// as [`Schedule::contains`].
    pub fn holds(&self, now_us: Timestamp, tz: &TimeZone) -> bool {
        self.holds_local(&LocalTime::new(now_us, tz))
    }

    /// [`TimeCondition::holds`] at a moment already read on the wall clock
    /// of its time zone ([`Schedule::contains_local`]).
    pub fn holds_local(&self, local: &LocalTime) -> bool {
        let inside = self.schedule.contains_local(local);
        match self.applies {
            Applies::Inside => inside,
            Applies::Outside => !inside,
        }
    }

    /// The next moment at which [`TimeCondition::holds`] changes; see
    /// [`Schedule::next_change`].
    pub fn next_change(&self, now_us: Timestamp, tz: &TimeZone) -> Option<Timestamp> {
        self.schedule.next_change(now_us, tz)
    }
}

impl fmt::Display for TimeCondition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let word = match self.applies {
            Applies::Inside => "inside",
            Applies::Outside => "outside",
        };
        write!(f, "{word} {}", self.schedule)
    }
}

impl FromStr for TimeCondition {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        TimeCondition::parse(s)
    }
}

impl TryFrom<String> for TimeCondition {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        TimeCondition::parse(&value)
    }
}

impl From<TimeCondition> for String {
    fn from(value: TimeCondition) -> Self {
        value.to_string()
    }
}

/// One clause as written (after normalising), kept for `Display`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Clause {
    Weekly {
        /// Bit 0 is Monday, bit 6 Sunday.
        days: u8,
        /// Never empty.
        hours: Vec<Hours>,
    },
    Holidays {
        dates: Vec<Dates>,
        /// Empty: whole days.
        hours: Vec<Hours>,
    },
}

/// A time range in minutes of the day: `start` in 0..1440, `end` in
/// 0..=1440, never equal. `end < start` runs into the next day.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hours {
    start: u16,
    end: u16,
}

/// Holiday dates `first..=last` (equal for a single date).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Dates {
    first: Date,
    last: Date,
}

const DAY_NAMES: [(&str, &str); 7] = [
    ("mon", "monday"),
    ("tue", "tuesday"),
    ("wed", "wednesday"),
    ("thu", "thursday"),
    ("fri", "friday"),
    ("sat", "saturday"),
    ("sun", "sunday"),
];
const EVERY_DAY: u8 = 0x7f;

impl Clause {
    /// Parses one clause; the error says what is wrong, quoting the text.
    /// `holiday_dates` counts the dates of all clauses so far.
    fn parse(text: &str, holiday_dates: &mut usize) -> Result<Clause, String> {
        let mut tokens = Tokens::new(text)?;
        let clause = match tokens.peek() {
            Some(Token::Word(word))
                if word.eq_ignore_ascii_case("holidays")
                    || word.eq_ignore_ascii_case("holiday") =>
            {
                tokens.next();
                let dates = tokens.dates(holiday_dates)?;
                let hours = match tokens.peek() {
                    Some(Token::Time(_)) => tokens.hours()?,
                    _ => Vec::new(),
                };
                Clause::Holidays { dates, hours }
            }
            _ => {
                let days = tokens.days()?;
                let hours = match tokens.peek() {
                    Some(Token::Time(_)) => tokens.hours()?,
                    _ => {
                        return Err(format!(
                            "{} after the days: a time range such as 09:00-17:00 is needed \
                             (00:00-24:00 for whole days)",
                            found(tokens.peek())
                        ))
                    }
                };
                Clause::Weekly { days, hours }
            }
        };
        if let Some(token) = tokens.peek() {
            return Err(format!("unexpected \"{}\"", token.text()));
        }
        Ok(clause)
    }
}

impl fmt::Display for Clause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Clause::Weekly { days, hours } => {
                write_days(f, *days)?;
                f.write_str(" ")?;
                write_list(f, hours)
            }
            Clause::Holidays { dates, hours } => {
                f.write_str("holidays ")?;
                write_list(f, dates)?;
                if !hours.is_empty() {
                    f.write_str(" ")?;
                    write_list(f, hours)?;
                }
                Ok(())
            }
        }
    }
}

/// Days as runs in week order, each starting where the day before is not
/// in the set: `mon-fri`, `fri-mon`, `mon,wed,fri`, `daily`.
fn write_days(f: &mut fmt::Formatter<'_>, days: u8) -> fmt::Result {
    if days == EVERY_DAY {
        return f.write_str("daily");
    }
    let has = |day: usize| days & (1 << (day % 7)) != 0;
    let mut first = true;
    for (start, (name, _)) in DAY_NAMES.iter().enumerate() {
        if !has(start) || has(start + 6) {
            continue;
        }
        let mut last = start;
        while has(last + 1) {
            last += 1;
        }
        if !first {
            f.write_str(",")?;
        }
        first = false;
        f.write_str(name)?;
        if last != start {
            write!(f, "-{}", DAY_NAMES[last % 7].0)?;
        }
    }
    Ok(())
}

fn write_list<T: fmt::Display>(f: &mut fmt::Formatter<'_>, items: &[T]) -> fmt::Result {
    for (index, item) in items.iter().enumerate() {
        if index > 0 {
            f.write_str(", ")?;
        }
        write!(f, "{item}")?;
    }
    Ok(())
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

impl fmt::Display for Dates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_date(f, self.first)?;
        if self.last != self.first {
            f.write_str("..")?;
            write_date(f, self.last)?;
        }
        Ok(())
    }
}

fn write_date(f: &mut fmt::Formatter<'_>, date: Date) -> fmt::Result {
    write!(
        f,
        "{:04}-{:02}-{:02}",
        date.year(),
        date.month(),
        date.day()
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Star,
    /// Digits, `:`, digits (validated when read).
    Time(&'a str),
    /// Four digits, `-`, digits, maybe `-` and digits (validated when read).
    Date(&'a str),
    /// Digits alone.
    Number(&'a str),
    Dash,
    Comma,
    DotDot,
}

impl<'a> Token<'a> {
    fn text(self) -> &'a str {
        match self {
            Token::Word(text) | Token::Time(text) | Token::Date(text) | Token::Number(text) => text,
            Token::Star => "*",
            Token::Dash => "-",
            Token::Comma => ",",
            Token::DotDot => "..",
        }
    }
}

/// What was found where something else was expected, for messages.
fn found(token: Option<Token<'_>>) -> String {
    match token {
        Some(token) => format!("\"{}\"", token.text()),
        None => "nothing".to_owned(),
    }
}

/// The tokens of one clause and a cursor over them.
struct Tokens<'a> {
    tokens: Vec<Token<'a>>,
    next: usize,
}

fn digits_end(bytes: &[u8], mut i: usize) -> usize {
    while bytes.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

impl<'a> Tokens<'a> {
    fn new(text: &'a str) -> Result<Self, String> {
        let bytes = text.as_bytes();
        let mut tokens = Vec::new();
        let mut i = 0;
        while let Some(&byte) = bytes.get(i) {
            let start = i;
            let token = match byte {
                _ if byte.is_ascii_whitespace() => {
                    i += 1;
                    continue;
                }
                b',' => {
                    i += 1;
                    Token::Comma
                }
                b'-' => {
                    i += 1;
                    Token::Dash
                }
                b'*' => {
                    i += 1;
                    Token::Star
                }
                b'.' if bytes.get(i + 1) == Some(&b'.') => {
                    i += 2;
                    Token::DotDot
                }
                _ if byte.is_ascii_alphabetic() => {
                    while bytes.get(i).is_some_and(u8::is_ascii_alphanumeric) {
                        i += 1;
                    }
                    Token::Word(&text[start..i])
                }
                _ if byte.is_ascii_digit() => {
                    i = digits_end(bytes, i);
                    let digit_at = |i: usize| bytes.get(i).is_some_and(u8::is_ascii_digit);
                    if bytes.get(i) == Some(&b':') {
                        i = digits_end(bytes, i + 1);
                        Token::Time(&text[start..i])
                    } else if i - start == 4 && bytes.get(i) == Some(&b'-') && digit_at(i + 1) {
                        // A year: a date, not a time range like "0900-1700"
                        // (which has no colon and is refused as a date).
                        i = digits_end(bytes, i + 1);
                        if bytes.get(i) == Some(&b'-') && digit_at(i + 1) {
                            i = digits_end(bytes, i + 1);
                        }
                        Token::Date(&text[start..i])
                    } else {
                        Token::Number(&text[start..i])
                    }
                }
                _ => {
                    // Every byte consumed so far is ASCII, so `start` is a
                    // character boundary.
                    let c = text[start..].chars().next().unwrap_or_default();
                    return Err(format!("unexpected \"{c}\""));
                }
            };
            tokens.push(token);
        }
        Ok(Tokens { tokens, next: 0 })
    }

    fn peek(&self) -> Option<Token<'a>> {
        self.tokens.get(self.next).copied()
    }

    fn peek_second(&self) -> Option<Token<'a>> {
        self.tokens.get(self.next + 1).copied()
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let token = self.peek();
        self.next += 1;
        token
    }

    /// A comma continuing a list, unless what follows it is a time range
    /// (a comma between days or dates and the times is tolerated).
    fn list_continues(&mut self) -> bool {
        if self.peek() == Some(Token::Comma) && !matches!(self.peek_second(), Some(Token::Time(_)))
        {
            self.next();
            return true;
        }
        if self.peek() == Some(Token::Comma) {
            self.next();
        }
        false
    }

    /// `mon-fri`, `mon,wed`, `daily`... as a bit set, bit 0 Monday.
    fn days(&mut self) -> Result<u8, String> {
        let mut days = 0;
        loop {
            days |= self.day_item()?;
            if !self.list_continues() {
                return Ok(days);
            }
        }
    }

    fn day_item(&mut self) -> Result<u8, String> {
        let first = match self.next() {
            Some(Token::Star) => return Ok(EVERY_DAY),
            Some(Token::Word(word)) if word.eq_ignore_ascii_case("daily") => return Ok(EVERY_DAY),
            Some(Token::Word(word)) => day_of(word)?,
            Some(Token::Time(time)) => {
                return Err(format!(
                    "\"{time}\": a clause starts with days (mon-fri, sat, daily...) or \"holidays\""
                ))
            }
            other => return Err(format!("{} where days were expected", found(other))),
        };
        if self.peek() != Some(Token::Dash) {
            return Ok(1 << first);
        }
        self.next();
        let last = match self.next() {
            Some(Token::Word(word)) => day_of(word)?,
            other => {
                return Err(format!(
                    "{} where a day was expected after \"-\"",
                    found(other)
                ))
            }
        };
        let mut days = 0;
        let mut day = first;
        loop {
            days |= 1 << day;
            if day == last {
                return Ok(days);
            }
            day = (day + 1) % 7;
        }
    }

    /// One or more time ranges, comma-separated.
    fn hours(&mut self) -> Result<Vec<Hours>, String> {
        let mut hours = Vec::new();
        loop {
            hours.push(self.hours_item()?);
            if self.peek() != Some(Token::Comma) {
                return Ok(hours);
            }
            self.next();
        }
    }

    fn hours_item(&mut self) -> Result<Hours, String> {
        let start_text = match self.next() {
            Some(Token::Time(text)) => text,
            other => {
                return Err(format!(
                    "{} where a time range such as 09:00-17:00 was expected",
                    found(other)
                ))
            }
        };
        if self.peek() != Some(Token::Dash) {
            return Err(format!(
                "\"{start_text}\" is not a range: write HH:MM-HH:MM"
            ));
        }
        self.next();
        let end_text = match self.next() {
            Some(Token::Time(text)) => text,
            other => {
                return Err(format!(
                    "{} where the end of the range \"{start_text}-\" was expected",
                    found(other)
                ))
            }
        };
        let start = minute_of(start_text)?;
        let end = minute_of(end_text)?;
        if usize::from(start) == MINUTES_PER_DAY {
            return Err(format!(
                "\"{start_text}-{end_text}\": a range cannot start at 24:00"
            ));
        }
        if start == end {
            return Err(format!("\"{start_text}-{end_text}\": empty range"));
        }
        Ok(Hours { start, end })
    }

    /// Dates and date ranges, comma-separated; counts them into `count`.
    fn dates(&mut self, count: &mut usize) -> Result<Vec<Dates>, String> {
        let mut dates = Vec::new();
        loop {
            let item = self.dates_item()?;
            *count += days_in(item);
            if *count > Schedule::MAX_HOLIDAY_DATES {
                return Err(format!(
                    "more than {} holiday dates",
                    Schedule::MAX_HOLIDAY_DATES
                ));
            }
            dates.push(item);
            if !self.list_continues() {
                return Ok(dates);
            }
        }
    }

    fn dates_item(&mut self) -> Result<Dates, String> {
        let first_text = match self.next() {
            Some(Token::Date(text)) => text,
            other => {
                return Err(format!(
                    "{} where a date YYYY-MM-DD was expected",
                    found(other)
                ))
            }
        };
        let first = date_of(first_text)?;
        match self.peek() {
            Some(Token::DotDot) => {}
            Some(Token::Dash) => {
                return Err(format!(
                    "\"{first_text}-\": a range of dates is written with \"..\" \
                     (2026-12-24..2026-12-26)"
                ))
            }
            _ => return Ok(Dates { first, last: first }),
        }
        self.next();
        let last_text = match self.next() {
            Some(Token::Date(text)) => text,
            other => {
                return Err(format!(
                    "{} where the end of \"{first_text}..\" was expected",
                    found(other)
                ))
            }
        };
        let last = date_of(last_text)?;
        if last < first {
            return Err(format!(
                "\"{first_text}..{last_text}\": the range ends before it starts"
            ));
        }
        Ok(Dates { first, last })
    }
}

/// The index of a day name, Monday 0.
fn day_of(word: &str) -> Result<u8, String> {
    DAY_NAMES
        .iter()
        .position(|(short, long)| {
            word.eq_ignore_ascii_case(short) || word.eq_ignore_ascii_case(long)
        })
        .and_then(|index| u8::try_from(index).ok())
        .ok_or_else(|| {
            format!("unknown day \"{word}\" (mon, tue, wed, thu, fri, sat, sun, daily or *)")
        })
}

/// The value of a run of ASCII digits (at most a few, checked by callers).
fn number(digits: &str) -> u32 {
    digits
        .bytes()
        .fold(0, |value, digit| value * 10 + u32::from(digit - b'0'))
}

fn all_digits(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

/// `HH:MM` (or `H:MM`) as minutes of the day, 24:00 being 1440.
fn minute_of(text: &str) -> Result<u16, String> {
    let (hour, minute) = text.split_once(':').unwrap_or((text, ""));
    let shaped = (1..=2).contains(&hour.len())
        && minute.len() == 2
        && all_digits(hour)
        && all_digits(minute);
    if !shaped {
        return Err(format!("\"{text}\": a time is written HH:MM"));
    }
    let (hour, minute) = (number(hour), number(minute));
    if hour > 24 {
        return Err(format!("\"{text}\": hour must be 00-24"));
    }
    if minute > 59 {
        return Err(format!("\"{text}\": minute must be 00-59"));
    }
    if hour == 24 && minute != 0 {
        return Err(format!("\"{text}\": 24:00 is the latest time"));
    }
    // At most 24 * 60, so it fits.
    Ok(u16::try_from(hour * 60 + minute).unwrap_or(u16::MAX))
}

/// `YYYY-MM-DD` as a date of the proleptic Gregorian calendar.
fn date_of(text: &str) -> Result<Date, String> {
    let bytes = text.as_bytes();
    let shaped = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && all_digits(&text[..4])
        && all_digits(&text[5..7])
        && all_digits(&text[8..]);
    if !shaped {
        return Err(format!("\"{text}\": a date is written YYYY-MM-DD"));
    }
    let month = number(&text[5..7]);
    if !(1..=12).contains(&month) {
        return Err(format!("\"{text}\": month must be 01-12"));
    }
    // Four, two and two digits: each fits.
    let year = i16::try_from(number(&text[..4])).unwrap_or(i16::MAX);
    let month = i8::try_from(month).unwrap_or(i8::MAX);
    let day = i8::try_from(number(&text[8..])).unwrap_or(i8::MAX);
    Date::new(year, month, day).map_err(|_| format!("\"{text}\": no such date"))
}

/// How many dates a range holds, counting no further than one past the
/// limit (a range over centuries is refused without walking it).
fn days_in(dates: Dates) -> usize {
    let mut count = 0;
    let mut date = dates.first;
    while date <= dates.last && count <= Schedule::MAX_HOLIDAY_DATES {
        count += 1;
        match date.tomorrow() {
            Ok(next) => date = next,
            Err(_) => break,
        }
    }
    count
}

/// One bit per minute of a day, bit `m` for the minute starting `m`
/// minutes after midnight.
#[derive(Clone, Copy, PartialEq, Eq)]
struct DayMask([u64; DayMask::WORDS]);

impl DayMask {
    const WORDS: usize = MINUTES_PER_DAY.div_ceil(64);
    const EMPTY: DayMask = DayMask([0; DayMask::WORDS]);

    fn set(&mut self, minutes: std::ops::Range<usize>) {
        for minute in minutes {
            self.0[minute / 64] |= 1 << (minute % 64);
        }
    }

    fn get(&self, minute: usize) -> bool {
        self.0[minute / 64] & (1 << (minute % 64)) != 0
    }

    fn or(&mut self, other: &DayMask) {
        for (word, other) in self.0.iter_mut().zip(other.0) {
            *word |= other;
        }
    }

    fn and_not(mut self, other: &DayMask) -> DayMask {
        for (word, other) in self.0.iter_mut().zip(other.0) {
            *word &= !other;
        }
        self
    }

    fn is_empty(&self) -> bool {
        self.0.iter().all(|&word| word == 0)
    }

    /// The first minute at or after `from` whose bit is not `value`.
    fn first_not(&self, from: usize, value: bool) -> Option<usize> {
        let flip = if value { u64::MAX } else { 0 };
        (from / 64..Self::WORDS).find_map(|index| {
            let mut word = self.0[index] ^ flip;
            if index == from / 64 {
                word &= u64::MAX << (from % 64);
            }
            let minute = index * 64 + word.trailing_zeros() as usize;
            (word != 0 && minute < MINUTES_PER_DAY).then_some(minute)
        })
    }

    /// The minutes of `hours` on their own day, and those that run into
    /// the next one.
    fn of_hours(hours: &[Hours]) -> (DayMask, DayMask) {
        let (mut same_day, mut next_day) = (DayMask::EMPTY, DayMask::EMPTY);
        for hours in hours {
            let (start, end) = (usize::from(hours.start), usize::from(hours.end));
            if start < end {
                same_day.set(start..end);
            } else {
                same_day.set(start..MINUTES_PER_DAY);
                next_day.set(0..end);
            }
        }
        (same_day, next_day)
    }
}

/// What `contains` reads: the minutes of the week that weekly clauses
/// cover, and the minutes of each holiday date that are excluded, spill
/// into the next day from ranges crossing midnight included.
#[derive(Clone, PartialEq, Eq)]
struct Compiled {
    /// Monday first.
    week: [DayMask; 7],
    /// Sorted by date, one entry per date.
    holidays: Vec<(Date, DayMask)>,
}

impl Compiled {
    fn new(clauses: &[Clause]) -> Self {
        let mut week = [DayMask::EMPTY; 7];
        let mut holidays = BTreeMap::<Date, DayMask>::new();
        for clause in clauses {
            match clause {
                Clause::Weekly { days, hours } => {
                    let (same_day, next_day) = DayMask::of_hours(hours);
                    for day in (0..7).filter(|day| days & (1 << day) != 0) {
                        week[day].or(&same_day);
                        week[(day + 1) % 7].or(&next_day);
                    }
                }
                Clause::Holidays { dates, hours } => {
                    let (same_day, next_day) = if hours.is_empty() {
                        let mut whole = DayMask::EMPTY;
                        whole.set(0..MINUTES_PER_DAY);
                        (whole, DayMask::EMPTY)
                    } else {
                        DayMask::of_hours(hours)
                    };
                    for range in dates {
                        let mut date = range.first;
                        while date <= range.last {
                            holidays.entry(date).or_insert(DayMask::EMPTY).or(&same_day);
                            // After 9999-12-31 there is no day to spill into.
                            let Ok(next) = date.tomorrow() else { break };
                            if !next_day.is_empty() {
                                holidays.entry(next).or_insert(DayMask::EMPTY).or(&next_day);
                            }
                            date = next;
                        }
                    }
                }
            }
        }
        Compiled {
            week,
            holidays: holidays.into_iter().collect(),
        }
    }

    fn holiday(&self, date: Date) -> Option<&DayMask> {
        self.holidays
            .binary_search_by(|(holiday, _)| holiday.cmp(&date))
            .ok()
            .map(|index| &self.holidays[index].1)
    }

    fn weekday(date: Date) -> usize {
        usize::try_from(date.weekday().to_monday_zero_offset()).unwrap_or(0)
    }

    fn covers(&self, local: DateTime) -> bool {
        self.covers_minute(&LocalMinute::of(local))
    }

    fn covers_minute(&self, local: &LocalMinute) -> bool {
        self.week[local.weekday].get(local.minute)
            && !self
                .holiday(local.date)
                .is_some_and(|holiday| holiday.get(local.minute))
    }

    /// The covered minutes of one date.
    fn day(&self, date: Date) -> DayMask {
        let week = self.week[Self::weekday(date)];
        match self.holiday(date) {
            Some(holiday) => week.and_not(holiday),
            None => week,
        }
    }

    /// The first minute after the one `local` is in whose coverage is not
    /// `inside`, looking at most `days` dates ahead.
    fn next_local_change(&self, local: DateTime, inside: bool, days: i64) -> Option<DateTime> {
        let mut date = local.date();
        let mut from = minute_of_day(local) + 1;
        for _ in 0..=days {
            if let Some(minute) = self.day(date).first_not(from, inside) {
                // minute < 1440: hour and minute fit their ranges.
                let (hour, minute) = (minute / 60, minute % 60);
                return Some(date.at(hour as i8, minute as i8, 0, 0));
            }
            date = date.tomorrow().ok()?;
            from = 0;
        }
        None
    }
}

fn minute_of_day(local: DateTime) -> usize {
    usize::try_from(local.hour()).unwrap_or(0) * 60 + usize::try_from(local.minute()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_mask_finds_the_first_differing_minute() {
        let mut mask = DayMask::EMPTY;
        mask.set(540..1020);
        assert_eq!(mask.first_not(0, false), Some(540));
        assert_eq!(mask.first_not(541, true), Some(1020));
        assert_eq!(mask.first_not(1020, false), None);
        assert_eq!(mask.first_not(MINUTES_PER_DAY, false), None);
        let mut full = DayMask::EMPTY;
        full.set(0..MINUTES_PER_DAY);
        // The padding bits past minute 1439 are never reported.
        assert_eq!(full.first_not(0, true), None);
    }
}
