//! Call transfer (REFER, RFC 3515; Replaces, RFC 3891; RFC 5589), sans-IO:
//! reading Refer-To, Replaces and Referred-By, and recognising the new call
//! a transfer makes.
//!
//! The phones do the transfer themselves: the transferor's REFER and the
//! transferee's NOTIFYs pass through the dialog like any in-dialog request,
//! and the transferee's new INVITE is an ordinary call, authenticated and
//! routed as every other. What Dialtone adds is the link: when a REFER
//! passes in a dialog it knows, the proxy notes a [`Referral`] (who refers
//! whom to which user, in which call); an INVITE from that transferee to
//! that target within [`REFERRAL_WINDOW`] — with the Replaces the Refer-To
//! carried, for an attended transfer, and a Referred-By naming the
//! transferor when it has one — is the transfer's new call. Each referral
//! links at most one call.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::wire::message::{Message, NameAddr, Uri};

/// How long after its REFER a new call can be the transfer's: a phone
/// sends its INVITE at once after accepting the REFER (RFC 3515 s.2.4.4);
/// 32 s (64·T1) covers its retransmissions and a 407 round trip.
pub const REFERRAL_WINDOW: Duration = Duration::from_secs(32);

/// The most referrals remembered at once: a flood of REFERs in a dialog
/// costs a bounded table, the oldest referrals go first.
pub const MAX_REFERRALS: usize = 4096;

/// `(domain, user)`; the domain lower-cased.
pub type Party = (String, String);

/// A parsed Refer-To (RFC 3515 s.2.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReferTo {
    /// The user the transferee is asked to call.
    pub target: Party,
    /// Attended transfer: the dialog the new call replaces, as the target
    /// knows it.
    pub replaces: Option<Replaces>,
}

/// A Replaces header value (RFC 3891 s.6.1): a dialog by Call-ID and tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaces {
    pub call_id: String,
    pub to_tag: String,
    pub from_tag: String,
}

impl Replaces {
    /// `callid;to-tag=x;from-tag=y[;early-only]`; `None` when a part is
    /// missing.
    pub fn parse(value: &str) -> Option<Replaces> {
        let mut parts = value.split(';');
        let call_id = parts.next()?.trim();
        if call_id.is_empty() || call_id.contains(char::is_whitespace) {
            return None;
        }
        let (mut to_tag, mut from_tag) = (None, None);
        for p in parts {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            let (name, value) = (name.trim(), value.trim());
            if name.eq_ignore_ascii_case("to-tag") {
                to_tag = Some(value);
            } else if name.eq_ignore_ascii_case("from-tag") {
                from_tag = Some(value);
            }
        }
        let (to_tag, from_tag) = (
            to_tag.filter(|t| !t.is_empty())?,
            from_tag.filter(|t| !t.is_empty())?,
        );
        Some(Replaces {
            call_id: call_id.to_owned(),
            to_tag: to_tag.to_owned(),
            from_tag: from_tag.to_owned(),
        })
    }

    /// The dialog `call_id` with tags `a` and `b`, either way round.
    pub fn names(&self, call_id: &str, a: &str, b: &str) -> bool {
        self.call_id == call_id
            && ((self.to_tag == a && self.from_tag == b)
                || (self.to_tag == b && self.from_tag == a))
    }
}

