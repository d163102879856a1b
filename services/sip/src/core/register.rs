//! The registrar flow over the backend: a REGISTER that passed
//! authentication becomes binding changes (or a query), and the backend's
//! outcome becomes the 200 with the current contacts, 423, 500 or 503.

use super::*;
use crate::backend::{contact_is_natted, RouteTarget};
use crate::subscription::MessageWaitingAfter;

/// The `Flow-Timer` (RFC 5626 s.4.4) we give a UA using outbound over
/// UDP: NATs drop UDP mappings after as little as 30 s, so the phone's
/// STUN keep-alives must come more often than that.
const FLOW_TIMER_UDP_SECS: u64 = 29;

/// The same over a connection-oriented transport: RFC 5626's recommended
/// 120 s, which the phone's CRLF pings (at 80-100% of it) keep well inside
/// the idle timeout of our connections.
const FLOW_TIMER_STREAM_SECS: u64 = 120;

pub(super) fn write_contacts(r: &mut Response, contacts: &[CurrentContact]) {
    for c in contacts {
        r.header_with("Contact", |b| {
            b.push(b'<');
            b.extend_from_slice(c.uri.as_bytes());
            b.extend_from_slice(b">;expires=");
            write_u64(b, u64::from(c.expires_in_secs));
            if let Some(q) = c.q {
                b.extend_from_slice(b";q=");
                b.extend_from_slice(registrar::format_q(q).as_bytes());
            }
        });
    }
}

