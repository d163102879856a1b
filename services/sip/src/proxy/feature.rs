//! A call the node answers as a user agent. Two kinds:
//! - a feature call (ADR 0020): a phone dialled a feature code (`*78`), the
//!   change is durable, and the node confirms it: it answers the INVITE with
//!   a 200 (an SDP answer rejecting every offered stream), waits for the
//!   ACK, then hangs up with a BYE of its own;
//! - an application's call (ADR 0022): the 200 carries the application's
//!   SDP answer, and the call stays up until the caller hangs up or the
//!   application does ([`super::AppControl::hang_up`]); the application
//!   hears of the ACK, of re-INVITEs (it answers their offers) and of the
//!   end through its [`AppSession`].
//!
//! Sans-IO like the calls: every input takes `now` and pushes the messages
//! to send; the [`super::engine::Engine`] routes the INVITE's
//! retransmissions (by its key), the caller's requests in the dialog (by
//! Call-ID) and the responses to our BYE (by its Via branch, prefix
//! [`BRANCH_PREFIX`]) here, and wakes it at [`FeatureCall::next_deadline`].
//!
//! The transactions it runs (RFC 3261):
//! - the INVITE's 2xx, retransmitted over UDP (T1 doubling up to T2) until
//!   the ACK; without an ACK within 64*T1 the session is ended with the
//!   BYE anyway (s.13.3.1.4);
//! - the BYE, a non-INVITE client transaction: Timer E retransmissions
//!   over UDP, Timer F (64*T1) gives up;
//! - a BYE from the caller (it hung up first, or our BYEs crossed): 200,
//!   repeated for its retransmissions while the call lingers.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::backend::{AppEnd, AppSession, CallCause, CallRecord, HangupSide};
use crate::transaction::{Key, T1, T2};
use crate::transport::Flow;
use crate::wire::message::{Message, Name, StartLine};
use crate::wire::response::{self, Source};

use super::call::{via, TIMER_64T1};
use super::engine::Advertised;
use super::leg::{self, LegDialog};
use super::legs::Legs;

/// The Via branch prefix of a feature call's BYE.
pub(crate) const BRANCH_PREFIX: &str = "z9hG4bK-df";

/// The `Reason` (RFC 3326) of an application's BYE after an RTP timeout:
/// what tells the proxy recording the caller's leg of a call forwarded to
/// voicemail that the call ended by a timeout, not by the application.
pub(crate) const MEDIA_TIMEOUT_REASON: &str = "SIP;cause=408;text=\"RTP timeout\"";

/// How the end of an application's call is recorded on the caller's leg:
/// the caller hanging up, the application hanging up (it is the callee),
/// or the node ending it for a timeout (no RTP from the caller, no ACK).
pub(crate) fn end_cause(end: AppEnd) -> (CallCause, HangupSide) {
    match end {
        AppEnd::CallerHungUp => (CallCause::NormalClearing, HangupSide::Caller),
        AppEnd::HungUp => (CallCause::NormalClearing, HangupSide::Callee),
        AppEnd::MediaTimeout | AppEnd::NoAck => (CallCause::Timeout, HangupSide::System),
    }
}

/// Whether `bye` is an application's BYE after an RTP timeout (its
/// `Reason` is [`MEDIA_TIMEOUT_REASON`]). Read only for a dialog whose
/// callee is one of the node's applications: a phone's `Reason` means
/// nothing to the call's record.
pub(crate) fn ends_for_media_timeout(bye: &Message<'_>) -> bool {
    bye.headers.iter().any(|h| {
        h.name == Name::Other
            && h.raw_name.eq_ignore_ascii_case("Reason")
            && h.value.trim() == MEDIA_TIMEOUT_REASON
    })
}

/// What a feature call starts from.
pub(crate) struct FeatureSetup {
    pub key: Key,
    pub source: Source,
    /// Where the caller is reached (its INVITE's flow).
    pub upstream: Flow,
    /// Our tag in the caller's dialog.
    pub to_tag: String,
    /// The branch of our BYE (starts with [`BRANCH_PREFIX`]).
    pub bye_branch: Box<str>,
    pub advertised: Advertised,
    pub kind: Kind,
    /// The caller's leg of an application's call that is one (ADR 0024),
    /// started and answered already; its end is recorded from here.
    pub legs: Option<Legs>,
}

