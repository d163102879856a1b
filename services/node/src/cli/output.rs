//! What the commands print: one JSON value (or array) with `--json`, text
//! lines otherwise; and times, as RFC 3339 text both ways.

use anyhow::Context as _;
use serde_json::Value;

/// How to print: JSON or text.
pub(super) struct Output {
    /// JSON instead of text.
    pub(super) json: bool,
}

impl Output {
    pub(super) fn one(&self, value: Value, human: impl Fn(&Value) -> String) {
        if self.json {
            println!("{value}");
        } else {
            println!("{}", human(&value));
        }
    }

    pub(super) fn list(&self, values: Vec<Value>, human: impl Fn(&Value) -> String) {
        if self.json {
            println!("{}", Value::Array(values));
        } else if values.is_empty() {
            println!("(none)");
        } else {
            for value in &values {
                println!("{}", human(value));
            }
        }
    }
}

/// The text of field `key` of a printed value (`-` when null).
pub(super) fn s(v: &Value, key: &str) -> String {
    match &v[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A timestamp as RFC 3339 text (null when absent).
pub(super) fn time(ts: &Option<dialtone_api::prost_types::Timestamp>) -> Value {
    match ts {
        Some(ts) => {
            let us = ts.seconds * 1_000_000 + i64::from(ts.nanos) / 1000;
            Value::String(format_time(us))
        }
        None => Value::Null,
    }
}

/// RFC 3339 UTC with microseconds.
fn format_time(us: i64) -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
        .ok()
        .and_then(|t| t.format(&format).ok())
        .unwrap_or_else(|| us.to_string())
}

/// A µs timestamp as RFC 3339 text (null when absent).
pub(super) fn micros_text(v: &Value) -> Value {
    v.as_i64()
        .map(|us| Value::String(format_time(us)))
        .unwrap_or(Value::Null)
}

/// An RFC 3339 time given to the option `flag`, as a protobuf timestamp.
pub(super) fn parse_time_arg(
    flag: &str,
    input: &str,
) -> anyhow::Result<dialtone_api::prost_types::Timestamp> {
    let t = time::OffsetDateTime::parse(input, &time::format_description::well_known::Rfc3339)
        .with_context(|| {
            format!("{flag} must be an RFC 3339 time such as 2026-11-26T10:00:00Z, not '{input}'")
        })?;
    Ok(dialtone_api::prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    })
}