/// Reads a REFER's Refer-To: exactly one, a SIP URI with a user (the
/// phones of the user it names are who the transferee calls), with a
/// Replaces header parameter for an attended transfer. The error is the
/// reason phrase of the 400.
pub fn refer_to(msg: &Message<'_>) -> Result<ReferTo, &'static str> {
    let mut values = msg
        .headers
        .iter()
        .filter(|h| {
            h.raw_name.eq_ignore_ascii_case("Refer-To") || h.raw_name.eq_ignore_ascii_case("r")
        })
        .map(|h| h.value.as_ref());
    let Some(value) = values.next() else {
        return Err("Bad Request (REFER without Refer-To)");
    };
    if values.next().is_some() {
        // RFC 3515 s.2.4.1: exactly one Refer-To.
        return Err("Bad Request (more than one Refer-To)");
    }
    parse_refer_to(value)
}

/// [`refer_to`] of one header value.
pub fn parse_refer_to(value: &str) -> Result<ReferTo, &'static str> {
    let Some(addr) = NameAddr::parse(value) else {
        return Err("Bad Request (Refer-To is not a name-addr or addr-spec)");
    };
    let Some(uri) = Uri::parse(addr.uri) else {
        return Err("Bad Request (Refer-To is not a SIP URI)");
    };
    let Some(user) = uri.user else {
        return Err("Bad Request (Refer-To names no user)");
    };
    let user = percent_decode(user).ok_or("Bad Request (Refer-To user is badly escaped)")?;
    let replaces = match uri.params.split_once('?') {
        None => None,
        Some((_, headers)) => {
            let mut found = None;
            for h in headers.split('&') {
                let (name, value) = h.split_once('=').unwrap_or((h, ""));
                if name.eq_ignore_ascii_case("Replaces") {
                    let value = percent_decode(value)
                        .ok_or("Bad Request (Refer-To Replaces is badly escaped)")?;
                    found = Some(Replaces::parse(&value).ok_or(
                        "Bad Request (Refer-To Replaces lacks Call-ID, to-tag or from-tag)",
                    )?);
                }
            }
            found
        }
    };
    Ok(ReferTo {
        target: (uri.host.to_ascii_lowercase(), user),
        replaces,
    })
}

/// A Refer-To value asking to call `target` replacing `replaces`: the
/// Replaces escaped as a URI header (RFC 3261 s.19.1.1).
pub fn refer_to_value(target: &Party, replaces: &Replaces) -> String {
    let value = format!(
        "{};to-tag={};from-tag={}",
        replaces.call_id, replaces.to_tag, replaces.from_tag
    );
    let mut escaped = String::with_capacity(value.len() + 16);
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.!~*'()[]/:+$".contains(&b) {
            escaped.push(char::from(b));
        } else {
            escaped.push_str(&format!("%{b:02X}"));
        }
    }
    format!("<sip:{}@{}?Replaces={escaped}>", target.1, target.0)
}

/// The Replaces header of an INVITE, when it has a well-formed one.
pub fn replaces_of(msg: &Message<'_>) -> Option<Replaces> {
    msg.headers
        .iter()
        .find(|h| h.raw_name.eq_ignore_ascii_case("Replaces"))
        .and_then(|h| Replaces::parse(&h.value))
}

/// The user a request's Referred-By (RFC 3892; compact `b`) names.
pub fn referred_by(msg: &Message<'_>) -> Option<Party> {
    let value = msg
        .headers
        .iter()
        .find(|h| {
            h.raw_name.eq_ignore_ascii_case("Referred-By") || h.raw_name.eq_ignore_ascii_case("b")
        })?
        .value
        .as_ref();
    let uri = Uri::parse(NameAddr::parse(value)?.uri)?;
    Some((uri.host.to_ascii_lowercase(), percent_decode(uri.user?)?))
}

/// RFC 3986 percent-decoding; `None` for a bad escape or bytes that are
/// not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// A REFER that passed in a dialog the proxy knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referral {
    /// The original call's `call_id` and SIP Call-ID.
    pub call_id: String,
    pub sip_call_id: String,
    /// Who sent the REFER, and to whom.
    pub transferor: Party,
    pub transferee: Party,
    pub refer_to: ReferTo,
    pub at: Instant,
}

/// What a new INVITE says about itself, for [`Referrals::take`].
#[derive(Debug, Clone, Copy)]
pub struct NewInvite<'a> {
    pub caller: &'a Party,
    pub callee: &'a Party,
    pub replaces: Option<&'a Replaces>,
    pub referred_by: Option<&'a Party>,
}

/// The referrals of the last [`REFERRAL_WINDOW`], oldest first.
#[derive(Debug, Default)]
pub struct Referrals {
    list: VecDeque<Referral>,
}

impl Referrals {
    pub fn note(&mut self, referral: Referral) {
        self.expire(referral.at);
        // A retransmitted REFER (forwarded again: in-dialog requests have
        // no transaction state here) refreshes its referral, so that it
        // still links one call only.
        self.list.retain(|r| {
            !(r.call_id == referral.call_id
                && r.transferor == referral.transferor
                && r.refer_to == referral.refer_to)
        });
        while self.list.len() >= MAX_REFERRALS {
            self.list.pop_front();
        }
        self.list.push_back(referral);
    }