/// What the node answers for.
pub(crate) enum Kind {
    /// A feature code: hang up once the caller acknowledged.
    Feature,
    /// An application: answer with its SDP and keep the call up.
    App {
        answer: Vec<u8>,
        session: Box<dyn AppSession>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// An application's call, acknowledged: up until either side hangs up.
    Established,
    /// Our 2xx is out, the ACK not in yet.
    Answered {
        retransmit_at: Option<Instant>,
        interval: Duration,
        give_up_at: Instant,
    },
    /// Our BYE is out, its final response not in yet.
    Hanging {
        retransmit_at: Option<Instant>,
        interval: Duration,
        give_up_at: Instant,
    },
    /// Over: remembered until the instant so that retransmissions (the
    /// caller's BYE, our 2xx's ACK) are answered rather than refused.
    Lingering(Instant),
    Done,
}

/// One feature call.
pub(crate) struct FeatureCall {
    setup: FeatureSetup,
    dialog: LegDialog,
    invite_cseq: u32,
    ok: Bytes,
    bye: Option<Bytes>,
    state: State,
    /// An application's session; `None` for a feature call, and once the
    /// session has been told the call ended.
    session: Option<Box<dyn AppSession>>,
    /// How the application's call ended, until its leg's end is taken
    /// ([`FeatureCall::take_end_records`]).
    ended: Option<AppEnd>,
}

impl FeatureCall {
    /// Answers `invite`: 200 with the application's SDP answer, or for a
    /// feature code a rejecting SDP answer when it had an offer.
    pub fn start(
        mut setup: FeatureSetup,
        invite: &Message<'_>,
        now: Instant,
        out: &mut Vec<(Flow, Bytes)>,
    ) -> FeatureCall {
        let from = invite.header(Name::From).unwrap_or("");
        let to = invite.header(Name::To).unwrap_or("");
        let dialog = LegDialog {
            call_id: invite.call_id().unwrap_or("").to_owned(),
            local_tag: setup.to_tag.clone(),
            remote_tag: invite
                .from()
                .ok()
                .and_then(|f| f.tag())
                .unwrap_or("")
                .to_owned(),
            local: leg::with_own_tag(to, &setup.to_tag),
            remote: from.to_owned(),
            remote_target: leg::contact_uri(invite)
                .unwrap_or_else(|| format!("sip:{}", setup.upstream.remote)),
            route_set: invite.list(Name::RecordRoute).map(str::to_owned).collect(),
            local_cseq: 0,
            flow: setup.upstream,
        };
        let mut headers: Vec<(String, String)> = invite
            .list(Name::RecordRoute)
            .map(|rr| ("Record-Route".to_owned(), rr.to_owned()))
            .collect();
        headers.push((
            "Contact".to_owned(),
            leg::own_contact(&setup.advertised, setup.upstream),
        ));
        let (body, session) = match std::mem::replace(&mut setup.kind, Kind::Feature) {
            Kind::Feature => (
                sdp_answer(invite.body, &setup.advertised)
                    .unwrap_or_default()
                    .into_bytes(),
                None,
            ),
            Kind::App { answer, session } => (answer, Some(session)),
        };
        if !body.is_empty() {
            headers.push(("Content-Type".to_owned(), "application/sdp".to_owned()));
        }
        headers.push(("Server".to_owned(), "Dialtone".to_owned()));
        let ok = leg::response(
            invite,
            &setup.source,
            200,
            "OK",
            &setup.to_tag,
            &headers,
            &body,
        );
        out.push((setup.upstream, ok.clone()));
        FeatureCall {
            session,
            ended: None,
            invite_cseq: invite.cseq().map(|c| c.seq).unwrap_or(1),
            state: State::Answered {
                retransmit_at: (!setup.upstream.is_reliable()).then_some(now + T1),
                interval: T1,
                give_up_at: now + TIMER_64T1,
            },
            dialog,
            ok,
            bye: None,
            setup,
        }
    }

    pub fn key(&self) -> &Key {
        &self.setup.key
    }

    pub fn call_id(&self) -> &str {
        &self.dialog.call_id
    }

    /// Whether a request with these Call-ID and tags comes from the
    /// caller of this call (the peer of our dialog), not from us.
    pub fn is_from_peer(&self, call_id: &str, from_tag: &str, to_tag: &str) -> bool {
        self.dialog.owns(call_id, from_tag, to_tag)
    }

    pub fn bye_branch(&self) -> &str {
        &self.setup.bye_branch
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            State::Answered {
                retransmit_at,
                give_up_at,
                ..
            }
            | State::Hanging {
                retransmit_at,
                give_up_at,
                ..
            } => Some(retransmit_at.map_or(give_up_at, |t| t.min(give_up_at))),
            State::Lingering(until) => Some(until),
            State::Established | State::Done => None,
        }
    }

    /// The caller sent its INVITE again: our 2xx again while it waits for
    /// the ACK (it was lost).
    pub fn on_invite_again(&self, out: &mut Vec<(Flow, Bytes)>) {
        if matches!(self.state, State::Answered { .. }) {
            out.push((self.setup.upstream, self.ok.clone()));
        }
    }

    /// The ACK of our 2xx: a feature's confirmation was heard, the node
    /// hangs up; an application's call is up.
    pub fn on_ack(&mut self, now: Instant, out: &mut Vec<(Flow, Bytes)>) {
        if matches!(self.state, State::Answered { .. }) {
            match &mut self.session {
                Some(session) => {
                    session.confirmed();
                    self.state = State::Established;
                }
                None => self.hang_up(now, out),
            }
        }
    }

    /// The application hangs up (`end`: [`AppEnd::HungUp`], or
    /// [`AppEnd::MediaTimeout`], which the BYE's `Reason` tells the proxy
    /// recording the caller's leg): a BYE, unless the call is over
    /// already.
    pub fn hang_up_app(&mut self, end: AppEnd, now: Instant, out: &mut Vec<(Flow, Bytes)>) {
        if matches!(self.state, State::Answered { .. } | State::Established) {
            self.end_session(end);
            let reason = (end == AppEnd::MediaTimeout)
                .then(|| ("Reason".to_owned(), MEDIA_TIMEOUT_REASON.to_owned()));
            self.hang_up_with(now, out, reason.as_slice());
        }
    }

    /// Tells the application (once) that its call is over.
    fn end_session(&mut self, end: AppEnd) {
        if let Some(mut session) = self.session.take() {
            session.ended(end);
            self.ended = Some(end);
        }
    }