impl Core {
    /// `message_waiting` is set when the 200 must be followed by
    /// unsolicited message-waiting NOTIFYs to the contacts it added.
    pub(super) async fn register(
        &self,
        cx: Cx<'_>,
        method_text: &str,
        flow: Flow,
        message_waiting: &OnceLock<MessageWaitingAfter>,
    ) -> (u16, Bytes) {
        let msg = cx.msg;
        let StartLine::Request { uri, .. } = msg.start else {
            return self.respond(cx, 400, "Bad Request", |_| {});
        };
        let Some(ruri) = Uri::parse(uri) else {
            return self.respond(cx, 416, response::reason(416), |_| {});
        };
        let to = match msg.to() {
            Ok(t) => t,
            Err(_) => return self.respond(cx, 400, "Bad To", |_| {}),
        };
        let Some(to_uri) = Uri::parse(to.uri) else {
            return self.respond(cx, 400, "Bad To URI", |_| {});
        };
        let Some(user) = to_uri.user else {
            return self.respond(cx, 400, "No user in To", |_| {});
        };
        // The domain is the Request-URI's (RFC 3261 s.10.3 step 1). Phones
        // configured with the registrar's IP address put that IP there: then
        // the address-of-record's domain is the one meant.
        let domain = lowercase(if crate::wire::message::host_ip(ruri.host).is_some() {
            to_uri.host
        } else {
            ruri.host
        });
        let domain = domain.as_ref();
        // RFC 3261 s.10.3 step 3: the address-of-record must belong to the
        // domain.
        if !to_uri.host.eq_ignore_ascii_case(domain) {
            return self.respond(cx, 404, response::reason(404), |_| {});
        }
        let lookup = match self.call(self.backend.credentials(domain, user)).await {
            Ok(l) => l,
            Err(e) => return self.backend_failure(cx, &e),
        };
        let (creds, known, algorithms) = match lookup {
            Lookup::UnknownDomain => return self.respond(cx, 404, response::reason(404), |_| {}),
            Lookup::DomainSuspended => return self.forbidden(cx),
            Lookup::UnknownUser(algorithms) => (&self.dummy, false, algorithms),
            Lookup::Found(ref c) => (c, true, c.algorithms),
        };
        if let Some(refused) = self.authenticate(
            cx,
            REGISTRAR,
            domain,
            user,
            algorithms,
            creds,
            known,
            method_text,
        ) {
            return refused;
        }
        let now = now_ms();

        let plan = match registrar::plan(msg, &self.policy) {
            Ok(p) => p,
            Err(Reject::BadRequest(reason)) => return self.respond(cx, 400, reason, |_| {}),
            Err(Reject::IntervalTooBrief { min_expires }) => {
                return self.respond(cx, 423, response::reason(423), |r| {
                    r.header_with("Min-Expires", |b| write_u64(b, u64::from(min_expires)));
                })
            }
        };
        // RFC 5626 s.6: outbound is in use when the UA supports it and a
        // contact names its instance and flow (reg-id).
        let outbound = registrar::supports_outbound(msg)
            && matches!(&plan, Plan::Update(c) if c.iter().any(|c| c.reg_id.is_some()));
        let contacts = match plan {
            Plan::Query => match self.call(self.backend.contacts(domain, user)).await {
                Ok(c) => c,
                Err(e) => return self.backend_failure(cx, &e),
            },
            Plan::RemoveAll | Plan::Update(_) => {
                let (mut changes, remove_all) = match plan {
                    Plan::Update(c) => (c, false),
                    _ => (Vec::new(), true),
                };
                for change in &mut changes {
                    change.nat = contact_is_natted(&change.uri, flow.remote);
                    if !outbound {
                        // Without outbound a reg-id is an unknown parameter.
                        change.reg_id = None;
                    }
                }
                let (call_id, cseq) = match (msg.call_id(), msg.cseq()) {
                    (Ok(c), Ok(s)) => (c, s.seq),
                    _ => return self.respond(cx, 400, "Bad Request", |_| {}),
                };
                let request = RegisterRequest {
                    domain: domain.to_owned(),
                    user: user.to_owned(),
                    call_id: call_id.to_owned(),
                    cseq,
                    changes,
                    remove_all,
                    flow,
                    user_agent: msg.header(Name::UserAgent).map(str::to_owned),
                    received_at: SystemTime::now(),
                };
                match self.call(self.backend.register(request)).await {
                    Ok(RegisterOutcome::Ok {
                        contacts,
                        message_waiting: waiting,
                    }) => {
                        if let Some(w) = waiting.filter(|w| !w.new_contacts.is_empty()) {
                            let _ = message_waiting.set(MessageWaitingAfter {
                                resource: format!("{user}@{domain}"),
                                counts: w.counts,
                                targets: w
                                    .new_contacts
                                    .iter()
                                    .map(|uri| RouteTarget::for_binding(uri, flow))
                                    .collect(),
                            });
                        }
                        contacts
                    }
                    Ok(RegisterOutcome::CSeqOutOfOrder) => {
                        return self.respond(cx, 500, "CSeq Out Of Order", |_| {})
                    }
                    Err(e) => return self.backend_failure(cx, &e),
                }
            }
        };
        let contacts_len: usize = contacts.iter().map(|c| c.uri.len() + 40).sum();
        self.respond_sized(cx, 200, "OK", contacts_len + 80, |r| {
            write_contacts(r, &contacts);
            if outbound {
                r.header("Require", "outbound");
                let timer = if flow.is_reliable() {
                    FLOW_TIMER_STREAM_SECS
                } else {
                    FLOW_TIMER_UDP_SECS
                };
                r.header_with("Flow-Timer", |b| write_u64(b, timer));
            }
            r.header_with("Date", |b| write_http_date(b, now / 1000));
        })
    }
}

impl Core {
    /// Whether a keep-alive (STUN Binding request) from `source` may be
    /// answered: the same per-source rate limit as SIP messages, so that
    /// the node never answers a flood (a spoofed source would make it a
    /// reflector).
    pub(crate) fn admit_keep_alive(&self, source: std::net::IpAddr) -> bool {
        let admitted = self.guard.admit(source, Instant::now());
        if !admitted {
            metrics::counter!(metric::DROPPED, "reason" => "rate_limited").increment(1);
        }
        admitted
    }

    /// A connection closed: the backend drops the bindings registered
    /// over it (RFC 5626 s.5.3).
    pub(crate) fn flow_closed(&self, connection: crate::transport::ConnectionId) {
        self.backend.flow_closed(connection);
    }
}