    /// The referral `invite` carries out, taken out of the table: the
    /// latest one of the last [`REFERRAL_WINDOW`] whose transferee calls
    /// its target — with its Replaces (same dialog) if it had one, without
    /// one if it had none — and, when the INVITE has a Referred-By, whose
    /// transferor it names.
    pub fn take(&mut self, invite: NewInvite<'_>, now: Instant) -> Option<Referral> {
        self.expire(now);
        let i = self.list.iter().rposition(|r| {
            same(&r.transferee, invite.caller)
                && same(&r.refer_to.target, invite.callee)
                && invite.referred_by.is_none_or(|by| same(by, &r.transferor))
                && match (&r.refer_to.replaces, invite.replaces) {
                    (None, None) => true,
                    (Some(a), Some(b)) => a.call_id == b.call_id,
                    _ => false,
                }
        })?;
        self.list.remove(i)
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.list.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn expire(&mut self, now: Instant) {
        while self
            .list
            .front()
            .is_some_and(|r| now.saturating_duration_since(r.at) > REFERRAL_WINDOW)
        {
            self.list.pop_front();
        }
    }
}

/// The same user: domains compare case-insensitively, user names exactly
/// (RFC 3261 s.19.1.4).
fn same(a: &Party, b: &Party) -> bool {
    a.1 == b.1 && a.0.eq_ignore_ascii_case(&b.0)
}

/// Is this NOTIFY the transferee's report that the transfer's new call was
/// answered (`Event: refer`, a `message/sipfrag` body with a 2xx status
/// line, RFC 3515 s.2.4.5)?
pub fn reports_success(msg: &Message<'_>) -> bool {
    let refer_event = msg
        .headers
        .iter()
        .find(|h| h.raw_name.eq_ignore_ascii_case("Event") || h.raw_name.eq_ignore_ascii_case("o"))
        .is_some_and(|h| {
            h.value
                .split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case("refer"))
        });
    refer_event && msg.body.starts_with(b"SIP/2.0 2")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn party(user: &str) -> Party {
        ("example.com".to_owned(), user.to_owned())
    }

    fn referral(at: Instant, replaces: Option<Replaces>) -> Referral {
        Referral {
            call_id: "orig".into(),
            sip_call_id: "sip-orig".into(),
            transferor: party("bob"),
            transferee: party("alice"),
            refer_to: ReferTo {
                target: party("carol"),
                replaces,
            },
            at,
        }
    }

    #[test]
    fn refer_to_is_read_with_and_without_replaces() {
        let blind = parse_refer_to("<sip:carol@Example.com>").unwrap();
        assert_eq!(blind.target, party("carol"));
        assert_eq!(blind.replaces, None);
        let bare = parse_refer_to("sip:carol@example.com;transport=udp").unwrap();
        assert_eq!(bare.target, party("carol"));
        let attended = parse_refer_to(
            "\"Carol\" <sip:carol@example.com?Replaces=abc%40host%3Bto-tag%3Dc1%3Bfrom-tag%3Db1>",
        )
        .unwrap();
        assert_eq!(
            attended.replaces,
            Some(Replaces {
                call_id: "abc@host".into(),
                to_tag: "c1".into(),
                from_tag: "b1".into()
            })
        );
        // linphone writes the tags the other way round and adds a parameter.
        let r = parse_refer_to(
            "<sip:carol@example.com?Replaces=x%3Bfrom-tag%3Db%3Bto-tag%3Dc%3Bearly-only>",
        )
        .unwrap()
        .replaces
        .unwrap();
        assert!(r.names("x", "b", "c") && r.names("x", "c", "b") && !r.names("y", "b", "c"));
    }

    #[test]
    fn a_written_refer_to_reads_back() {
        let r = Replaces {
            call_id: "x1@10.0.0.1".into(),
            to_tag: "t-1".into(),
            from_tag: "f.2~".into(),
        };
        let value = refer_to_value(&party("carol"), &r);
        let read = parse_refer_to(&value).unwrap();
        assert_eq!(read.target, party("carol"));
        assert_eq!(read.replaces, Some(r));
    }

