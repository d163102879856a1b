//! The SIP side of a REGISTER (RFC 3261 s.10.3 steps 5-6): read the
//! contacts, normalise their expiry, and decide between a query, an update,
//! "remove all", 400 and 423. Pure: no IO, no clock.

use crate::backend::ContactChange;
use crate::wire::message::{params, parse_u32, Message, Name, NameAddr, Uri};

/// Expiry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiresPolicy {
    /// Below this (and above 0): 423 with Min-Expires.
    pub min: u32,
    /// Above this: clamped.
    pub max: u32,
    /// When neither the contact nor the request gives an expiry.
    pub default: u32,
}

impl Default for ExpiresPolicy {
    fn default() -> Self {
        ExpiresPolicy {
            min: 60,
            max: 3600,
            default: 3600,
        }
    }
}

/// What a REGISTER asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No Contact: list the current bindings.
    Query,
    /// `Contact: *` with `Expires: 0`.
    RemoveAll,
    Update(Vec<ContactChange>),
}

/// Why a REGISTER is refused before reaching the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// 400 with this reason.
    BadRequest(&'static str),
    /// 423 Interval Too Brief, with `Min-Expires`.
    IntervalTooBrief { min_expires: u32 },
}

/// Reads the contacts and expiries of a REGISTER.
pub fn plan(msg: &Message<'_>, policy: &ExpiresPolicy) -> Result<Plan, Reject> {
    let header_expires = match msg.header(Name::Expires) {
        None => None,
        Some(v) => Some(parse_u32(v).ok_or(Reject::BadRequest("Bad Expires"))?),
    };
    let mut contacts = msg.list(Name::Contact).peekable();
    if contacts.peek().is_none() {
        return Ok(Plan::Query);
    }
    let all: Vec<&str> = contacts.collect();
    if all.iter().any(|c| c.trim() == "*") {
        // RFC 3261 s.10.3 step 6: "*" only alone and only with Expires: 0.
        if all.len() != 1 || header_expires != Some(0) {
            return Err(Reject::BadRequest("Invalid wildcard Contact"));
        }
        return Ok(Plan::RemoveAll);
    }
    let mut changes = Vec::with_capacity(all.len());
    for c in all {
        let na = NameAddr::parse(c).ok_or(Reject::BadRequest("Bad Contact"))?;
        let uri = Uri::parse(na.uri).ok_or(Reject::BadRequest("Bad Contact URI"))?;
        if uri.host.is_empty() {
            return Err(Reject::BadRequest("Bad Contact URI"));
        }
        let mut expires = header_expires;
        let mut q = None;
        let mut rest = String::new();
        let (mut instance, mut reg_id) = (false, None);
        for (name, value) in params(na.params) {
            // RFC 5626 parameters stay in the raw parameters too (they are
            // part of the contact as the phone sent it).
            if name.eq_ignore_ascii_case("+sip.instance") {
                instance = true;
            } else if name.eq_ignore_ascii_case("reg-id") {
                reg_id = Some(
                    value
                        .and_then(parse_u32)
                        .filter(|r| *r > 0)
                        .ok_or(Reject::BadRequest("Bad Contact reg-id"))?,
                );
            }
            if name.eq_ignore_ascii_case("expires") {
                let v = value
                    .and_then(parse_u32)
                    .ok_or(Reject::BadRequest("Bad Contact expires"))?;
                expires = Some(v);
            } else if name.eq_ignore_ascii_case("q") {
                q = Some(
                    value
                        .and_then(parse_q)
                        .ok_or(Reject::BadRequest("Bad Contact q"))?,
                );
            } else {
                rest.push(';');
                rest.push_str(name);
                if let Some(v) = value {
                    rest.push('=');
                    rest.push_str(v);
                }
            }
        }
        let requested = expires.unwrap_or(policy.default);
        let granted = if requested == 0 {
            0
        } else if requested < policy.min {
            return Err(Reject::IntervalTooBrief {
                min_expires: policy.min,
            });
        } else {
            requested.min(policy.max)
        };
        changes.push(ContactChange {
            uri: na.uri.to_owned(),
            expires_secs: granted,
            q,
            params: rest,
            // A reg-id means nothing without an instance (RFC 5626 s.4.2).
            reg_id: reg_id.filter(|_| instance),
            // Filled in by the caller, which knows the flow.
            nat: false,
        });
    }
    Ok(Plan::Update(changes))
}

/// Whether the request lists `outbound` in `Supported` (RFC 5626 s.4.2:
/// a UA using outbound says so).
pub fn supports_outbound(msg: &Message<'_>) -> bool {
    msg.list(Name::Supported)
        .any(|o| o.trim().eq_ignore_ascii_case("outbound"))
}

/// `q` value (RFC 3261 s.20.10: 0 to 1 with up to 3 decimals) in thousandths.
pub fn parse_q(s: &str) -> Option<u16> {
    let (int, frac) = match s.split_once('.') {
        Some((i, f)) => (i, f),
        None => (s, ""),
    };
    if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut f: u16 = 0;
    for (i, b) in frac.bytes().enumerate() {
        f += u16::from(b - b'0') * [100, 10, 1][i];
    }
    match int {
        "0" => Some(f),
        "1" if f == 0 => Some(1000),
        _ => None,
    }
}

