//! The event packages a subscription can be for (RFC 6665 s.7.2): their
//! names, the body types they send, and which `Accept` header admits them.

use crate::backend::MessageCounts;

/// The `Allow-Events` header value: every package served.
pub const ALLOW_EVENTS: &str = "presence, dialog, message-summary";

/// An event package served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Package {
    /// RFC 3856, PIDF bodies (RFC 3863, with RFC 4480 activities).
    Presence,
    /// RFC 4235: the watched user's dialogs (busy-lamp fields).
    Dialog,
    /// RFC 3842: message waiting indication.
    MessageSummary,
}

impl Package {
    pub const ALL: [Package; 3] = [Package::Presence, Package::Dialog, Package::MessageSummary];

    /// The package of an `Event` header value (`presence;id=7`), `None`
    /// for a package not served (489).
    pub fn of_event_header(value: &str) -> Option<Package> {
        let name = value.split(';').next().unwrap_or("").trim();
        Package::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// The package's name in `Event` headers.
    pub fn name(self) -> &'static str {
        match self {
            Package::Presence => "presence",
            Package::Dialog => "dialog",
            Package::MessageSummary => "message-summary",
        }
    }

    /// The body type of its NOTIFYs.
    pub fn content_type(self) -> &'static str {
        match self {
            Package::Presence => "application/pidf+xml",
            Package::Dialog => "application/dialog-info+xml",
            Package::MessageSummary => "application/simple-message-summary",
        }
    }

    /// Does a SUBSCRIBE with these `Accept` values (each element of each
    /// header) take this package's body? No `Accept` header means the
    /// package's default type (RFC 6665 s.7.2: the package's default,
    /// which is the one type we send).
    pub fn accepted_by<'a>(self, mut accept: impl Iterator<Item = &'a str>) -> bool {
        let ours = self.content_type();
        let (our_type, _) = ours.split_once('/').unwrap_or((ours, ""));
        let mut any = false;
        let ok = accept.any(|a| {
            any = true;
            let media = a.split(';').next().unwrap_or("").trim();
            media.eq_ignore_ascii_case(ours)
                || media == "*/*"
                || media
                    .strip_suffix("/*")
                    .is_some_and(|t| t.eq_ignore_ascii_case(our_type))
        });
        ok || !any
    }
}

/// `&`, `<`, `>`, `"` and `'` escaped for XML text and attribute values.
pub(crate) fn xml_escape(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
}

/// The `message-summary` body (RFC 3842 s.5.2) for `account`
/// (`user@domain`): waiting when a message is new; the voice counts as
/// new/old, no urgent ones (Dialtone has no urgent messages).
pub fn message_summary_body(account: &str, counts: MessageCounts) -> String {
    let waiting = if counts.new > 0 { "yes" } else { "no" };
    format!(
        "Messages-Waiting: {waiting}\r\nMessage-Account: sip:{account}\r\nVoice-Message: {}/{} (0/0)\r\n",
        counts.new, counts.old
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_header_names_a_package_case_insensitively_with_parameters() {
        assert_eq!(
            Package::of_event_header("presence"),
            Some(Package::Presence)
        );
        assert_eq!(
            Package::of_event_header("Dialog;id=3"),
            Some(Package::Dialog)
        );
        assert_eq!(
            Package::of_event_header(" message-summary "),
            Some(Package::MessageSummary)
        );
        assert_eq!(Package::of_event_header("reg"), None);
        assert_eq!(Package::of_event_header(""), None);
    }

    #[test]
    fn accept_admits_the_exact_type_wildcards_or_nothing_given() {
        let p = Package::Presence;
        assert!(p.accepted_by(std::iter::empty()));
        assert!(p.accepted_by(["application/pidf+xml"].into_iter()));
        assert!(p.accepted_by(["text/plain", "Application/PIDF+XML;q=0.5"].into_iter()));
        assert!(p.accepted_by(["application/*"].into_iter()));
        assert!(p.accepted_by(["*/*"].into_iter()));
        assert!(!p.accepted_by(["application/xpidf+xml"].into_iter()));
        assert!(!p.accepted_by(["text/*"].into_iter()));
        assert!(Package::Dialog.accepted_by(["application/dialog-info+xml"].into_iter()));
        assert!(!Package::Dialog.accepted_by(["application/pidf+xml"].into_iter()));
    }

    #[test]
    fn message_summary_says_nothing_waiting() {
        let b = message_summary_body("alice@example.test", MessageCounts::default());
        assert!(b.starts_with("Messages-Waiting: no\r\n"));
        assert!(b.contains("Message-Account: sip:alice@example.test\r\n"));
        assert!(b.contains("Voice-Message: 0/0 (0/0)\r\n"));
        // Only saved messages: nothing is waiting.
        let b = message_summary_body("alice@example.test", MessageCounts { new: 0, old: 3 });
        assert!(b.starts_with("Messages-Waiting: no\r\n"));
        assert!(b.contains("Voice-Message: 0/3 (0/0)\r\n"));
        let b = message_summary_body("alice@example.test", MessageCounts { new: 1, old: 3 });
        assert!(b.starts_with("Messages-Waiting: yes\r\n"));
    }

    #[test]
    fn xml_escape_escapes_markup() {
        let mut s = String::new();
        xml_escape(&mut s, "a<b>&\"c'");
        assert_eq!(s, "a&lt;b&gt;&amp;&quot;c&apos;");
    }
}