    #[test]
    fn bad_refer_to_says_what_is_wrong() {
        for (value, why) in [
            ("", "not a name-addr"),
            ("<garbage", "not a name-addr"),
            ("<tel:+15551234>", "not a SIP URI"),
            ("<sip:example.com>", "names no user"),
            ("<sip:carol@example.com?Replaces=abc>", "lacks Call-ID"),
            ("<sip:carol@example.com?Replaces=a%zz>", "badly escaped"),
        ] {
            let err = parse_refer_to(value).unwrap_err();
            assert!(err.contains(why), "{value}: {err}");
        }
    }

    #[test]
    fn a_referral_links_one_matching_call_within_the_window() {
        let t0 = Instant::now();
        let mut table = Referrals::default();
        table.note(referral(t0, None));
        let (alice, carol, dave, bob) =
            (party("alice"), party("carol"), party("dave"), party("bob"));
        let invite = |caller, callee, by| NewInvite {
            caller,
            callee,
            replaces: None,
            referred_by: by,
        };
        // Someone else calling carol, alice calling someone else, or a
        // Referred-By naming another transferor: not the transfer.
        assert!(table.take(invite(&dave, &carol, None), t0).is_none());
        assert!(table.take(invite(&alice, &dave, None), t0).is_none());
        assert!(table
            .take(invite(&alice, &carol, Some(&dave)), t0)
            .is_none());
        let got = table.take(invite(&alice, &carol, Some(&bob)), t0).unwrap();
        assert_eq!(got.call_id, "orig");
        // Taken: a second call is not linked again.
        assert!(table.take(invite(&alice, &carol, None), t0).is_none());
        // Too late.
        table.note(referral(t0, None));
        let late = t0 + REFERRAL_WINDOW + Duration::from_millis(1);
        assert!(table.take(invite(&alice, &carol, None), late).is_none());
        assert!(table.is_empty());
    }

    #[test]
    fn an_attended_referral_needs_the_same_replaces() {
        let t0 = Instant::now();
        let r = Replaces {
            call_id: "consult".into(),
            to_tag: "c".into(),
            from_tag: "b".into(),
        };
        let other = Replaces {
            call_id: "other".into(),
            ..r.clone()
        };
        let mut table = Referrals::default();
        table.note(referral(t0, Some(r.clone())));
        let (alice, carol) = (party("alice"), party("carol"));
        let with = |replaces| NewInvite {
            caller: &alice,
            callee: &carol,
            replaces,
            referred_by: None,
        };
        assert!(table.take(with(None), t0).is_none());
        assert!(table.take(with(Some(&other)), t0).is_none());
        assert!(table.take(with(Some(&r)), t0).is_some());
    }

    #[test]
    fn the_table_is_bounded_and_a_repeated_refer_is_noted_once() {
        let t0 = Instant::now();
        let mut table = Referrals::default();
        table.note(referral(t0, None));
        table.note(referral(t0 + Duration::from_millis(500), None));
        assert_eq!(table.len(), 1);
        for i in 0..MAX_REFERRALS + 10 {
            table.note(Referral {
                call_id: format!("call-{i}"),
                ..referral(t0, None)
            });
        }
        assert_eq!(table.len(), MAX_REFERRALS);
    }

    #[test]
    fn success_is_a_refer_notify_with_a_2xx_sipfrag() {
        let notify = |event: &str, body: &str| {
            format!(
                "NOTIFY sip:a@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1\r\n\
                 To: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 2 NOTIFY\r\nEvent: {event}\r\n\
                 Content-Type: message/sipfrag\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        let yes = notify("refer;id=3", "SIP/2.0 200 OK\r\n");
        let trying = notify("refer", "SIP/2.0 100 Trying\r\n");
        let presence = notify("presence", "SIP/2.0 200 OK\r\n");
        assert!(reports_success(&Message::parse(yes.as_bytes()).unwrap()));
        assert!(!reports_success(
            &Message::parse(trying.as_bytes()).unwrap()
        ));
        assert!(!reports_success(
            &Message::parse(presence.as_bytes()).unwrap()
        ));
    }
}