/// Formats thousandths back to a q value (`500` -> `0.5`).
pub fn format_q(q: u16) -> String {
    if q >= 1000 {
        return "1".to_owned();
    }
    let s = format!("0.{q:03}");
    s.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(extra: &str) -> String {
        format!(
            "REGISTER sip:example.test SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
             From: <sip:a@example.test>;tag=1\r\nTo: <sip:a@example.test>\r\nCall-ID: c\r\n\
             CSeq: 1 REGISTER\r\n{extra}Content-Length: 0\r\n\r\n"
        )
    }

    fn run(extra: &str) -> Result<Plan, Reject> {
        let raw = reg(extra);
        let m = Message::parse(raw.as_bytes()).unwrap();
        plan(&m, &ExpiresPolicy::default())
    }

    fn change(uri: &str, e: u32) -> ContactChange {
        ContactChange {
            uri: uri.into(),
            expires_secs: e,
            q: None,
            params: String::new(),
            reg_id: None,
            nat: false,
        }
    }

    #[test]
    fn outbound_reg_id_only_with_an_instance() {
        let Ok(Plan::Update(c)) = run(
            "Supported: path, outbound\r\nContact: <sip:a@h>;+sip.instance=\"<urn:uuid:1>\";reg-id=2, <sip:b@h>;reg-id=1\r\n",
        ) else {
            panic!()
        };
        assert_eq!(c[0].reg_id, Some(2));
        assert_eq!(c[1].reg_id, None);
        assert_eq!(
            run("Contact: <sip:a@h>;reg-id=x\r\n"),
            Err(Reject::BadRequest("Bad Contact reg-id"))
        );
        let raw = reg("Supported: path, outbound\r\n");
        assert!(supports_outbound(&Message::parse(raw.as_bytes()).unwrap()));
        let raw = reg("Supported: path\r\n");
        assert!(!supports_outbound(&Message::parse(raw.as_bytes()).unwrap()));
    }

    #[test]
    fn query_without_contact() {
        assert_eq!(run(""), Ok(Plan::Query));
        assert_eq!(run("Expires: 30\r\n"), Ok(Plan::Query));
    }

    #[test]
    fn expiry_sources_and_policy() {
        assert_eq!(
            run("Contact: <sip:a@h>\r\n"),
            Ok(Plan::Update(vec![change("sip:a@h", 3600)]))
        );
        assert_eq!(
            run("Contact: <sip:a@h>\r\nExpires: 120\r\n"),
            Ok(Plan::Update(vec![change("sip:a@h", 120)]))
        );
        assert_eq!(
            run("Contact: <sip:a@h>;expires=300\r\nExpires: 120\r\n"),
            Ok(Plan::Update(vec![change("sip:a@h", 300)]))
        );
        assert_eq!(
            run("Contact: <sip:a@h>\r\nExpires: 7200\r\n"),
            Ok(Plan::Update(vec![change("sip:a@h", 3600)]))
        );
        assert_eq!(
            run("Contact: <sip:a@h>\r\nExpires: 0\r\n"),
            Ok(Plan::Update(vec![change("sip:a@h", 0)]))
        );
        assert_eq!(
            run("Contact: <sip:a@h>\r\nExpires: 59\r\n"),
            Err(Reject::IntervalTooBrief { min_expires: 60 })
        );
        assert_eq!(
            run("Contact: <sip:a@h>;expires=1, <sip:b@h>\r\n"),
            Err(Reject::IntervalTooBrief { min_expires: 60 })
        );
        assert_eq!(
            run("Contact: <sip:a@h>\r\nExpires: soon\r\n"),
            Err(Reject::BadRequest("Bad Expires"))
        );
    }

    #[test]
    fn wildcard() {
        assert_eq!(run("Contact: *\r\nExpires: 0\r\n"), Ok(Plan::RemoveAll));
        assert!(run("Contact: *\r\n").is_err());
        assert!(run("Contact: *\r\nExpires: 60\r\n").is_err());
        assert!(run("Contact: *, <sip:a@h>\r\nExpires: 0\r\n").is_err());
        assert!(run("Contact: *\r\nContact: <sip:a@h>\r\nExpires: 0\r\n").is_err());
    }

    #[test]
    fn several_contacts_q_and_params() {
        let p = run(
            "m: <sip:a@[2001:db8::1]:5070>;q=0.5;+sip.instance=\"<urn:uuid:1>\";reg-id=1, sip:b@h;expires=60\r\n",
        )
        .unwrap();
        let Plan::Update(c) = p else { panic!() };
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].uri, "sip:a@[2001:db8::1]:5070");
        assert_eq!(c[0].q, Some(500));
        assert_eq!(c[0].params, ";+sip.instance=\"<urn:uuid:1>\";reg-id=1");
        assert_eq!(c[1].expires_secs, 60);
        assert!(run("Contact: <http://x>\r\n").is_err());
        assert!(run("Contact: <sip:a@h>;q=2\r\n").is_err());
    }

    #[test]
    fn q_values() {
        assert_eq!(parse_q("0.5"), Some(500));
        assert_eq!(parse_q("1"), Some(1000));
        assert_eq!(parse_q("1.000"), Some(1000));
        assert_eq!(parse_q("0.125"), Some(125));
        assert_eq!(parse_q("0.1255"), None);
        assert_eq!(parse_q("1.5"), None);
        assert_eq!(format_q(500), "0.5");
        assert_eq!(format_q(125), "0.125");
        assert_eq!(format_q(0), "0");
        assert_eq!(format_q(1000), "1");
    }
}