    /// The records of the caller's leg's end, once, when the call is a
    /// leg (ADR 0024) and just ended: `(call_id, records)`.
    pub fn take_end_records(&mut self) -> Option<(String, Vec<CallRecord>)> {
        let end = self.ended.take()?;
        let legs = self.setup.legs.as_ref()?;
        let (cause, side) = end_cause(end);
        Some((legs.call_id.clone(), legs.end(cause, side)))
    }

    /// A request in the dialog (it has our To tag). Returns a response to
    /// send when it is not answered here.
    pub fn on_request(
        &mut self,
        msg: &Message<'_>,
        source: Source,
        now: Instant,
        out: &mut Vec<(Flow, Bytes)>,
    ) -> Option<(u16, &'static str)> {
        let StartLine::Request { method_text, .. } = msg.start else {
            return None;
        };
        let from_tag = msg.from().ok().and_then(|f| f.tag()).unwrap_or("");
        let to_tag = msg.to().ok().and_then(|t| t.tag()).unwrap_or("");
        let call_id = msg.call_id().unwrap_or("");
        if !self.dialog.owns(call_id, from_tag, to_tag) {
            return (method_text != "ACK").then_some((481, response::reason(481)));
        }
        match method_text {
            "ACK" => {
                // (An ACK of a re-INVITE's 200 has another CSeq: nothing
                // to do.)
                if msg.cseq().is_ok_and(|c| c.seq == self.invite_cseq) {
                    self.on_ack(now, out);
                }
                None
            }
            "INVITE" if self.state == State::Established => {
                let reply_to = self.reply_flow(msg, source);
                let response = match self.session.as_mut().map(|s| s.reoffer(msg.body)) {
                    Some(Ok(answer)) => {
                        let mut headers = vec![(
                            "Contact".to_owned(),
                            leg::own_contact(&self.setup.advertised, self.setup.upstream),
                        )];
                        if !answer.is_empty() {
                            headers.push(("Content-Type".to_owned(), "application/sdp".to_owned()));
                        }
                        leg::response(msg, &source, 200, "OK", "", &headers, &answer)
                    }
                    Some(Err(status)) => {
                        leg::response(msg, &source, status, response::reason(status), "", &[], &[])
                    }
                    None => leg::response(msg, &source, 481, response::reason(481), "", &[], &[]),
                };
                // Without a provisional response, a lost 200 brings the
                // re-INVITE again (Timer A), which is answered again.
                out.push((reply_to, response));
                None
            }
            // DTMF as SIP INFO, keep-alive OPTIONS: acknowledged (the
            // application reads DTMF from the media, RFC 4733).
            "INFO" | "OPTIONS" if self.state == State::Established => Some((200, "OK")),
            "BYE" => {
                let reply_to = self.reply_flow(msg, source);
                out.push((
                    reply_to,
                    leg::response(msg, &source, 200, "OK", "", &[], &[]),
                ));
                // The caller hung up before our BYE: none is needed now.
                // After it (the BYEs crossed), ours still waits for its
                // response.
                if matches!(self.state, State::Answered { .. } | State::Established) {
                    self.end_session(AppEnd::CallerHungUp);
                    self.linger(now);
                }
                None
            }
            // The session is being ended: nothing else is taken on in it.
            _ => Some((481, response::reason(481))),
        }
    }

    /// Where a response to a request in the dialog goes: its Via (UDP), on
    /// the caller's connection when it came on it.
    fn reply_flow(&self, msg: &Message<'_>, source: Source) -> Flow {
        let dest = if source.reliable {
            source.addr
        } else {
            msg.top_via()
                .map_or(source.addr, |v| response::udp_destination(&v, source.addr))
        };
        Flow {
            remote: dest,
            connection: self
                .setup
                .upstream
                .connection
                .filter(|_| dest == self.setup.upstream.remote),
            ..self.setup.upstream
        }
    }

    /// A response to our BYE.
    pub fn on_response(&mut self, msg: &Message<'_>, now: Instant) {
        let StartLine::Response { code, .. } = msg.start else {
            return;
        };
        if let State::Hanging {
            retransmit_at,
            give_up_at,
            ..
        } = self.state
        {
            if code >= 200 {
                self.linger(now);
            } else if retransmit_at.is_some() {
                // Proceeding: retransmitted at T2 from now on (Timer E).
                self.state = State::Hanging {
                    retransmit_at: Some(now + T2),
                    interval: T2,
                    give_up_at,
                };
            }
        }
    }

    pub fn on_timer(&mut self, now: Instant, out: &mut Vec<(Flow, Bytes)>) {
        match self.state {
            State::Answered {
                retransmit_at,
                interval,
                give_up_at,
            } => {
                if now >= give_up_at {
                    // No ACK: the session is ended all the same.
                    self.end_session(AppEnd::NoAck);
                    self.hang_up(now, out);
                } else if retransmit_at.is_some_and(|t| now >= t) {
                    let interval = (interval * 2).min(T2);
                    self.state = State::Answered {
                        retransmit_at: Some(now + interval),
                        interval,
                        give_up_at,
                    };
                    out.push((self.setup.upstream, self.ok.clone()));
                }
            }
            State::Hanging {
                retransmit_at,
                interval,
                give_up_at,
            } => {
                if now >= give_up_at {
                    // Timer F: the caller is gone; nothing more to do.
                    self.state = State::Done;
                } else if retransmit_at.is_some_and(|t| now >= t) {
                    let interval = (interval * 2).min(T2);
                    self.state = State::Hanging {
                        retransmit_at: Some(now + interval),
                        interval,
                        give_up_at,
                    };
                    if let Some(bye) = &self.bye {
                        out.push((self.dialog.flow, bye.clone()));
                    }
                }
            }
            State::Lingering(until) if now >= until => self.state = State::Done,
            State::Established | State::Lingering(_) | State::Done => {}
        }
    }

