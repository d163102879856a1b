//! Feature codes dialled from a phone (ADR 0020): the caller's domain's
//! codes decide what a dialled string asks for; the change is applied
//! through the same provisioning use case as the API's (`SetForwarding`,
//! `SetDnd`), so a phone and the API check and record it alike. The
//! voicemail codes (`*97`, `*98`) change nothing: they start a mailbox
//! menu, the application the gateway then asks `start_app` for.

use dialtone_actors::{Meta, Provisioning, UserRef, WrittenForwarding};
use dialtone_domain::feature_codes::Feature;
use dialtone_domain::names::UserAddress;
use dialtone_domain::{DomainId, DomainName, Error as DomainError, UserId, UserName};
use dialtone_sip::backend::{BackendError, FeatureOutcome};
use dialtone_sip::AppRoute;

use super::unavailable;

/// What `dialled` (from `caller_user@caller_domain`) is, applied for the
/// caller when it is a feature code: durable when this returns
/// `Applied`, nothing changed when it returns anything else. `voicemail`:
/// this node runs voicemail (the voicemail codes start its menus).
pub(super) async fn apply(
    provisioning: &Provisioning,
    voicemail: bool,
    caller_domain: &str,
    caller_user: &str,
    dialled: &str,
    sip_call_id: &str,
) -> Result<FeatureOutcome, BackendError> {
    let (Ok(domain), Ok(username)) = (
        DomainName::parse(caller_domain),
        UserName::parse(caller_user),
    ) else {
        return Ok(FeatureOutcome::NotAFeature);
    };
    // Feature calls are rare: the domain's settings (and the caller's id,
    // for `*97`) are read from its actor, not published as facts for every
    // call.
    let name = username.clone();
    let found = provisioning
        .directory()
        .query_domain(DomainId::for_name(&domain), move |r| {
            r.state.exists().then(|| {
                (
                    r.state.settings.feature_codes.clone(),
                    r.state.users.get(&name).copied(),
                )
            })
        })
        .await
        .map_err(unavailable)?;
    let Some((codes, caller_id)) = found else {
        return Ok(FeatureOutcome::NotAFeature);
    };
    let Some(feature) = codes.recognise(dialled) else {
        return Ok(FeatureOutcome::NotAFeature);
    };
    let any_route = crate::voicemail::any_route(&domain);
    let user = UserRef::Address(UserAddress { username, domain });
    // The SIP Call-ID is the change's correlation id (as for a call's
    // steps); no request id: retransmissions never reach this.
    let meta = Meta {
        correlation_id: Some(sip_call_id.to_owned()),
        ..Meta::default()
    };
    let result = match &feature {
        Feature::ForwardAlways(target) if target.is_empty() => {
            return Ok(refused(
                484,
                "Address Incomplete (dial the forward target after the code)",
            ))
        }
        Feature::ForwardAlways(target) => {
            let written = WrittenForwarding {
                always: Some(unescape_colons(target)),
                // Forward *always*: a time condition the rule had is gone.
                always_when: Some(String::new()),
                ..WrittenForwarding::default()
            };
            provisioning.set_forwarding(&user, written, meta).await
        }
        Feature::ForwardingOff => {
            let written = WrittenForwarding {
                always: Some(String::new()),
                ..WrittenForwarding::default()
            };
            provisioning.set_forwarding(&user, written, meta).await
        }
        Feature::DndOn => provisioning.set_dnd(&user, true, meta).await,
        Feature::DndOff => provisioning.set_dnd(&user, false, meta).await,
        // The voicemail codes change nothing: they start a menu.
        Feature::VoicemailOwn | Feature::VoicemailAny if !voicemail => {
            return Ok(refused(
                404,
                "Not Found (voicemail is not enabled on this node)",
            ))
        }
        Feature::VoicemailOwn => return own_mailbox(provisioning, caller_id).await,
        Feature::VoicemailAny => return Ok(FeatureOutcome::App(AppRoute(any_route))),
    };
    match result {
        Ok(_) => Ok(FeatureOutcome::Applied),
        Err(dialtone_actors::Error::Domain(e)) => {
            let forward = matches!(feature, Feature::ForwardAlways(_));
            Ok(refusal_of(&e, forward))
        }
        Err(e) => Err(unavailable(e)),
    }
}

