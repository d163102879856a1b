//! Time schedules (`schedule`): parsing (every error), the canonical text
//! form, `contains` across midnight, holidays and DST changes in
//! Europe/Berlin and America/New_York, `next_change`; then properties over
//! generated schedules: the text form round-trips, and `contains` keeps its
//! answer up to `next_change` and flips there, checked against a
//! minute-by-minute scan.
//!
//! Moments are written as RFC 3339 instants with their offset, so each test
//! says which wall-clock time it means and which instant that is.
//!
//! When proptest finds and shrinks a failure, keep the shrunk case as a plain
//! regression test at the end of this file.

use dialtone_domain::schedule::{Applies, Schedule, TimeCondition, TimeZone};
use dialtone_domain::Error;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;

const MINUTE_US: i64 = 60_000_000;
const DAY_US: i64 = 24 * 60 * MINUTE_US;

/// µs since the epoch of an RFC 3339 instant.
fn us(instant: &str) -> i64 {
    instant
        .parse::<jiff::Timestamp>()
        .expect("test instants are valid")
        .as_microsecond()
}

fn tz(name: &str) -> TimeZone {
    TimeZone::parse(name).expect("test zones exist")
}

fn schedule(text: &str) -> Schedule {
    Schedule::parse(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// The reason of a refused schedule.
fn refusal(text: &str) -> String {
    match Schedule::parse(text) {
        Err(Error::Invalid { field, reason }) => {
            assert_eq!(field, "schedule");
            reason
        }
        other => panic!("{text:?} should be refused, got {other:?}"),
    }
}

fn assert_refused(text: &str, expected: &str) {
    let reason = refusal(text);
    assert!(
        reason.contains(expected),
        "{text:?}: reason {reason:?} should contain {expected:?}"
    );
}

// ================================================================ parsing

#[test]
fn the_example_of_the_grammar_parses_and_prints_canonically() {
    let text = "mon-fri 09:00-17:00; sat 10:00-14:00; holidays 2026-12-25, 2027-01-01; \
                holidays 2026-12-24 12:00-24:00";
    assert_eq!(schedule(text).to_string(), text);
}

#[test]
fn words_are_case_insensitive_and_whitespace_is_free() {
    let parsed = schedule("  MON - Fri   9:00 - 17:00 ;SAT 10:00-14:00 ; ;HOLIDAYS 2026-12-24 .. 2026-12-26 ,2027-01-01;");
    assert_eq!(
        parsed.to_string(),
        "mon-fri 09:00-17:00; sat 10:00-14:00; holidays 2026-12-24..2026-12-26, 2027-01-01"
    );
}

#[test]
fn day_sets_print_as_runs_in_week_order() {
    for (written, canonical) in [
        ("mon", "mon"),
        ("monday", "mon"),
        ("Sunday", "sun"),
        ("mon,wed,fri", "mon,wed,fri"),
        ("mon, tue, wed", "mon-wed"),
        ("fri-mon", "fri-mon"),
        ("sat,sun,mon", "sat-mon"),
        ("sun,mon,wed", "wed,sun-mon"),
        ("mon-sun", "daily"),
        ("tue-mon", "daily"),
        ("daily", "daily"),
        ("DAILY", "daily"),
        ("*", "daily"),
        ("mon-wed,tue-thu", "mon-thu"),
        ("wed-wed", "wed"),
    ] {
        assert_eq!(
            schedule(&format!("{written} 09:00-17:00")).to_string(),
            format!("{canonical} 09:00-17:00"),
            "{written}"
        );
    }
}

#[test]
fn time_ranges_are_listed_in_the_order_written() {
    assert_eq!(
        schedule("mon 13:00-17:00,09:00-12:00").to_string(),
        "mon 13:00-17:00, 09:00-12:00"
    );
    assert_eq!(
        schedule("mon 22:00-06:00, 00:00-24:00, 23:00-00:00").to_string(),
        "mon 22:00-06:00, 00:00-24:00, 23:00-00:00"
    );
}

#[test]
fn a_comma_between_the_days_or_dates_and_the_times_is_tolerated() {
    assert_eq!(schedule("mon, 09:00-10:00").to_string(), "mon 09:00-10:00");
    assert_eq!(
        schedule("daily 00:00-24:00; holidays 2026-12-24, 12:00-24:00").to_string(),
        "daily 00:00-24:00; holidays 2026-12-24 12:00-24:00"
    );
}

#[test]
fn a_one_day_date_range_is_that_date() {
    assert_eq!(
        schedule("daily 00:00-24:00; holiday 2026-12-24..2026-12-24"),
        schedule("daily 00:00-24:00; holidays 2026-12-24")
    );
}

#[test]
fn every_mistake_is_named_with_its_clause() {
    for (text, expected) in [
        ("mon 25:00-26:00", "clause 1: \"25:00\": hour must be 00-24"),
        ("mon 09:60-10:00", "\"09:60\": minute must be 00-59"),
        ("mon 09:00-24:30", "\"24:30\": 24:00 is the latest time"),
        (
            "mon 24:00-02:00",
            "\"24:00-02:00\": a range cannot start at 24:00",
        ),
        ("mon 9:5-10:00", "\"9:5\": a time is written HH:MM"),
        ("mon 123:00-10:00", "\"123:00\": a time is written HH:MM"),
        ("mon 09:00-09:00", "\"09:00-09:00\": empty range"),
        ("mon 00:00-00:00", "\"00:00-00:00\": empty range"),
        ("mnday 09:00-17:00", "unknown day \"mnday\""),
        ("mon-frii 09:00-17:00", "unknown day \"frii\""),
        ("mon-", "nothing where a day was expected after \"-\""),
        (
            "mon-fri",
            "nothing after the days: a time range such as 09:00-17:00 is needed",
        ),
        ("mon-fri 9", "\"9\" after the days"),
        ("09:00-17:00", "\"09:00\": a clause starts with days"),
        (", mon 09:00-17:00", "\",\" where days were expected"),
        (
            "mon 09:00 17:00",
            "\"09:00\" is not a range: write HH:MM-HH:MM",
        ),
        (
            "mon 09:00-",
            "nothing where the end of the range \"09:00-\" was expected",
        ),
        (
            "mon 09:00-17:00,",
            "nothing where a time range such as 09:00-17:00 was expected",
        ),
        ("mon 0900-1700", "\"0900-1700\" after the days"),
        ("mon 09:00-17:00 tue", "unexpected \"tue\""),
        ("mon 09:00-17:00 @", "unexpected \"@\""),
        ("mon 09:00-17:00 é", "unexpected \"é\""),
        ("mon 09:00-17:00 .", "unexpected \".\""),
        ("mon 09:00:00-17:00", "unexpected \":\""),
        (
            "daily 00:00-24:00; holidays 2026-02-30",
            "clause 2: \"2026-02-30\": no such date",
        ),
        (
            "daily 00:00-24:00; holidays 2026-13-01",
            "\"2026-13-01\": month must be 01-12",
        ),
        (
            "daily 00:00-24:00; holidays 2026-00-01",
            "\"2026-00-01\": month must be 01-12",
        ),
        (
            "daily 00:00-24:00; holidays 2026-1-5",
            "\"2026-1-5\": a date is written YYYY-MM-DD",
        ),
        (
            "daily 00:00-24:00; holidays 2026-12",
            "\"2026-12\": a date is written YYYY-MM-DD",
        ),
        (
            "daily 00:00-24:00; holidays",
            "nothing where a date YYYY-MM-DD was expected",
        ),
        (
            "daily 00:00-24:00; holidays mon",
            "\"mon\" where a date YYYY-MM-DD was expected",
        ),
        (
            "daily 00:00-24:00; holidays 2026-12-26..2026-12-24",
            "\"2026-12-26..2026-12-24\": the range ends before it starts",
        ),
        (
            "daily 00:00-24:00; holidays 2026-12-24-2026-12-26",
            "\"2026-12-24-\": a range of dates is written with \"..\"",
        ),
        (
            "daily 00:00-24:00; holidays 2026-12-24..",
            "nothing where the end of \"2026-12-24..\" was expected",
        ),
        (
            "daily 00:00-24:00; holidays 2026-12-24 12:00",
            "\"12:00\" is not a range",
        ),
        (
            "daily 00:00-24:00; holidays 2026-12-24 12:00-13:00 2026-12-25",
            "unexpected \"2026-12-25\"",
        ),
        (
            "holidays 2026-12-25",
            "holidays only take time out of weekly clauses",
        ),
        ("", "must not be empty"),
        (" ; ;", "must not be empty"),
    ] {
        assert_refused(text, expected);
    }
}

#[test]
fn limits_are_enforced() {
    let long = format!("mon 09:00-17:00{}", " ".repeat(Schedule::MAX_LEN));
    assert_refused(&long, "4111 bytes, at most 4096 allowed");

    let clauses = vec!["mon 09:00-10:00"; Schedule::MAX_CLAUSES];
    assert!(Schedule::parse(&clauses.join(";")).is_ok());
    let clauses = vec!["mon 09:00-10:00"; Schedule::MAX_CLAUSES + 1];
    assert_refused(&clauses.join(";"), "65 clauses, at most 64 allowed");

    // A whole leap-year's worth of dates is allowed, one more is not,
    // whether in one range or spread over clauses.
    assert!(Schedule::parse("daily 00:00-24:00; holidays 2028-01-01..2028-12-31").is_ok());
    assert_refused(
        "daily 00:00-24:00; holidays 2028-01-01..2029-01-01",
        "clause 2: more than 366 holiday dates",
    );
    assert_refused(
        "daily 00:00-24:00; holidays 2028-01-01..2028-12-31; holidays 2030-01-01",
        "clause 3: more than 366 holiday dates",
    );
    // Refused without walking ten thousand years of dates.
    assert_refused(
        "daily 00:00-24:00; holidays 0000-01-01..9999-12-31",
        "more than 366 holiday dates",
    );
}

#[test]
fn the_last_date_there_is_can_be_a_holiday_crossing_midnight() {
    // There is no day after it to spill into; the last moment there is,
    // 9999-12-30T22:00Z, is 12:00 on that date in UTC+14.
    let s = schedule("daily 00:00-24:00; holidays 9999-12-31 10:00-06:00");
    let kiritimati = tz("Pacific/Kiritimati");
    assert!(s.contains(us("9999-12-31T09:59:00+14:00"), &kiritimati));
    assert!(!s.contains(us("9999-12-31T12:00:00+14:00"), &kiritimati));
    assert_eq!(
        s.next_change(us("9999-12-31T12:00:00+14:00"), &kiritimati),
        None
    );
}

#[test]
fn time_zones_are_iana_names() {
    assert_eq!(tz("Europe/Berlin").as_str(), "Europe/Berlin");
    assert_eq!(tz("  america/new_york ").as_str(), "America/New_York");
    assert_eq!(tz("UTC").as_str(), "UTC");
    assert_eq!(tz("utc"), TimeZone::utc());
    for (bad, expected) in [
        (
            "Europe/Berln",
            "invalid time zone: \"Europe/Berln\" is not an IANA time zone name",
        ),
        ("+02:00", "\"+02:00\" is not an IANA time zone name"),
        ("", "invalid time zone: must not be empty"),
    ] {
        let error = TimeZone::parse(bad).expect_err(bad);
        assert!(error.to_string().contains(expected), "{error}");
    }
}

#[test]
fn conditions_say_inside_or_outside() {
    let inside = TimeCondition::parse("mon-fri 09:00-17:00").unwrap();
    assert_eq!(inside.applies, Applies::Inside);
    assert_eq!(inside.to_string(), "inside mon-fri 09:00-17:00");
    let outside = TimeCondition::parse("  OUTSIDE  mon-fri 09:00-17:00").unwrap();
    assert_eq!(outside.applies, Applies::Outside);
    assert_eq!(outside.to_string(), "outside mon-fri 09:00-17:00");
    assert_eq!(outside.schedule, inside.schedule);
    assert_eq!(TimeCondition::parse(&outside.to_string()).unwrap(), outside);
    assert!(TimeCondition::parse("outside").is_err());
    assert!(TimeCondition::parse("inside mnday 09:00-17:00")
        .unwrap_err()
        .to_string()
        .contains("unknown day \"mnday\""));

    let berlin = tz("Europe/Berlin");
    let monday_ten = us("2026-12-07T10:00:00+01:00");
    assert!(inside.holds(monday_ten, &berlin));
    assert!(!outside.holds(monday_ten, &berlin));
    let saturday = us("2026-12-05T10:00:00+01:00");
    assert!(!inside.holds(saturday, &berlin));
    assert!(outside.holds(saturday, &berlin));
    assert_eq!(
        outside.next_change(saturday, &berlin),
        Some(us("2026-12-07T09:00:00+01:00"))
    );
}

#[test]
fn serde_uses_the_text_forms() {
    let s = schedule("MON-FRI 9:00-17:00");
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#""mon-fri 09:00-17:00""#
    );
    let back: Schedule = serde_json::from_str(r#""mon-fri 09:00-17:00""#).unwrap();
    assert_eq!(back, s);
    let error = serde_json::from_str::<Schedule>(r#""mon 25:00-26:00""#).unwrap_err();
    assert!(error.to_string().contains("hour must be 00-24"), "{error}");

    let condition: TimeCondition =
        serde_json::from_str(r#""outside sat-sun 00:00-24:00""#).unwrap();
    assert_eq!(condition.applies, Applies::Outside);
    assert_eq!(
        serde_json::to_string(&condition).unwrap(),
        r#""outside sat-sun 00:00-24:00""#
    );

    let zone: TimeZone = serde_json::from_str(r#""europe/berlin""#).unwrap();
    assert_eq!(serde_json::to_string(&zone).unwrap(), r#""Europe/Berlin""#);
    assert!(serde_json::from_str::<TimeZone>(r#""Mars/Olympus""#).is_err());
}

// ================================================================ contains

#[test]
fn business_hours_are_half_open() {
    let s = schedule("mon-fri 09:00-17:00");
    let berlin = tz("Europe/Berlin");
    assert!(!s.contains(us("2026-12-07T08:59:59.999999+01:00"), &berlin));
    assert!(s.contains(us("2026-12-07T09:00:00+01:00"), &berlin));
    assert!(s.contains(us("2026-12-07T16:59:59.999999+01:00"), &berlin));
    assert!(!s.contains(us("2026-12-07T17:00:00+01:00"), &berlin));
    assert!(s.contains(us("2026-12-11T12:00:00+01:00"), &berlin));
    assert!(!s.contains(us("2026-12-12T12:00:00+01:00"), &berlin));
    // The same instant in another zone is another wall-clock time.
    let new_york = tz("America/New_York");
    assert!(!s.contains(us("2026-12-07T10:00:00+01:00"), &new_york));
    assert!(s.contains(us("2026-12-07T10:00:00-05:00"), &new_york));
}

#[test]
fn a_range_crossing_midnight_belongs_to_its_start_day() {
    let s = schedule("fri 22:00-06:00; sun 23:00-01:00");
    let utc = TimeZone::utc();
    // 2026-12-11 is a Friday.
    assert!(!s.contains(us("2026-12-11T21:59:00Z"), &utc));
    assert!(s.contains(us("2026-12-11T22:00:00Z"), &utc));
    assert!(s.contains(us("2026-12-12T05:59:00Z"), &utc));
    assert!(!s.contains(us("2026-12-12T06:00:00Z"), &utc));
    assert!(
        !s.contains(us("2026-12-12T22:30:00Z"), &utc),
        "saturday night"
    );
    assert!(
        !s.contains(us("2026-12-11T03:00:00Z"), &utc),
        "early friday"
    );
    // Sunday night runs into Monday: the week wraps.
    assert!(s.contains(us("2026-12-13T23:30:00Z"), &utc));
    assert!(s.contains(us("2026-12-14T00:30:00Z"), &utc));
    assert!(!s.contains(us("2026-12-14T01:00:00Z"), &utc));
}

#[test]
fn holidays_override_the_weekly_clauses() {
    let s = schedule("mon-fri 09:00-17:00; holidays 2026-12-25, 2026-12-31..2027-01-01");
    let berlin = tz("Europe/Berlin");
    assert!(s.contains(us("2026-12-24T10:00:00+01:00"), &berlin));
    assert!(!s.contains(us("2026-12-25T10:00:00+01:00"), &berlin));
    assert!(s.contains(us("2026-12-28T10:00:00+01:00"), &berlin));
    assert!(!s.contains(us("2026-12-31T10:00:00+01:00"), &berlin));
    assert!(!s.contains(us("2027-01-01T10:00:00+01:00"), &berlin));
    assert!(s.contains(us("2027-01-04T10:00:00+01:00"), &berlin));
}

#[test]
fn a_partial_holiday_excludes_only_its_hours() {
    let s = schedule("mon-fri 09:00-17:00; holidays 2026-12-24 12:00-24:00");
    let berlin = tz("Europe/Berlin");
    assert!(s.contains(us("2026-12-24T11:59:00+01:00"), &berlin));
    assert!(!s.contains(us("2026-12-24T12:00:00+01:00"), &berlin));
    assert!(s.contains(us("2026-12-23T15:00:00+01:00"), &berlin));

    // A holiday range crossing midnight runs into the next day, as a weekly
    // range does.
    let s = schedule("daily 00:00-24:00; holidays 2026-12-31 18:00-06:00");
    assert!(s.contains(us("2026-12-31T17:59:00+01:00"), &berlin));
    assert!(!s.contains(us("2026-12-31T18:00:00+01:00"), &berlin));
    assert!(!s.contains(us("2027-01-01T05:59:00+01:00"), &berlin));
    assert!(s.contains(us("2027-01-01T06:00:00+01:00"), &berlin));
    assert!(s.contains(us("2026-12-31T02:00:00+01:00"), &berlin));
}

#[test]
fn berlin_spring_forward_skips_the_missing_hour() {
    // 2026-03-29: 02:00 CET becomes 03:00 CEST; 02:00-03:00 does not exist.
    let berlin = tz("Europe/Berlin");
    let missing = schedule("sun 02:00-03:00");
    let mut at = us("2026-03-28T23:00:00Z");
    while at < us("2026-03-29T23:00:00Z") {
        assert!(!missing.contains(at, &berlin), "{at}");
        at += MINUTE_US;
    }
    // A week earlier the same hour is there.
    assert!(missing.contains(us("2026-03-22T02:30:00+01:00"), &berlin));
    // Its next change skips the day without that hour.
    assert_eq!(
        missing.next_change(us("2026-03-28T12:00:00+01:00"), &berlin),
        Some(us("2026-04-05T02:00:00+02:00"))
    );

    // A range straddling the gap starts when the clock jumps to 03:00.
    let straddling = schedule("sun 02:30-03:30");
    assert!(!straddling.contains(us("2026-03-29T01:59:59+01:00"), &berlin));
    assert!(straddling.contains(us("2026-03-29T03:00:00+02:00"), &berlin));
    assert!(!straddling.contains(us("2026-03-29T03:30:00+02:00"), &berlin));
    let saturday = us("2026-03-28T12:00:00+01:00");
    let opens = straddling.next_change(saturday, &berlin);
    assert_eq!(opens, Some(us("2026-03-29T03:00:00+02:00")));
    assert_eq!(
        straddling.next_change(opens.unwrap(), &berlin),
        Some(us("2026-03-29T03:30:00+02:00"))
    );

    // Business hours keep their wall-clock times across the change.
    let office = schedule("mon-fri 09:00-17:00");
    assert!(
        office.contains(us("2026-03-27T08:00:00Z"), &berlin),
        "09:00 CET"
    );
    assert!(
        !office.contains(us("2026-03-30T06:30:00Z"), &berlin),
        "08:30 CEST"
    );
    assert!(
        office.contains(us("2026-03-30T07:00:00Z"), &berlin),
        "09:00 CEST"
    );
}

#[test]
fn berlin_fall_back_covers_the_repeated_hour_twice() {
    // 2026-10-25: 03:00 CEST becomes 02:00 CET; 02:00-03:00 happens twice.
    let berlin = tz("Europe/Berlin");
    let s = schedule("sun 02:00-02:30");
    assert!(s.contains(us("2026-10-25T02:15:00+02:00"), &berlin));
    assert!(!s.contains(us("2026-10-25T02:45:00+02:00"), &berlin));
    assert!(s.contains(us("2026-10-25T02:00:00+01:00"), &berlin));
    assert!(s.contains(us("2026-10-25T02:15:00+01:00"), &berlin));
    assert!(!s.contains(us("2026-10-25T02:30:00+01:00"), &berlin));

    let mut at = us("2026-10-24T12:00:00+02:00");
    let mut changes = Vec::new();
    for _ in 0..4 {
        at = s.next_change(at, &berlin).unwrap();
        changes.push(at);
    }
    assert_eq!(
        changes,
        [
            us("2026-10-25T02:00:00+02:00"),
            us("2026-10-25T02:30:00+02:00"),
            us("2026-10-25T02:00:00+01:00"),
            us("2026-10-25T02:30:00+01:00"),
        ]
    );
}

#[test]
fn new_york_transitions() {
    let new_york = tz("America/New_York");
    // 2026-03-08: 02:00 EST becomes 03:00 EDT.
    let s = schedule("sun 02:15-02:45");
    assert!(!s.contains(us("2026-03-08T01:59:00-05:00"), &new_york));
    assert!(!s.contains(us("2026-03-08T03:00:00-04:00"), &new_york));
    assert!(s.contains(us("2026-03-01T02:20:00-05:00"), &new_york));
    assert_eq!(
        s.next_change(us("2026-03-07T12:00:00-05:00"), &new_york),
        Some(us("2026-03-15T02:15:00-04:00"))
    );
    // 2026-11-01: 02:00 EDT becomes 01:00 EST; 01:00-02:00 happens twice.
    let s = schedule("sun 01:00-01:30");
    assert!(s.contains(us("2026-11-01T01:15:00-04:00"), &new_york));
    assert!(!s.contains(us("2026-11-01T01:45:00-04:00"), &new_york));
    assert!(s.contains(us("2026-11-01T01:15:00-05:00"), &new_york));
    assert_eq!(
        s.next_change(us("2026-11-01T01:30:00-04:00"), &new_york),
        Some(us("2026-11-01T01:00:00-05:00"))
    );
    // A night crossing midnight keeps its wall-clock times, 22:00 to 07:00:
    // eight hours on the short night, ten on the long one.
    let night = schedule("sat 22:00-07:00");
    let opens = night
        .next_change(us("2026-03-07T12:00:00-05:00"), &new_york)
        .unwrap();
    assert_eq!(opens, us("2026-03-07T22:00:00-05:00"));
    let closes = night.next_change(opens, &new_york).unwrap();
    assert_eq!(closes, us("2026-03-08T07:00:00-04:00"));
    assert_eq!(closes - opens, 8 * 60 * MINUTE_US);
    let opens = night
        .next_change(us("2026-10-31T12:00:00-04:00"), &new_york)
        .unwrap();
    let closes = night.next_change(opens, &new_york).unwrap();
    assert_eq!(closes, us("2026-11-01T07:00:00-05:00"));
    assert_eq!(closes - opens, 10 * 60 * MINUTE_US);
}

#[test]
fn moments_beyond_the_calendar_are_outside() {
    let s = schedule("daily 00:00-24:00");
    let utc = TimeZone::utc();
    assert!(!s.contains(i64::MAX, &utc));
    assert!(!s.contains(i64::MIN, &utc));
    assert_eq!(s.next_change(i64::MAX, &utc), None);
    assert_eq!(s.next_change(i64::MIN, &utc), None);
}

// ================================================================ next_change

#[test]
fn closed_until_monday_morning() {
    let s = schedule("mon-fri 09:00-17:00; holidays 2026-12-25");
    let berlin = tz("Europe/Berlin");
    let saturday = us("2026-12-05T12:00:00+01:00");
    assert_eq!(
        s.next_change(saturday, &berlin),
        Some(us("2026-12-07T09:00:00+01:00"))
    );
    assert_eq!(
        s.next_change(us("2026-12-07T09:00:00+01:00"), &berlin),
        Some(us("2026-12-07T17:00:00+01:00"))
    );
    // Mid-range, to the microsecond.
    assert_eq!(
        s.next_change(us("2026-12-07T16:59:59.999999+01:00"), &berlin),
        Some(us("2026-12-07T17:00:00+01:00"))
    );
    // Over Christmas (a Friday) to the Monday after.
    assert_eq!(
        s.next_change(us("2026-12-24T17:00:00+01:00"), &berlin),
        Some(us("2026-12-28T09:00:00+01:00"))
    );
}

#[test]
fn a_schedule_that_never_changes_has_no_next_change() {
    let utc = TimeZone::utc();
    let berlin = tz("Europe/Berlin");
    let always = schedule("daily 00:00-24:00");
    assert_eq!(always.next_change(us("2026-01-01T00:00:00Z"), &utc), None);
    // DST changes do not make a change where there is none.
    assert_eq!(
        always.next_change(us("2026-01-01T00:00:00Z"), &berlin),
        None
    );
    let with_holiday = schedule("daily 00:00-24:00; holidays 2026-12-25");
    assert_eq!(
        with_holiday.next_change(us("2026-01-01T00:00:00Z"), &berlin),
        Some(us("2026-12-25T00:00:00+01:00"))
    );
    // 400 days ahead at most, the last moment included.
    let christmas = us("2026-12-25T00:00:00+01:00");
    let horizon = Schedule::HORIZON_DAYS * DAY_US;
    assert_eq!(
        with_holiday.next_change(christmas - horizon, &berlin),
        Some(christmas)
    );
    assert_eq!(
        with_holiday.next_change(christmas - horizon - 1, &berlin),
        None
    );
}

#[test]
fn a_full_year_of_holidays_ends_within_the_horizon() {
    let s = schedule("mon 09:00-17:00; holidays 2026-01-05..2027-01-05");
    let utc = TimeZone::utc();
    assert_eq!(
        s.next_change(us("2026-01-01T00:00:00Z"), &utc),
        Some(us("2027-01-11T09:00:00Z"))
    );
}

// ================================================================ properties

/// A generated schedule as text, written with random case and spacing.
fn day_set() -> impl Strategy<Value = String> {
    let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    prop_oneof![
        Just("daily".to_owned()),
        Just("*".to_owned()),
        (0..7usize, 0..7usize).prop_map(move |(a, b)| format!("{}-{}", names[a], names[b])),
        vec(select(names.to_vec()), 1..4).prop_map(|days| days.join(",")),
    ]
}

fn time(minute: u16) -> String {
    format!("{:02}:{:02}", minute / 60, minute % 60)
}

/// Minutes on a coarse grid half the time, so that ranges meet and overlap.
fn minute() -> impl Strategy<Value = u16> {
    prop_oneof![(0..48u16).prop_map(|half_hour| half_hour * 30), 0..1440u16]
}

fn hours() -> impl Strategy<Value = String> {
    vec(
        (minute(), minute(), any::<bool>()).prop_map(|(start, end, to_midnight)| {
            let end = if to_midnight && start != 0 { 1440 } else { end };
            let end = if end == start {
                (start + 17) % 1440
            } else {
                end
            };
            format!("{}-{}", time(start), time(end))
        }),
        1..4,
    )
    .prop_map(|ranges| ranges.join(","))
}

/// Dates from late 2025 to 2027, where the generated moments are.
fn dates() -> impl Strategy<Value = String> {
    vec((0..800i64, 0..4i64), 1..4).prop_map(|items| {
        let base = jiff::civil::date(2025, 11, 1);
        items
            .into_iter()
            .map(|(offset, length)| {
                let first = base.checked_add(jiff::Span::new().days(offset)).unwrap();
                let last = first.checked_add(jiff::Span::new().days(length)).unwrap();
                if length == 0 {
                    first.to_string()
                } else {
                    format!("{first}..{last}")
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    })
}

fn clause() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (day_set(), hours()).prop_map(|(days, hours)| format!("{days} {hours}")),
        1 => (dates(), proptest::option::of(hours())).prop_map(|(dates, hours)| match hours {
            Some(hours) => format!("holidays {dates} {hours}"),
            None => format!("holidays {dates}"),
        }),
    ]
}

fn schedule_text() -> impl Strategy<Value = String> {
    (
        (day_set(), hours()).prop_map(|(days, hours)| format!("{days} {hours}")),
        vec(clause(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(first, rest, shout)| {
            let text = std::iter::once(first)
                .chain(rest)
                .collect::<Vec<_>>()
                .join(" ; ");
            if shout {
                text.to_uppercase()
            } else {
                text
            }
        })
}

fn zone() -> impl Strategy<Value = TimeZone> {
    // Lord Howe moves its clocks by 30 minutes; Kolkata is 5:30 from UTC.
    select(ZONES.to_vec()).prop_map(tz)
}

const ZONES: [&str; 5] = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "Asia/Kolkata",
];

/// Moments from 2026 into 2027, to the microsecond; half of them within
/// two days before a DST change of one of the [`ZONES`].
fn moment() -> impl Strategy<Value = i64> {
    let start = "2026-01-01T00:00:00Z".parse::<jiff::Timestamp>().unwrap();
    let end = us("2027-06-01T00:00:00Z");
    let transitions: Vec<i64> = ZONES
        .iter()
        .flat_map(|name| {
            let zone = jiff::tz::TimeZone::get(name).unwrap();
            zone.following(start)
                .map(|t| t.timestamp().as_microsecond())
                .take_while(|&t| t < end)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(transitions.len() >= 8, "{transitions:?}");
    prop_oneof![
        start.as_microsecond()..end,
        (select(transitions), 0..2 * DAY_US).prop_map(|(t, before)| t - before),
    ]
}

/// The first moment after `now`, up to `until`, at which `contains` differs
/// from its answer at `now`, found by trying every minute: every offset in
/// use is whole minutes, so every change falls on a minute.
fn scan_for_change(s: &Schedule, tz: &TimeZone, now: i64, until: i64) -> Option<i64> {
    let inside = s.contains(now, tz);
    let mut at = now - now.rem_euclid(MINUTE_US) + MINUTE_US;
    while at <= until {
        if s.contains(at, tz) != inside {
            return Some(at);
        }
        at += MINUTE_US;
    }
    None
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_canonical_text_round_trips(text in schedule_text()) {
        let parsed = Schedule::parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        let canonical = parsed.to_string();
        let again = Schedule::parse(&canonical).map_err(|e| TestCaseError::fail(format!("{canonical:?}: {e}")))?;
        prop_assert_eq!(&again, &parsed);
        prop_assert_eq!(again.to_string(), canonical.clone());
        let condition = TimeCondition::parse(&format!("outside {canonical}")).unwrap();
        prop_assert_eq!(TimeCondition::parse(&condition.to_string()).unwrap(), condition);
    }

    #[test]
    fn contains_holds_until_next_change_and_flips_there(
        text in schedule_text(),
        tz in zone(),
        now in moment(),
        samples in vec(0.0..1.0f64, 8),
    ) {
        let s = Schedule::parse(&text).unwrap();
        let inside = s.contains(now, &tz);
        match s.next_change(now, &tz) {
            Some(change) => {
                prop_assert!(change > now);
                prop_assert!(change <= now + Schedule::HORIZON_DAYS * DAY_US);
                prop_assert_ne!(s.contains(change, &tz), inside, "no flip at {}", change);
                prop_assert_eq!(s.contains(change - 1, &tz), inside);
                for fraction in samples {
                    let at = now + ((change - now) as f64 * fraction) as i64;
                    prop_assert_eq!(s.contains(at, &tz), inside, "changed at {} before {}", at, change);
                }
            }
            None => {
                for fraction in samples {
                    let at = now + ((Schedule::HORIZON_DAYS * DAY_US) as f64 * fraction) as i64;
                    prop_assert_eq!(s.contains(at, &tz), inside, "changed at {}", at);
                }
            }
        }
    }

    #[test]
    fn next_change_agrees_with_a_minute_by_minute_scan(
        text in schedule_text(),
        tz in zone(),
        now in moment(),
    ) {
        let s = Schedule::parse(&text).unwrap();
        let window = now + 3 * DAY_US;
        let expected = scan_for_change(&s, &tz, now, window);
        let got = s.next_change(now, &tz).filter(|&change| change <= window);
        prop_assert_eq!(got, expected);
    }
}

#[test]
fn next_change_across_every_dst_change_of_2026_agrees_with_the_scan() {
    // Around each transition, from a few moments before it, for schedules
    // whose boundaries sit on and around the changing hours.
    let schedules = [
        schedule("daily 01:00-01:30, 02:00-02:30, 03:00-03:30"),
        schedule("sun 01:30-02:30; sat 23:00-02:15"),
        schedule("daily 02:00-03:00; holidays 2026-03-29, 2026-11-01 01:00-02:00"),
    ];
    for (zone, transitions) in [
        (
            "Europe/Berlin",
            ["2026-03-29T01:00:00Z", "2026-10-25T01:00:00Z"],
        ),
        (
            "America/New_York",
            ["2026-03-08T07:00:00Z", "2026-11-01T06:00:00Z"],
        ),
    ] {
        let zone = tz(zone);
        for transition in transitions {
            let transition = us(transition);
            for s in &schedules {
                for back in [0, 1, 59, 60, 61, 89, 120, 180, 300] {
                    let now = transition - back * MINUTE_US;
                    let window = now + DAY_US;
                    assert_eq!(
                        s.next_change(now, &zone).filter(|&c| c <= window),
                        scan_for_change(s, &zone, now, window),
                        "{s} in {zone} from {now}"
                    );
                }
            }
        }
    }
}

#[test]
fn lord_howe_moves_its_clocks_by_half_an_hour() {
    // 2026-10-04 02:00 (+10:30) becomes 02:30 (+11): 02:00-02:30 does not
    // exist; 2027-04-04 02:00 (+11) becomes 01:30 (+10:30): 01:30-02:00
    // happens twice. Cases first found against broken versions of
    // `next_change`.
    let lord_howe = tz("Australia/Lord_Howe");
    for (text, now) in [
        ("daily 00:00-05:00", 1_799_949_540_000_000),
        (
            "daily 03:00-00:00; daily 03:00-02:00",
            1_791_041_399_999_999,
        ),
        ("sun 02:00-02:30", us("2026-10-03T12:00:00+10:30")),
        ("sun 01:30-02:00", us("2027-04-03T12:00:00+11:00")),
    ] {
        let s = schedule(text);
        assert_eq!(
            s.next_change(now, &lord_howe)
                .filter(|&c| c <= now + 3 * DAY_US),
            scan_for_change(&s, &lord_howe, now, now + 3 * DAY_US),
            "{text} from {now}"
        );
    }
    let gap = schedule("sun 02:00-02:30");
    assert_eq!(
        gap.next_change(us("2026-10-03T12:00:00+10:30"), &lord_howe),
        Some(us("2026-10-11T02:00:00+11:00"))
    );
    let fold = schedule("sun 01:30-02:00");
    assert!(fold.contains(us("2027-04-04T01:45:00+11:00"), &lord_howe));
    assert!(fold.contains(us("2027-04-04T01:45:00+10:30"), &lord_howe));
}
