//! SUBSCRIBE (RFC 6665): the checks (rate, Event, Accept, Expires),
//! digest authentication of the subscriber (401), the same-domain rule,
//! the limits, the watched user's state from the backend, and the 200
//! that [`crate::subscription::Subscriptions`] sends before the NOTIFY.
//! In-dialog SUBSCRIBEs refresh or end a subscription without a new
//! challenge: the dialog (Call-ID and both tags, ours unpredictable) is
//! what identifies them.

use super::*;
use crate::backend::Watch;
use crate::subscription::{LimitHit, NewSubscription, Package, Refresh, ALLOW_EVENTS};
use crate::transport::Transport;
use crate::wire::message::{parse_u32, NameAddr};

/// Retry-After of a SUBSCRIBE refused by a limit (seconds): long enough
/// for a phone not to hammer, short enough for a freed slot to be used.
const LIMIT_RETRY_AFTER_SECS: &str = "60";

/// The value of the first header named `name` or its compact form.
fn header_value<'m>(msg: &'m Message<'_>, name: &str, compact: &str) -> Option<&'m str> {
    msg.headers
        .iter()
        .find(|h| h.raw_name.eq_ignore_ascii_case(name) || h.raw_name.eq_ignore_ascii_case(compact))
        .map(|h| h.value.as_ref())
}

impl Core {
    pub(super) async fn subscribe(
        &self,
        cx: Cx<'_>,
        method_text: &str,
        upstream: Upstream<'_>,
    ) -> (u16, Bytes) {
        let msg = cx.msg;
        let subs = &self.subscriptions;
        if !subs.admit_source(cx.source.addr.ip(), Instant::now()) {
            subs.refused_by_rate();
            return self.respond(cx, 503, response::reason(503), |r| {
                r.header("Retry-After", LIMIT_RETRY_AFTER_SECS);
            });
        }
        let Some(event) = header_value(msg, "Event", "o") else {
            return self.respond(cx, 489, "Bad Event", |r| {
                r.header("Allow-Events", ALLOW_EVENTS);
            });
        };
        let Some(package) = Package::of_event_header(event) else {
            return self.respond(cx, 489, "Bad Event", |r| {
                r.header("Allow-Events", ALLOW_EVENTS);
            });
        };
        if !package.accepted_by(msg.list(Name::Accept)) {
            return self.respond(cx, 406, response::reason(406), |r| {
                r.header("Accept", package.content_type());
            });
        }
        let cfg = subs.config();
        let expires = match msg.header(Name::Expires) {
            None => cfg.default_expires,
            Some(v) => match parse_u32(v) {
                Some(0) => 0,
                Some(n) if n < cfg.min_expires => {
                    let min = cfg.min_expires;
                    return self.respond(cx, 423, response::reason(423), |r| {
                        r.header_with("Min-Expires", |b| write_u64(b, u64::from(min)));
                    });
                }
                Some(n) => n.min(cfg.max_expires),
                None => return self.respond(cx, 400, "Bad Expires", |_| {}),
            },
        };
        let (Ok(from), Ok(to), Ok(cseq)) = (msg.from(), msg.to(), msg.cseq()) else {
            return self.respond(cx, 400, "Bad Request", |_| {});
        };
        let Some(remote_tag) = from.tag() else {
            return self.respond(cx, 400, "Missing From tag", |_| {});
        };
        let call_id = msg.call_id().unwrap_or("");
        if let Some(local_tag) = to.tag() {
            // A refresh or an unsubscribe.
            return match subs.refresh(call_id, local_tag, remote_tag, cseq.seq, expires) {
                Refresh::Accepted(a) => {
                    let _ = upstream.subscription.set(a.id);
                    self.subscribe_ok(cx, "", a.expires, upstream.flow.transport)
                }
                Refresh::Unknown => self.respond(cx, 481, response::reason(481), |_| {}),
                Refresh::OutOfOrder => self.respond(cx, 500, "CSeq Out of Order", |_| {}),
            };
        }

        let StartLine::Request { uri, .. } = msg.start else {
            return self.respond(cx, 400, "Bad Request", |_| {});
        };
        let (Some(ruri), Some(from_uri), Some(to_uri)) =
            (Uri::parse(uri), Uri::parse(from.uri), Uri::parse(to.uri))
        else {
            return self.respond(cx, 416, response::reason(416), |_| {});
        };
        let Some(subscriber_user) = from_uri.user else {
            return self.forbidden(cx);
        };
        let subscriber_domain = lowercase(from_uri.host);
        let subscriber_domain = subscriber_domain.as_ref();
        let Some((watched_user, watched_host)) = addressed_user(&ruri, &to_uri) else {
            return self.respond(cx, 404, response::reason(404), |_| {});
        };
        let watched_domain = lowercase(watched_host);
        let watched_domain = watched_domain.as_ref();
        let Some(contact) = msg
            .header(Name::Contact)
            .and_then(NameAddr::parse)
            .filter(|c| Uri::parse(c.uri).is_some())
        else {
            return self.respond(cx, 400, "Missing Contact", |_| {});
        };

        if let Err(refused) = self
            .authenticate_sender(
                cx,
                REGISTRAR,
                subscriber_domain,
                subscriber_user,
                method_text,
            )
            .await
        {
            return refused;
        }
        // Only users of the same domain see each other.
        if subscriber_domain != watched_domain {
            return self.forbidden(cx);
        }
        let subscriber = format!("{subscriber_user}@{subscriber_domain}");
        if expires > 0 {
            if let Err(hit) = subs.check_limits(&subscriber, subscriber_domain) {
                return self.over_limit(cx, hit);
            }
        }
        let resource = format!("{watched_user}@{watched_domain}");
        let watch = subs.begin_watch(&resource);
        let state = match self
            .call(self.backend.watch(watched_domain, watched_user))
            .await
        {
            Ok(Watch::Found(state)) => state,
            Ok(Watch::UnknownUser) => return self.respond(cx, 404, response::reason(404), |_| {}),
            Err(e) => return self.backend_failure(cx, &e),
        };
        let new = NewSubscription {
            call_id: call_id.to_owned(),
            remote_tag: remote_tag.to_owned(),
            remote_header: msg.header(Name::From).unwrap_or("").to_owned(),
            local_header: msg.header(Name::To).unwrap_or("").to_owned(),
            subscriber,
            domain: subscriber_domain.to_owned(),
            resource,
            package,
            event: event.trim().to_owned(),
            expires,
            cseq: cseq.seq,
            contact: contact.uri.to_owned(),
            route_set: msg.list(Name::RecordRoute).map(str::to_owned).collect(),
            flow: upstream.flow,
        };
        match subs.subscribe(watch, new, state) {
            Ok(a) => {
                let _ = upstream.subscription.set(a.id);
                self.subscribe_ok(cx, &a.local_tag, a.expires, upstream.flow.transport)
            }
            Err(hit) => self.over_limit(cx, hit),
        }
    }

