//! The Request-URI by which the node calls one of its own applications
//! (ADR 0022): a routing step that ends at a voicemail box is a target
//! like any phone, reached at the node's own address. The proxy forks the
//! call to it as to a phone (ring timeouts, CANCEL, call events and CDRs
//! work unchanged), and the INVITE, arriving back at the node, is answered
//! by the application instead of being routed.
//!
//! Such an INVITE is not authenticated as the caller again: the URI
//! carries the application's name (`dt-app`) and an HMAC of it under the
//! node's SIP secret (`dt-sig`), so that only the node can make one. A
//! phone that copied a URI could only reach the same application (it
//! names no caller) — what dialling the owner with forwarding gives it.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::wire::message::{param, Uri};

/// Longest application name: it travels in a URI parameter. Long enough
/// for a conference room's name (64 bytes, in hex) and its domain (253).
pub const MAX_APP_LEN: usize = 512;

/// The Request-URI that reaches application `app` (letters, digits, `-`,
/// `_`, `.`; at most [`MAX_APP_LEN`]) at `host_port`, or `None` for a
/// name that does not fit in a URI parameter.
pub fn app_uri(secret: &[u8], app: &str, host_port: &str) -> Option<String> {
    if app.is_empty()
        || app.len() > MAX_APP_LEN
        || !app
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return None;
    }
    let sig = hex::encode(signature(secret, app));
    Some(format!("sip:app@{host_port};dt-app={app};dt-sig={sig}"))
}

/// The application a Request-URI names, when it carries a valid
/// signature.
pub(crate) fn verified_app<'a>(secret: &[u8], ruri: &Uri<'a>) -> Option<&'a str> {
    let app = param(ruri.params, "dt-app")??;
    let sig = param(ruri.params, "dt-sig")??;
    let sig = hex::decode(sig).ok()?;
    let expected = signature(secret, app);
    (sig.len() == expected.len() && bool::from(sig.ct_eq(&expected))).then_some(app)
}

/// 128 bits of HMAC-SHA256 over the name, apart from every other use of
/// the secret by its label.
fn signature(secret: &[u8], app: &str) -> [u8; 16] {
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret) else {
        return [0; 16];
    };
    mac.update(b"dialtone-app-uri\0");
    mac.update(app.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0; 16];
    out.copy_from_slice(&full[..16]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_uri_signed_with_the_secret_names_its_application() {
        let uri = app_uri(b"secret", "vm-deposit.0190abcd", "192.0.2.1:5060").unwrap();
        let parsed = Uri::parse(&uri).unwrap();
        assert_eq!(
            verified_app(b"secret", &parsed),
            Some("vm-deposit.0190abcd")
        );
        assert_eq!(verified_app(b"other", &parsed), None);
        let forged = uri.replace("vm-deposit.0190abcd", "vm-menu.0190abcd");
        assert_eq!(verified_app(b"secret", &Uri::parse(&forged).unwrap()), None);
        let unsigned = "sip:app@192.0.2.1:5060;dt-app=vm-deposit.x";
        assert_eq!(
            verified_app(b"secret", &Uri::parse(unsigned).unwrap()),
            None
        );
        let bad_hex = "sip:app@192.0.2.1:5060;dt-app=x;dt-sig=zz";
        assert_eq!(verified_app(b"secret", &Uri::parse(bad_hex).unwrap()), None);
    }

    #[test]
    fn names_that_do_not_fit_a_uri_parameter_are_refused() {
        for bad in ["", "a;b", "a b", "a@b", &"x".repeat(MAX_APP_LEN + 1)] {
            assert_eq!(app_uri(b"s", bad, "h:1"), None, "{bad:?}");
        }
    }
}
