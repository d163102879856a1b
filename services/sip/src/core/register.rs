//! The registrar flow over the backend: a REGISTER that passed
//! authentication becomes binding changes (or a query), and the backend's
//! outcome becomes the 200 with the current contacts, 423, 500 or 503.

use super::*;

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
    pub(super) async fn register(
        &self,
        cx: Cx<'_>,
        method_text: &str,
        transport: Transport,
    ) -> (u16, Bytes) {
        let (msg, source) = (cx.msg, cx.source);
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
        let contacts = match plan {
            Plan::Query => match self.call(self.backend.contacts(domain, user)).await {
                Ok(c) => c,
                Err(e) => return self.backend_failure(cx, &e),
            },
            Plan::RemoveAll | Plan::Update(_) => {
                let (changes, remove_all) = match plan {
                    Plan::Update(c) => (c, false),
                    _ => (Vec::new(), true),
                };
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
                    source: source.addr,
                    transport,
                    user_agent: msg.header(Name::UserAgent).map(str::to_owned),
                    received_at: SystemTime::now(),
                };
                match self.call(self.backend.register(request)).await {
                    Ok(RegisterOutcome::Ok { contacts }) => contacts,
                    Ok(RegisterOutcome::CSeqOutOfOrder) => {
                        return self.respond(cx, 500, "CSeq Out Of Order", |_| {})
                    }
                    Err(e) => return self.backend_failure(cx, &e),
                }
            }
        };
        let contacts_len: usize = contacts.iter().map(|c| c.uri.len() + 40).sum();
        self.respond_sized(cx, 200, "OK", contacts_len + 40, |r| {
            write_contacts(r, &contacts);
            r.header_with("Date", |b| write_http_date(b, now / 1000));
        })
    }
}