    fn over_limit(&self, cx: Cx<'_>, hit: LimitHit) -> (u16, Bytes) {
        tracing::debug!(limit = hit.label(), "SUBSCRIBE over a subscription limit");
        self.respond(cx, 503, "Too Many Subscriptions", |r| {
            r.header("Retry-After", LIMIT_RETRY_AFTER_SECS);
        })
    }

    /// The 200 to a SUBSCRIBE: our tag (empty: the To has one already),
    /// the granted Expires and our Contact (RFC 6665 s.4.2.1.1).
    fn subscribe_ok(
        &self,
        cx: Cx<'_>,
        tag: &str,
        expires: u32,
        transport: Transport,
    ) -> (u16, Bytes) {
        let advertised = &self.proxy.settings().advertised;
        let mut r = Response::start(
            cx.msg,
            Some(cx.via),
            &cx.source,
            200,
            "OK",
            tag.as_bytes(),
            advertised.len() + 96,
        );
        if let Some(s) = &self.cfg.server_header {
            r.header("Server", s);
        }
        r.header_with("Expires", |b| write_u64(b, u64::from(expires)));
        r.header_with("Contact", |b| {
            b.extend_from_slice(b"<sip:");
            b.extend_from_slice(advertised.as_bytes());
            // Refreshes come back on the SUBSCRIBE's transport.
            if transport != Transport::Udp {
                b.extend_from_slice(b";transport=");
                b.extend_from_slice(transport.as_str().to_ascii_lowercase().as_bytes());
            }
            b.push(b'>');
        });
        (200, r.finish())
    }
}
