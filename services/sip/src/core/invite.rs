//! An initial INVITE: authentication (407), the callee from the
//! Request-URI, the backend's routing plan, and either a call handed to the
//! proxy (100 Trying) or a refusal recorded durably before it is answered.

use super::*;
use crate::backend::{AppCall, AppRoute, AppStart, CallStep};

impl Core {
    /// An initial INVITE (no To tag): authenticate the caller (407), ask
    /// the backend where the callee is, then fork (100 Trying here, the
    /// rest from the call task) or refuse with the leg(s) recorded.
    pub(super) async fn invite(
        &self,
        cx: Cx<'_>,
        method_text: &str,
        upstream: Upstream<'_>,
        max_forwards: Option<u32>,
    ) -> (u16, Bytes) {
        let msg = cx.msg;
        let StartLine::Request { uri, .. } = msg.start else {
            return self.respond(cx, 400, "Bad Request", |_| {});
        };
        let Some(ruri) = Uri::parse(uri) else {
            return self.respond(cx, 416, response::reason(416), |_| {});
        };
        let (Ok(from), Ok(to)) = (msg.from(), msg.to()) else {
            return self.respond(cx, 400, "Bad Request", |_| {});
        };
        let (Some(from_uri), Some(to_uri)) = (Uri::parse(from.uri), Uri::parse(to.uri)) else {
            return self.respond(cx, 400, "Bad From or To URI", |_| {});
        };
        let Some(caller_user) = from_uri.user else {
            return self.forbidden(cx);
        };
        let caller_domain = lowercase(from_uri.host);
        let caller_domain = caller_domain.as_ref();
        let Some((callee_user, callee_host)) = addressed_user(&ruri, &to_uri) else {
            return self.respond(cx, 404, response::reason(404), |_| {});
        };
        let callee_domain = lowercase(callee_host);
        let callee_domain = callee_domain.as_ref();

        // The proxy calling one of the node's applications (a voicemail
        // step): the caller was authenticated when the call began.
        if let Some(app) = crate::app_uri::verified_app(&self.cfg.secret, &ruri) {
            let app = AppRoute(app.to_owned());
            return self.start_app(cx, &upstream, &app, None).await;
        }
        if let Err(refused) = self
            .authenticate_sender(cx, PROXY, caller_domain, caller_user, method_text)
            .await
        {
            return refused;
        }
        if let Some(answered) = self
            .feature_code(
                cx,
                &upstream,
                caller_domain,
                caller_user,
                callee_domain,
                callee_user,
            )
            .await
        {
            return answered;
        }
        let route = match self
            .call(
                self.backend
                    .route_call(caller_domain, callee_domain, callee_user),
            )
            .await
        {
            Ok(r) => r,
            Err(e) => return self.backend_failure(cx, &e),
        };
        if let CallRoute::App(app) = &route {
            let dialled = format!("{callee_user}@{callee_domain}");
            return self
                .start_app(
                    cx,
                    &upstream,
                    app,
                    Some((caller_user, caller_domain, &dialled)),
                )
                .await;
        }
        let sip_call_id = msg.call_id().unwrap_or("").to_owned();
        let caller = (caller_domain.to_owned(), caller_user.to_owned());
        let callee = Some((callee_domain.to_owned(), callee_user.to_owned()));
        let mut legs = Legs {
            call_id: proxy::new_call_id(),
            sip_call_id,
            caller,
            callee,
            dialled: format!("{callee_user}@{callee_domain}"),
            group: None,
            members: Vec::new(),
            app: None,
        };
        if let CallRoute::Plan(crate::backend::RoutePlan {
            dialled_group: true,
            ..
        })
        | CallRoute::GroupRefused { .. } = &route
        {
            // A ring group has no leg: its members get theirs when rung.
            legs.group = legs.callee.take();
        }
        // The new call of a transfer: linked to the call it transfers.
        if let Some(t) = self.proxy.link_transfer(msg, &legs) {
            tracing::debug!(call_id = %legs.call_id, transfer = ?t, "transfer's new call");
        }
        let (code, cause) = match route {
            CallRoute::Plan(plan) if !plan.is_empty() => {
                // The 100 goes out before the INVITE is forked: the
                // callee's 180, relayed by whichever task reads it, must
                // not overtake it (a caller seeing 180 then 100 may take
                // the call for not ringing yet, and SIPp's CANCEL
                // scenario fails that way).
                let (_, trying) = self.respond(cx, 100, "Trying", |_| {});
                self.proxy.send(upstream.flow, trying.clone());
                self.proxy.start_call(
                    NewCall {
                        msg,
                        raw: Bytes::copy_from_slice(upstream.raw),
                        key: upstream.key.clone(),
                        source: cx.source,
                        upstream: upstream.flow,
                        legs,
                        plan,
                        pop_routes: self.proxy.our_routes(msg),
                        max_forwards: max_forwards.map_or(70, |m| m.saturating_sub(1)),
                    },
                    upstream.received_at,
                );
                return (100, trying);
            }
            CallRoute::UnknownDomain | CallRoute::UnknownUser | CallRoute::NoTrunk => {
                // The callee has no leg: only the caller's is recorded.
                legs.callee = None;
                (404, CallCause::NotFound)
            }
            CallRoute::CrossDomainForbidden => {
                legs.callee = None;
                (403, CallCause::CallRejected)
            }
            CallRoute::Unavailable
            | CallRoute::NotRegistered
            | CallRoute::Plan(_)
            | CallRoute::App(_) => (480, CallCause::Unavailable),
            // Do-not-disturb without a forward: the callee's leg records
            // the refusal as busy.
            CallRoute::Busy | CallRoute::GroupRefused { busy: true } => (486, CallCause::UserBusy),
            CallRoute::GroupRefused { busy: false } => (480, CallCause::Unavailable),
        };
        proxy::call_attempt(code);
        // Both steps durable before the response that reports them.
        let recorder = self.proxy.recorder();
        recorder.record(legs.start());
        if let Err(e) = recorder.record_durable(legs.fail(code, cause)).await {
            return self.backend_failure(cx, &e);
        }
        let reason = match route {
            CallRoute::NoTrunk => "Not Found (no trunk routes external numbers)",
            _ => response::reason(code),
        };
        self.respond(cx, code, reason, |_| {})
    }
}