/// `*97`: the caller's own mailbox menu, when the caller has a box that is
/// enabled. Checked here rather than by the menu so that the phone hears
/// why in the status line instead of a menu that cannot work.
async fn own_mailbox(
    provisioning: &Provisioning,
    caller_id: Option<UserId>,
) -> Result<FeatureOutcome, BackendError> {
    let not_enabled = || refused(404, "Not Found (your voicemail box is not enabled)");
    // An authenticated caller the domain does not list: a user deleted
    // while its phone still had a nonce.
    let Some(id) = caller_id else {
        return Ok(not_enabled());
    };
    let enabled = provisioning
        .directory()
        .query_user(id, |r| r.state.exists() && r.state.mailbox.enabled)
        .await;
    match enabled {
        Ok(true) => Ok(FeatureOutcome::App(AppRoute(crate::voicemail::own_route(
            id,
        )))),
        Ok(false) | Err(dialtone_actors::Error::Domain(_)) => Ok(not_enabled()),
        Err(e) => Err(unavailable(e)),
    }
}

/// A refused change as a final response whose reason phrase says why.
fn refusal_of(e: &DomainError, forward: bool) -> FeatureOutcome {
    match (e, forward) {
        (DomainError::NotFound(what), true) => {
            refused(404, &format!("Forward target not found ({what})"))
        }
        (DomainError::Invalid { reason, .. }, true) => {
            refused(404, &format!("Invalid forward target ({reason})"))
        }
        (DomainError::FailedPrecondition(reason), true) => {
            refused(403, &format!("Forward target refused ({reason})"))
        }
        (DomainError::NotFound(what), false) => refused(404, &format!("Not Found ({what})")),
        (other, _) => refused(403, &format!("Forbidden ({other})")),
    }
}

/// A reason phrase is one line of text (RFC 3261 s.25.1): control
/// characters become spaces, and it is kept short.
fn refused(status: u16, reason: &str) -> FeatureOutcome {
    const MAX_CHARS: usize = 200;
    let mut phrase: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_CHARS)
        .collect();
    if reason.chars().count() > MAX_CHARS {
        phrase.push('…');
    }
    FeatureOutcome::Refused {
        status,
        reason: phrase,
    }
}

/// A dialled target with its escaped colons as colons: the `:` of
/// `conference:standup` or `group:sales` is sent escaped (`%3A`) in a SIP
/// URI's user part, where a bare one would start a password (RFC 3261
/// s.19.1.1). Other escapes are left to the target's own parsing.
fn unescape_colons(target: &str) -> String {
    let mut out = String::with_capacity(target.len());
    let mut rest = target;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3);
        if escape.is_some_and(|e| e.eq_ignore_ascii_case("%3a")) {
            out.push(':');
            rest = &rest[at + 3..];
        } else {
            out.push('%');
            rest = &rest[at + 1..];
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_colons_of_a_dialled_target_are_colons() {
        assert_eq!(
            unescape_colons("conference%3Astandup"),
            "conference:standup"
        );
        assert_eq!(unescape_colons("group%3asales"), "group:sales");
        assert_eq!(unescape_colons("bob%41%"), "bob%41%");
        assert_eq!(unescape_colons("%3A%3a"), "::");
        assert_eq!(unescape_colons("bob"), "bob");
    }

    #[test]
    fn refusals_say_why_on_one_line() {
        let r = refusal_of(
            &DomainError::NotFound("forwarding target user nobody@example.com".into()),
            true,
        );
        assert_eq!(
            r,
            FeatureOutcome::Refused {
                status: 404,
                reason: "Forward target not found (forwarding target user nobody@example.com)"
                    .into()
            }
        );
        let r = refusal_of(&DomainError::FailedPrecondition("a\r\nb".into()), true);
        assert_eq!(
            r,
            FeatureOutcome::Refused {
                status: 403,
                reason: "Forward target refused (a  b)".into()
            }
        );
    }
}