    fn hang_up(&mut self, now: Instant, out: &mut Vec<(Flow, Bytes)>) {
        self.hang_up_with(now, out, &[]);
    }

    fn hang_up_with(
        &mut self,
        now: Instant,
        out: &mut Vec<(Flow, Bytes)>,
        headers: &[(String, String)],
    ) {
        let flow = self.dialog.flow;
        let v = via(
            &self.setup.advertised,
            flow.transport,
            &self.setup.bye_branch,
        );
        let (_, bye) = self.dialog.request("BYE", &v, None, None, headers, &[]);
        out.push((flow, bye.clone()));
        self.bye = Some(bye);
        self.state = State::Hanging {
            retransmit_at: (!flow.is_reliable()).then_some(now + T1),
            interval: T1,
            give_up_at: now + TIMER_64T1,
        };
    }

    fn linger(&mut self, now: Instant) {
        self.state = if self.setup.upstream.is_reliable() {
            State::Done
        } else {
            State::Lingering(now + TIMER_64T1)
        };
    }
}

impl Drop for FeatureCall {
    // An application hears of its call's end exactly once, whatever ends
    // it: a call forgotten by the engine (shutdown) ends too.
    fn drop(&mut self) {
        self.end_session(AppEnd::HungUp);
    }
}

/// The answer to an SDP offer that rejects every stream (RFC 3264 s.6:
/// each `m=` line again, port 0, the offered formats): the phone sets up
/// no media and shows the call answered. `None` without an offer.
fn sdp_answer(offer: &[u8], advertised: &Advertised) -> Option<String> {
    let offer = std::str::from_utf8(offer).ok()?;
    let media: Vec<&str> = offer
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("m="))
        .collect();
    if media.is_empty() {
        return None;
    }
    let host = advertised
        .addr
        .rsplit_once(':')
        .map_or(advertised.addr.as_str(), |(h, _)| h)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip = match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(a)) => format!("IP6 {a}"),
        Ok(std::net::IpAddr::V4(a)) => format!("IP4 {a}"),
        Err(_) => "IP4 0.0.0.0".to_owned(),
    };
    let mut out = format!("v=0\r\no=dialtone 1 1 IN {ip}\r\ns=-\r\nc=IN {ip}\r\nt=0 0\r\n");
    for m in media {
        // `<media> <port> <proto> <fmt>...`: the port becomes 0.
        let mut parts = m.split_whitespace();
        let (Some(kind), Some(_port), Some(proto)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let formats: Vec<&str> = parts.collect();
        out.push_str(&format!("m={kind} 0 {proto} {}\r\n", formats.join(" ")));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Transport;
    use proptest::prelude::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
m=audio 4000 RTP/AVP 0 8 101\r\na=rtpmap:101 telephone-event/8000\r\nm=video 4002 RTP/AVP 96\r\n";

    fn invite(body: &str) -> String {
        format!(
            "INVITE sip:*78@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bKinv1;rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@example.com>;tag=a1\r\n\
To: <sip:*78@example.com>\r\n\
Call-ID: fc1\r\n\
CSeq: 7 INVITE\r\n\
Contact: <sip:alice@10.0.0.1:5062>\r\n\
{}Content-Length: {}\r\n\r\n{body}",
            if body.is_empty() {
                ""
            } else {
                "Content-Type: application/sdp\r\n"
            },
            body.len()
        )
    }

    fn flow(transport: Transport) -> Flow {
        Flow {
            transport,
            remote: "10.0.0.1:5062".parse().unwrap(),
            local: None,
            connection: None,
        }
    }

    fn start(transport: Transport, body: &str, now: Instant) -> (FeatureCall, Vec<(Flow, Bytes)>) {
        let raw = invite(body);
        let msg = Message::parse(raw.as_bytes()).unwrap();
        let via = msg.top_via().unwrap();
        let setup = FeatureSetup {
            key: Key::from_request_via(&msg, &via).unwrap(),
            source: Source {
                addr: "10.0.0.1:5062".parse().unwrap(),
                reliable: transport.is_reliable(),
            },
            upstream: flow(transport),
            to_tag: "ours".into(),
            bye_branch: format!("{BRANCH_PREFIX}1").into(),
            advertised: Advertised::new("192.0.2.10:5060"),
            kind: Kind::Feature,
            legs: None,
        };
        let mut out = Vec::new();
        let call = FeatureCall::start(setup, &msg, now, &mut out);
        (call, out)
    }

    type Refusal = (u16, &'static str);

    fn request(method: &str, cseq: u32, from_tag: &str) -> String {
        format!(
            "{method} sip:192.0.2.10:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 10.0.0.1:5062;branch=z9hG4bK{method}{cseq};rport\r\n\
Max-Forwards: 70\r\n\
From: <sip:alice@example.com>;tag={from_tag}\r\n\
To: <sip:*78@example.com>;tag=ours\r\n\
Call-ID: fc1\r\n\
CSeq: {cseq} {method}\r\n\
Content-Length: 0\r\n\r\n"
        )
    }

    fn feed(
        call: &mut FeatureCall,
        raw: &str,
        now: Instant,
    ) -> (Option<Refusal>, Vec<(Flow, Bytes)>) {
        let msg = Message::parse(raw.as_bytes()).unwrap();
        let mut out = Vec::new();
        let source = Source {
            addr: "10.0.0.1:5062".parse().unwrap(),
            reliable: false,
        };
        let r = call.on_request(&msg, source, now, &mut out);
        (r, out)
    }

    fn bye_response(call: &mut FeatureCall, bye: &Bytes, code: u16, now: Instant) {
        let bye = Message::parse(bye).unwrap();
        let resp = leg::response(
            &bye,
            &Source {
                addr: "192.0.2.10:5060".parse().unwrap(),
                reliable: false,
            },
            code,
            response::reason(code),
            "",
            &[],
            &[],
        );
        call.on_response(&Message::parse(&resp).unwrap(), now);
    }

    #[test]
    fn answers_with_a_rejecting_sdp_then_hangs_up_after_the_ack() {
        let t0 = Instant::now();
        let (mut call, out) = start(Transport::Udp, OFFER, t0);
        assert_eq!(out.len(), 1);
        let ok = Message::parse(&out[0].1).unwrap();
        assert!(matches!(ok.start, StartLine::Response { code: 200, .. }));
        assert_eq!(ok.to().unwrap().tag(), Some("ours"));
        let body = std::str::from_utf8(ok.body).unwrap();
        assert!(body.contains("m=audio 0 RTP/AVP 0 8 101\r\n"), "{body}");
        assert!(body.contains("m=video 0 RTP/AVP 96\r\n"), "{body}");
        assert!(body.contains("c=IN IP4 192.0.2.10"), "{body}");
        assert_eq!(ok.header(Name::ContentType), Some("application/sdp"));
        // Lost 2xx: retransmitted at T1.
        let mut o = Vec::new();
        call.on_timer(t0 + T1, &mut o);
        assert_eq!(o.len(), 1);
        let (refusal, out) = feed(&mut call, &request("ACK", 7, "a1"), t0 + T1);
        assert_eq!(refusal, None);
        assert_eq!(out.len(), 1, "the BYE");
        let bye = Message::parse(&out[0].1).unwrap();
        assert!(
            matches!(bye.start, StartLine::Request { method_text: "BYE", uri, .. } if uri == "sip:alice@10.0.0.1:5062")
        );
        assert_eq!(bye.from().unwrap().tag(), Some("ours"));
        assert_eq!(bye.to().unwrap().tag(), Some("a1"));
        assert!(bye
            .top_via()
            .unwrap()
            .branch()
            .unwrap()
            .starts_with(BRANCH_PREFIX));
        // Timer E, then the 200.
        let mut o = Vec::new();
        call.on_timer(t0 + T1 * 2, &mut o);
        assert_eq!(o.len(), 1);
        bye_response(&mut call, &out[0].1, 200, t0 + T1 * 3);
        assert!(!call.is_done(), "lingers over UDP");
        call.on_timer(t0 + T1 * 3 + TIMER_64T1, &mut Vec::new());
        assert!(call.is_done());
    }

    #[test]
    fn no_offer_no_body_and_tcp_retransmits_nothing() {
        let t0 = Instant::now();
        let (mut call, out) = start(Transport::Tcp, "", t0);
        let ok = Message::parse(&out[0].1).unwrap();
        assert!(ok.body.is_empty());
        assert_eq!(call.next_deadline(), Some(t0 + TIMER_64T1));
        let mut o = Vec::new();
        call.on_ack(t0, &mut o);
        assert_eq!(o.len(), 1);
        bye_response(&mut call, &o[0].1, 481, t0);
        assert!(call.is_done());
    }

    #[test]
    fn the_callers_bye_first_is_answered_and_no_bye_is_sent() {
        let t0 = Instant::now();
        let (mut call, _) = start(Transport::Udp, OFFER, t0);
        let (r, out) = feed(&mut call, &request("BYE", 8, "a1"), t0);
        assert_eq!(r, None);
        assert_eq!(out.len(), 1);
        assert!(out[0].1.starts_with(b"SIP/2.0 200"));
        // Its retransmission: 200 again; a late ACK sends no BYE.
        let (_, out) = feed(&mut call, &request("BYE", 8, "a1"), t0 + T1);
        assert!(out[0].1.starts_with(b"SIP/2.0 200"));
        let (_, out) = feed(&mut call, &request("ACK", 7, "a1"), t0 + T1);
        assert!(out.is_empty());
        // Other dialogs and other methods: 481.
        assert_eq!(
            feed(&mut call, &request("BYE", 9, "zz"), t0).0.map(|r| r.0),
            Some(481)
        );
        assert_eq!(
            feed(&mut call, &request("INFO", 9, "a1"), t0)
                .0
                .map(|r| r.0),
            Some(481)
        );
    }

    #[test]
    fn without_an_ack_the_session_is_ended_after_64_t1() {
        let t0 = Instant::now();
        let (mut call, _) = start(Transport::Udp, OFFER, t0);
        let mut o = Vec::new();
        call.on_timer(t0 + TIMER_64T1, &mut o);
        assert!(o[0].1.starts_with(b"BYE "));
        call.on_timer(t0 + TIMER_64T1 * 2, &mut Vec::new());
        assert!(call.is_done(), "Timer F: the caller is gone");
    }

    /// What an application's session heard, in order.
    #[derive(Clone, Default)]
    struct Heard(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

    impl Heard {
        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    struct Recording(Heard);

    impl AppSession for Recording {
        fn confirmed(&mut self) {
            self.0 .0.lock().unwrap().push("confirmed".into());
        }
        fn reoffer(&mut self, offer: &[u8]) -> Result<Vec<u8>, u16> {
            self.0
                 .0
                .lock()
                .unwrap()
                .push(format!("reoffer {}", offer.len()));
            if offer.starts_with(b"bad") {
                Err(488)
            } else {
                Ok(b"v=0 answer2".to_vec())
            }
        }
        fn ended(&mut self, end: AppEnd) {
            self.0 .0.lock().unwrap().push(format!("ended {end:?}"));
        }
    }

    fn start_app(transport: Transport, now: Instant) -> (FeatureCall, Heard, Vec<(Flow, Bytes)>) {
        let raw = invite(OFFER);
        let msg = Message::parse(raw.as_bytes()).unwrap();
        let via = msg.top_via().unwrap();
        let heard = Heard::default();
        let setup = FeatureSetup {
            key: Key::from_request_via(&msg, &via).unwrap(),
            source: Source {
                addr: "10.0.0.1:5062".parse().unwrap(),
                reliable: transport.is_reliable(),
            },
            upstream: flow(transport),
            to_tag: "ours".into(),
            bye_branch: format!("{BRANCH_PREFIX}2").into(),
            advertised: Advertised::new("192.0.2.10:5060"),
            kind: Kind::App {
                answer: b"v=0 answer1".to_vec(),
                session: Box::new(Recording(heard.clone())),
            },
            legs: None,
        };
        let mut out = Vec::new();
        let call = FeatureCall::start(setup, &msg, now, &mut out);
        (call, heard, out)
    }

    fn with_body(request: &str, body: &str) -> String {
        request.replace(
            "Content-Length: 0\r\n\r\n",
            &format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            ),
        )
    }

    #[test]
    fn an_application_answers_with_its_sdp_and_stays_up_until_the_caller_hangs_up() {
        let t0 = Instant::now();
        let (mut call, heard, out) = start_app(Transport::Udp, t0);
        let ok = Message::parse(&out[0].1).unwrap();
        assert!(out[0].1.starts_with(b"SIP/2.0 200 OK"));
        assert_eq!(ok.body, b"v=0 answer1");
        assert!(heard.take().is_empty(), "nothing before the ACK");
        assert!(feed(&mut call, &request("ACK", 7, "a1"), t0).1.is_empty());
        assert_eq!(heard.take(), ["confirmed"]);
        assert_eq!(call.next_deadline(), None, "no timer while up");

        // A re-INVITE (hold): answered with the session's answer; a bad
        // offer is refused and the call goes on.
        let (r, out) = feed(
            &mut call,
            &with_body(&request("INVITE", 8, "a1"), "v=0 hold"),
            t0,
        );
        assert_eq!(r, None);
        let reply = Message::parse(&out[0].1).unwrap();
        assert!(out[0].1.starts_with(b"SIP/2.0 200 OK"));
        assert_eq!(reply.body, b"v=0 answer2");
        assert!(reply.header(Name::Contact).is_some());
        let (_, out) = feed(
            &mut call,
            &with_body(&request("INVITE", 9, "a1"), "bad"),
            t0,
        );
        assert!(out[0].1.starts_with(b"SIP/2.0 488 "));
        assert_eq!(heard.take(), ["reoffer 8", "reoffer 3"]);
        // Its ACK (another CSeq) and INFO change nothing.
        assert!(feed(&mut call, &request("ACK", 8, "a1"), t0).1.is_empty());
        assert_eq!(
            feed(&mut call, &request("INFO", 10, "a1"), t0).0,
            Some((200, "OK"))
        );
        assert!(heard.take().is_empty());

        let (_, out) = feed(&mut call, &request("BYE", 11, "a1"), t0);
        assert!(out[0].1.starts_with(b"SIP/2.0 200 OK"));
        assert_eq!(heard.take(), ["ended CallerHungUp"]);
        // The BYE's retransmission is answered, the session not told again.
        let (_, out) = feed(&mut call, &request("BYE", 11, "a1"), t0);
        assert!(out[0].1.starts_with(b"SIP/2.0 200 OK"));
        call.on_timer(t0 + TIMER_64T1, &mut Vec::new());
        assert!(call.is_done());
        drop(call);
        assert!(heard.take().is_empty(), "ended exactly once");
    }

    #[test]
    fn an_application_hangs_up_with_a_bye_and_hears_of_it_once() {
        let t0 = Instant::now();
        let (mut call, heard, _) = start_app(Transport::Udp, t0);
        feed(&mut call, &request("ACK", 7, "a1"), t0);
        let mut out = Vec::new();
        call.hang_up_app(AppEnd::HungUp, t0, &mut out);
        assert!(out[0].1.starts_with(b"BYE sip:alice@10.0.0.1:5062 "));
        let bye = Message::parse(&out[0].1).unwrap();
        assert!(!ends_for_media_timeout(&bye), "an ordinary hang-up");
        assert_eq!(heard.take(), ["confirmed", "ended HungUp"]);
        let mut again = Vec::new();
        call.hang_up_app(AppEnd::HungUp, t0, &mut again);
        assert!(again.is_empty(), "one BYE");
        bye_response(&mut call, &out[0].1, 200, t0);
        call.on_timer(t0 + TIMER_64T1, &mut Vec::new());
        assert!(call.is_done());
        drop(call);
        assert!(heard.take().is_empty());
    }

    #[test]
    fn an_rtp_timeout_hangs_up_with_a_bye_that_says_so() {
        let t0 = Instant::now();
        let (mut call, heard, _) = start_app(Transport::Udp, t0);
        feed(&mut call, &request("ACK", 7, "a1"), t0);
        let mut out = Vec::new();
        call.hang_up_app(AppEnd::MediaTimeout, t0, &mut out);
        let bye = Message::parse(&out[0].1).unwrap();
        assert!(out[0].1.starts_with(b"BYE "));
        assert!(
            ends_for_media_timeout(&bye),
            "{:?}",
            std::str::from_utf8(&out[0].1)
        );
        assert_eq!(heard.take(), ["confirmed", "ended MediaTimeout"]);
    }

    #[test]
    fn an_application_whose_200_is_never_acknowledged_ends_with_no_ack() {
        let t0 = Instant::now();
        let (mut call, heard, _) = start_app(Transport::Udp, t0);
        let mut out = Vec::new();
        call.on_timer(t0 + TIMER_64T1, &mut out);
        assert!(out.iter().any(|(_, b)| b.starts_with(b"BYE ")));
        assert_eq!(heard.take(), ["ended NoAck"]);
    }

    #[test]
    fn an_application_call_forgotten_by_the_engine_ends_its_session() {
        let (call, heard, _) = start_app(Transport::Tcp, Instant::now());
        drop(call);
        assert_eq!(heard.take(), ["ended HungUp"]);
    }

    /// Through the engine: the INVITE's retransmission, the ACK in the
    /// dialog, the BYE's response by its branch; then nothing is left.
    #[test]
    fn the_engine_routes_everything_to_the_feature_call_and_forgets_it() {
        use crate::proxy::engine::{Action, CallInput, CallMode, Engine, NewFeatureCall};
        use crate::proxy::ProxySettings;
        let mut e = Engine::new(
            ProxySettings {
                advertised: Advertised::new("192.0.2.10:5060"),
                local: vec!["192.0.2.10:5060".parse().unwrap()],
                no_answer_timeout: Duration::from_secs(60),
                max_call_duration: Duration::from_secs(3600),
                call_mode: CallMode::Proxy,
            },
            3,
        );
        let drain = |e: &mut Engine| -> Vec<Bytes> {
            let mut out = Vec::new();
            while let Some(a) = e.poll_action() {
                if let Action::Send(_, b) = a {
                    out.push(b);
                }
            }
            out
        };
        let t0 = Instant::now();
        let raw = invite(OFFER);
        let msg = Message::parse(raw.as_bytes()).unwrap();
        let key = Key::from_request_via(&msg, &msg.top_via().unwrap()).unwrap();
        let source = Source {
            addr: "10.0.0.1:5062".parse().unwrap(),
            reliable: false,
        };
        e.start_feature_call(
            NewFeatureCall {
                msg: &msg,
                key: key.clone(),
                source,
                upstream: flow(Transport::Udp),
                app: None,
                legs: None,
            },
            t0,
        );
        let ok = drain(&mut e);
        assert!(ok[0].starts_with(b"SIP/2.0 200 OK"));
        let tag = Message::parse(&ok[0])
            .unwrap()
            .to()
            .unwrap()
            .tag()
            .unwrap()
            .to_owned();
        assert!(e.to_call(&key, CallInput::InviteAgain, t0));
        assert_eq!(drain(&mut e), ok, "the 2xx again");
        assert!(
            e.to_call(&key, CallInput::Cancel, t0),
            "too late, but matched"
        );
        assert!(drain(&mut e).is_empty());
        let ack = request("ACK", 7, "a1").replace("tag=ours", &format!("tag={tag}"));
        let ack = Message::parse(ack.as_bytes()).unwrap();
        assert_eq!(e.in_dialog(&ack, source, 0, t0), None);
        let bye = drain(&mut e);
        assert!(bye[0].starts_with(b"BYE sip:alice@10.0.0.1:5062 "));
        let bye = Message::parse(&bye[0]).unwrap();
        let ok = leg::response(&bye, &source, 200, "OK", "", &[], &[]);
        assert!(e.on_response(&Message::parse(&ok).unwrap(), t0));
        let mut now = t0;
        while let Some(t) = e.poll_timeout() {
            now = now.max(t);
            e.handle_timeout(now);
            assert!(drain(&mut e).is_empty());
        }
        assert!(e.is_idle());
        assert!(now <= t0 + TIMER_64T1 + Duration::from_secs(2));
    }

    /// A menu dialled by a user is the caller's leg (ADR 0024): when the
    /// caller hangs up, the leg's end is recorded (caller, normal
    /// clearing) and the 200 to the BYE waits until it is durable; an RTP
    /// timeout's BYE waits for a timeout of the system's.
    #[test]
    fn an_application_call_that_is_a_leg_records_its_end_before_answering_the_bye() {
        use crate::backend::{CallStep, HangupSide};
        use crate::proxy::engine::{Action, CallMode, Engine, NewFeatureCall};
        use crate::proxy::ProxySettings;
        let engine = || {
            Engine::new(
                ProxySettings {
                    advertised: Advertised::new("192.0.2.10:5060"),
                    local: vec!["192.0.2.10:5060".parse().unwrap()],
                    no_answer_timeout: Duration::from_secs(60),
                    max_call_duration: Duration::from_secs(3600),
                    call_mode: CallMode::Proxy,
                },
                3,
            )
        };
        let legs = Legs {
            call_id: "menu-1".into(),
            sip_call_id: "c1".into(),
            caller: ("example.com".into(), "alice".into()),
            callee: None,
            dialled: "*97@example.com".into(),
            group: None,
            members: Vec::new(),
            app: Some("voicemail-menu:alice@example.com".into()),
        };
        let raw = invite(OFFER);
        let msg = Message::parse(raw.as_bytes()).unwrap();
        let key = Key::from_request_via(&msg, &msg.top_via().unwrap()).unwrap();
        let source = Source {
            addr: "10.0.0.1:5062".parse().unwrap(),
            reliable: false,
        };
        let start = |e: &mut Engine, t0| {
            e.start_feature_call(
                NewFeatureCall {
                    msg: &msg,
                    key: key.clone(),
                    source,
                    upstream: flow(Transport::Udp),
                    app: Some((
                        b"v=0 answer1".to_vec(),
                        Box::new(Recording(Heard::default())),
                    )),
                    legs: Some(legs.clone()),
                },
                t0,
            );
            let mut tag = String::new();
            while let Some(a) = e.poll_action() {
                if let Action::Send(_, b) = a {
                    tag = Message::parse(&b)
                        .unwrap()
                        .to()
                        .unwrap()
                        .tag()
                        .unwrap()
                        .to_owned();
                }
            }
            let ack = request("ACK", 7, "a1").replace("tag=ours", &format!("tag={tag}"));
            e.in_dialog(&Message::parse(ack.as_bytes()).unwrap(), source, 0, t0);
            tag
        };
        let t0 = Instant::now();

        let mut e = engine();
        let tag = start(&mut e, t0);
        let bye = request("BYE", 8, "a1").replace("tag=ours", &format!("tag={tag}"));
        assert_eq!(
            e.in_dialog(&Message::parse(bye.as_bytes()).unwrap(), source, 0, t0),
            None
        );
        let Some(Action::Record {
            call_id,
            records,
            done: Some(token),
            ..
        }) = e.poll_action()
        else {
            panic!("the end is recorded first");
        };
        assert_eq!(call_id, "menu-1");
        assert_eq!(records.len(), 1, "the caller's leg only: {records:?}");
        assert_eq!(records[0].user, "alice");
        assert_eq!(
            records[0].step,
            CallStep::End {
                cause: CallCause::NormalClearing,
                side: HangupSide::Caller
            }
        );
        assert!(e.poll_action().is_none(), "the 200 waits for the record");
        e.record_done(token, t0);
        let Some(Action::Send(_, ok)) = e.poll_action() else {
            panic!("the 200 once the end is durable");
        };
        assert!(ok.starts_with(b"SIP/2.0 200 OK"));

        // The application hangs up after an RTP timeout: its BYE waits
        // for the leg's end as a timeout of the system's.
        let mut e = engine();
        start(&mut e, t0);
        assert!(e.hang_up_app("fc1", AppEnd::MediaTimeout, t0));
        let Some(Action::Record {
            records,
            done: Some(token),
            ..
        }) = e.poll_action()
        else {
            panic!("the end is recorded first");
        };
        assert_eq!(
            records[0].step,
            CallStep::End {
                cause: CallCause::Timeout,
                side: HangupSide::System
            }
        );
        assert!(e.poll_action().is_none(), "the BYE waits for the record");
        e.record_done(token, t0);
        let Some(Action::Send(_, bye)) = e.poll_action() else {
            panic!("the BYE once the end is durable");
        };
        assert!(ends_for_media_timeout(&Message::parse(&bye).unwrap()));
    }

    proptest! {
        /// Whatever the caller does and whenever the timers fire, the call
        /// ends within bounded time, never sends more than one BYE
        /// (retransmissions are the same bytes) and never keeps a timer in
        /// the past.
        #[test]
        fn always_ends(steps in proptest::collection::vec(0u8..5, 0..40), reliable in any::<bool>()) {
            let t0 = Instant::now();
            let transport = if reliable { Transport::Tcp } else { Transport::Udp };
            let (mut call, _) = start(transport, OFFER, t0);
            let mut now = t0;
            let mut byes: Vec<Bytes> = Vec::new();
            for s in steps {
                let mut out = Vec::new();
                match s {
                    0 => { call.on_ack(now, &mut out); }
                    1 => { feed(&mut call, &request("BYE", 8, "a1"), now); }
                    2 => { call.on_invite_again(&mut out); }
                    3 => { now += Duration::from_millis(700); call.on_timer(now, &mut out); }
                    _ => if let Some(b) = byes.first().cloned() { bye_response(&mut call, &b, 200, now) },
                }
                for (_, b) in out {
                    if b.starts_with(b"BYE ") { byes.push(b); }
                }
                prop_assert!(byes.windows(2).all(|w| w[0] == w[1]));
                let next = call.next_deadline();
                prop_assert!(next.is_none_or(|t| t > now), "a timer in the past");
            }
            for _ in 0..200 {
                match call.next_deadline() {
                    Some(t) => { now = now.max(t); call.on_timer(now, &mut Vec::new()); }
                    None => break,
                }
            }
            prop_assert!(call.is_done());
            prop_assert!(now <= t0 + Duration::from_secs(28) + TIMER_64T1 * 3);
        }
    }
}