impl Core {
    /// A feature code (ADR 0020): an INVITE from a user to their own
    /// domain whose user part starts with `*` or `#` (every code does) is
    /// offered to the backend, which applies it for the caller durably.
    /// Applied: the INVITE is answered and hung up by a feature call
    /// (100 returned: the proxy owns the transaction now); refused: the
    /// final response that says why. `None`: no feature code, routed as
    /// a call.
    async fn feature_code(
        &self,
        cx: Cx<'_>,
        upstream: &Upstream<'_>,
        caller_domain: &str,
        caller_user: &str,
        callee_domain: &str,
        callee_user: &str,
    ) -> Option<(u16, Bytes)> {
        if callee_domain != caller_domain {
            return None;
        }
        let dialled = percent_decoded(callee_user);
        if !(dialled.starts_with('*') || dialled.starts_with('#')) {
            return None;
        }
        let sip_call_id = cx.msg.call_id().unwrap_or("");
        let outcome = self
            .call(
                self.backend
                    .feature_code(caller_domain, caller_user, &dialled, sip_call_id),
            )
            .await;
        let counted = |outcome: &'static str| {
            metrics::counter!(metric::FEATURE_CODES, "outcome" => outcome).increment(1);
        };
        match outcome {
            Ok(FeatureOutcome::NotAFeature) => {
                counted("not_a_code");
                None
            }
            Ok(FeatureOutcome::Refused { status, reason }) => {
                counted("refused");
                Some(self.respond(cx, status, &reason, |_| {}))
            }
            Ok(FeatureOutcome::Applied) => {
                counted("applied");
                let (_, trying) = self.respond(cx, 100, "Trying", |_| {});
                self.proxy.start_feature_call(proxy::NewFeatureCall {
                    msg: cx.msg,
                    key: upstream.key.clone(),
                    source: cx.source,
                    upstream: upstream.flow,
                    app: None,
                    legs: None,
                });
                Some((100, trying))
            }
            Ok(FeatureOutcome::App(app)) => {
                counted("applied");
                let dialled = format!("{dialled}@{callee_domain}");
                Some(
                    self.start_app(
                        cx,
                        upstream,
                        &app,
                        Some((caller_user, caller_domain, &dialled)),
                    )
                    .await,
                )
            }
            Err(e) => Some(self.backend_failure(cx, &e)),
        }
    }
}

impl Core {
    /// A call the node answers itself (ADR 0022): the backend starts the
    /// application with the INVITE's offer; its SDP answer goes out in a
    /// 200 from a call the proxy owns from now on (100 returned), or its
    /// refusal as the final response.
    ///
    /// `caller` (`user`, `domain`, what it dialled as `user@domain`): a
    /// user of ours dialled the application (a mailbox menu's feature
    /// code), so the call is the caller's leg (ADR 0024): started and
    /// answered — by the application's name — durably before the 200,
    /// or failed durably before the refusal, and ended when the
    /// application hears of its end. Without it (the proxy forking a
    /// voicemail step to the node), the proxied call records the legs.
    async fn start_app(
        &self,
        cx: Cx<'_>,
        upstream: &Upstream<'_>,
        app: &AppRoute,
        caller: Option<(&str, &str, &str)>,
    ) -> (u16, Bytes) {
        let msg = cx.msg;
        let sip_call_id = msg.call_id().unwrap_or("");
        let call = AppCall {
            sip_call_id,
            from: msg.from().map(|f| f.uri).unwrap_or(""),
            caller: caller.map(|(user, domain, _)| (user, domain)),
            source: cx.source.addr,
            offer: msg.body,
        };
        let mut legs = caller.map(|(user, domain, dialled)| Legs {
            call_id: proxy::new_call_id(),
            sip_call_id: sip_call_id.to_owned(),
            caller: (domain.to_owned(), user.to_owned()),
            callee: None,
            dialled: dialled.to_owned(),
            group: None,
            members: Vec::new(),
            app: None,
        });
        let control = self.proxy.app_control(sip_call_id);
        match self.call(self.backend.start_app(app, call, control)).await {
            Ok(AppStart::Answer {
                sdp,
                session,
                answered_by,
            }) => {
                if let Some(legs) = legs.as_mut() {
                    let mut records = legs.start();
                    records.extend(legs.records(|_| CallStep::Answer {
                        contact: answered_by.clone(),
                    }));
                    legs.app = Some(answered_by);
                    // Dropping the session on a failure ends the
                    // application before anything was sent.
                    let recorder = self.proxy.recorder();
                    if let Err(e) = recorder.record_durable(records).await {
                        return self.backend_failure(cx, &e);
                    }
                }
                let (_, trying) = self.respond(cx, 100, "Trying", |_| {});
                self.proxy.start_feature_call(proxy::NewFeatureCall {
                    msg,
                    key: upstream.key.clone(),
                    source: cx.source,
                    upstream: upstream.flow,
                    app: Some((sdp, session)),
                    legs,
                });
                (100, trying)
            }
            Ok(AppStart::Refuse { status, reason }) => {
                if let Some(legs) = &legs {
                    let recorder = self.proxy.recorder();
                    recorder.record(legs.start());
                    let failed = legs.fail(status, CallCause::for_status(status));
                    if let Err(e) = recorder.record_durable(failed).await {
                        return self.backend_failure(cx, &e);
                    }
                }
                self.respond(cx, status, &reason, |_| {})
            }
            Err(e) => self.backend_failure(cx, &e),
        }
    }
}

/// `%XX` escapes read (a phone sends `#` as `%23` in a SIP URI, RFC 3261
/// s.25.1); a malformed escape stays as it is.
fn percent_decoded(user: &str) -> String {
    let bytes = user.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let Some(b) = user
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_are_read() {
        assert_eq!(super::percent_decoded("%2321"), "#21");
        assert_eq!(super::percent_decoded("*72bob"), "*72bob");
        assert_eq!(super::percent_decoded("*7%2"), "*7%2");
        assert_eq!(super::percent_decoded("%zz%41"), "%zzA");
    }
}
