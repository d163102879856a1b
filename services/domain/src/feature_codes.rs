//! Feature codes: what a user dials on a phone to change their own
//! forwarding and do-not-disturb (`*72bob`, `*73`, `*78`, `*79`) or to
//! reach voicemail (`*97` their own box, `*98` any box of the domain), per
//! domain (ADR 0020).
//!
//! A domain's [`FeatureCodes`] are part of its settings; [`FeatureCodes::recognise`]
//! tells what a dialled user part asks for. Applying a setting's code is
//! the same command as the API's (`SetForwarding`, `SetDnd`), so a code and
//! the API always agree; a voicemail code starts the mailbox menu.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The longest code, in characters.
pub const MAX_CODE_LEN: usize = 8;

/// A domain's feature codes. Each code is a prefix of what a user dials:
/// digits, `*` and `#`, none a prefix of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureCodes {
    /// Off: every dialled string is routed as a call.
    pub enabled: bool,
    /// `<code><target>`: forward every call to the target.
    pub forward_always: String,
    /// Removes the forward-always rule (the other rules stay).
    pub forwarding_off: String,
    pub dnd_on: String,
    pub dnd_off: String,
    /// The caller's own mailbox menu. Settings stored before the voicemail
    /// codes existed read as the default (so do the two below).
    #[serde(default = "default_voicemail_own")]
    pub voicemail_own: String,
    /// Any mailbox of the domain: the caller says which, and its PIN.
    #[serde(default = "default_voicemail_any")]
    pub voicemail_any: String,
}

fn default_voicemail_own() -> String {
    "*97".into()
}

fn default_voicemail_any() -> String {
    "*98".into()
}

impl Default for FeatureCodes {
    /// `*72`, `*73`, `*78`, `*79`, `*97`, `*98`: the codes most PBXs and
    /// phones in North America use, so users find them where they expect.
    fn default() -> Self {
        FeatureCodes {
            enabled: true,
            forward_always: "*72".into(),
            forwarding_off: "*73".into(),
            dnd_on: "*78".into(),
            dnd_off: "*79".into(),
            voicemail_own: default_voicemail_own(),
            voicemail_any: default_voicemail_any(),
        }
    }
}

/// What a dialled string asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feature {
    /// Forward always to the target, as the user wrote it (`bob`,
    /// `bob@other.example`, `+1555...`): checked like the API's targets.
    /// Empty: the code was dialled without a target.
    ForwardAlways(String),
    ForwardingOff,
    DndOn,
    DndOff,
    /// The caller's own mailbox menu.
    VoicemailOwn,
    /// The menu of any mailbox of the caller's domain.
    VoicemailAny,
}

/// Which setting a code is (the field names of the API and the CLI).
const FIELDS: [&str; 6] = [
    "feature_code_forward_always",
    "feature_code_forwarding_off",
    "feature_code_dnd_on",
    "feature_code_dnd_off",
    "feature_code_voicemail_own",
    "feature_code_voicemail_any",
];

impl FeatureCodes {
    fn codes(&self) -> [&str; 6] {
        [
            &self.forward_always,
            &self.forwarding_off,
            &self.dnd_on,
            &self.dnd_off,
            &self.voicemail_own,
            &self.voicemail_any,
        ]
    }

    /// Checks the codes: each non-empty, at most [`MAX_CODE_LEN`] of
    /// `0-9 * #` starting with `*` or `#`, all distinct and none a prefix of another (so a dialled
    /// string matches one code at most, whatever follows it).
    pub fn validate(&self) -> Result<()> {
        let codes = self.codes();
        for (code, field) in codes.iter().zip(FIELDS) {
            if code.is_empty() {
                return Err(Error::invalid(field, "must not be empty"));
            }
            if code.chars().count() > MAX_CODE_LEN {
                return Err(Error::invalid(
                    field,
                    format!("{code:?} is longer than {MAX_CODE_LEN} characters"),
                ));
            }
            if !(code.starts_with('*') || code.starts_with('#')) {
                return Err(Error::invalid(
                    field,
                    format!("{code:?} must start with * or # (so that no user name or number is taken for a code)"),
                ));
            }
            if let Some(c) = code
                .chars()
                .find(|c| !(c.is_ascii_digit() || *c == '*' || *c == '#'))
            {
                return Err(Error::invalid(
                    field,
                    format!("{code:?} has {c:?}: only digits, * and # can be dialled"),
                ));
            }
        }
        for (i, (a, field)) in codes.iter().zip(FIELDS).enumerate() {
            for (j, (b, other)) in codes.iter().zip(FIELDS).enumerate() {
                if i != j && b.starts_with(*a) {
                    let why = if a == b {
                        format!("{a:?} is also {other}")
                    } else {
                        format!(
                            "{a:?} is a prefix of {other} {b:?}: dialling {b} would be ambiguous"
                        )
                    };
                    return Err(Error::invalid(field, why));
                }
            }
        }
        Ok(())
    }

    /// What `dialled` (the user part of a Request-URI, `%23` already read
    /// as `#`) asks for; `None` when it starts with no code, or the codes
    /// are off. Only forward-always takes what follows its code; the
    /// others must be dialled alone (`*78` is DND on, `*781` is no code,
    /// nor is `*971`).
    ///
    /// Valid codes match one feature at most. Codes stored before the
    /// voicemail codes existed may clash with their defaults (a custom
    /// forward-always `*9`, a DND code `*97`): the older codes are tried
    /// first, so such a domain keeps doing what it did until its codes are
    /// changed (and [`Patch::apply`] checks them all then).
    pub fn recognise(&self, dialled: &str) -> Option<Feature> {
        if !self.enabled {
            return None;
        }
        if let Some(target) = dialled.strip_prefix(self.forward_always.as_str()) {
            return Some(Feature::ForwardAlways(target.to_owned()));
        }
        [
            (&self.forwarding_off, Feature::ForwardingOff),
            (&self.dnd_on, Feature::DndOn),
            (&self.dnd_off, Feature::DndOff),
            (&self.voicemail_own, Feature::VoicemailOwn),
            (&self.voicemail_any, Feature::VoicemailAny),
        ]
        .into_iter()
        .find(|(code, _)| dialled == code.as_str())
        .map(|(_, f)| f)
    }
}

/// A partial update of [`FeatureCodes`]: `None` keeps the current value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Patch {
    pub enabled: Option<bool>,
    pub forward_always: Option<String>,
    pub forwarding_off: Option<String>,
    pub dnd_on: Option<String>,
    pub dnd_off: Option<String>,
    pub voicemail_own: Option<String>,
    pub voicemail_any: Option<String>,
}

impl Patch {
    pub fn is_empty(&self) -> bool {
        *self == Patch::default()
    }

    /// The codes after this patch, checked as a whole. An empty patch
    /// keeps the current codes unchecked: a domain whose stored codes clash
    /// with the voicemail codes' defaults (see [`FeatureCodes::recognise`])
    /// can still have its other settings changed.
    pub fn apply(&self, current: &FeatureCodes) -> Result<FeatureCodes> {
        if self.is_empty() {
            return Ok(current.clone());
        }
        let pick = |new: &Option<String>, old: &String| {
            new.as_ref()
                .map_or_else(|| old.clone(), |s| s.trim().to_owned())
        };
        let next = FeatureCodes {
            enabled: self.enabled.unwrap_or(current.enabled),
            forward_always: pick(&self.forward_always, &current.forward_always),
            forwarding_off: pick(&self.forwarding_off, &current.forwarding_off),
            dnd_on: pick(&self.dnd_on, &current.dnd_on),
            dnd_off: pick(&self.dnd_off, &current.dnd_off),
            voicemail_own: pick(&self.voicemail_own, &current.voicemail_own),
            voicemail_any: pick(&self.voicemail_any, &current.voicemail_any),
        };
        next.validate()?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_defaults_recognise_the_six_codes() {
        let c = FeatureCodes::default();
        assert!(c.validate().is_ok());
        assert_eq!(
            c.recognise("*72bob"),
            Some(Feature::ForwardAlways("bob".into()))
        );
        assert_eq!(c.recognise("*72"), Some(Feature::ForwardAlways("".into())));
        assert_eq!(c.recognise("*73"), Some(Feature::ForwardingOff));
        assert_eq!(c.recognise("*78"), Some(Feature::DndOn));
        assert_eq!(c.recognise("*79"), Some(Feature::DndOff));
        assert_eq!(c.recognise("*97"), Some(Feature::VoicemailOwn));
        assert_eq!(c.recognise("*98"), Some(Feature::VoicemailAny));
        // The voicemail codes take nothing after them (unlike *72).
        for other in [
            "*7",
            "*99garbage",
            "*781",
            "bob",
            "72bob",
            "",
            "*",
            "*9",
            "*971",
            "*98bob",
            "*99",
        ] {
            assert_eq!(c.recognise(other), None, "{other}");
        }
        let off = FeatureCodes {
            enabled: false,
            ..c
        };
        assert_eq!(off.recognise("*78"), None);
    }

    #[test]
    fn bad_codes_are_refused_naming_the_field() {
        let c = FeatureCodes::default();
        let refused = |p: Patch| p.apply(&c).unwrap_err().to_string();
        let e = refused(Patch {
            dnd_on: Some("".into()),
            ..Patch::default()
        });
        assert!(
            e.contains("feature_code_dnd_on") && e.contains("empty"),
            "{e}"
        );
        let e = refused(Patch {
            dnd_on: Some("*7a".into()),
            ..Patch::default()
        });
        assert!(e.contains("only digits"), "{e}");
        let e = refused(Patch {
            dnd_on: Some("*73".into()),
            ..Patch::default()
        });
        assert!(e.contains("also"), "{e}");
        let e = refused(Patch {
            forward_always: Some("*7".into()),
            ..Patch::default()
        });
        assert!(e.contains("prefix"), "{e}");
        let e = refused(Patch {
            dnd_on: Some("78".into()),
            ..Patch::default()
        });
        assert!(e.contains("start with"), "{e}");
        let e = refused(Patch {
            dnd_off: Some("*123456789".into()),
            ..Patch::default()
        });
        assert!(e.contains("longer"), "{e}");
        let e = refused(Patch {
            voicemail_own: Some("*98".into()),
            ..Patch::default()
        });
        assert!(
            e.contains("feature_code_voicemail_own")
                && e.contains("also feature_code_voicemail_any"),
            "{e}"
        );
        let e = refused(Patch {
            voicemail_any: Some("*7".into()),
            ..Patch::default()
        });
        assert!(
            e.contains("feature_code_voicemail_any") && e.contains("prefix"),
            "{e}"
        );
        let e = refused(Patch {
            forward_always: Some("*9".into()),
            ..Patch::default()
        });
        assert!(
            e.contains("feature_code_forward_always") && e.contains("feature_code_voicemail_own"),
            "{e}"
        );
        let e = refused(Patch {
            voicemail_any: Some(" ".into()),
            ..Patch::default()
        });
        assert!(
            e.contains("feature_code_voicemail_any") && e.contains("empty"),
            "{e}"
        );
        let moved = Patch {
            voicemail_own: Some("#97".into()),
            voicemail_any: Some("*86".into()),
            ..Patch::default()
        }
        .apply(&c)
        .unwrap();
        assert_eq!(moved.recognise("#97"), Some(Feature::VoicemailOwn));
        assert_eq!(moved.recognise("*86"), Some(Feature::VoicemailAny));
        assert_eq!(moved.recognise("*97"), None);
        let ok = Patch {
            forward_always: Some("#21".into()),
            enabled: Some(false),
            ..Patch::default()
        }
        .apply(&c)
        .unwrap();
        assert_eq!(ok.forward_always, "#21");
        assert!(!ok.enabled);
    }

    #[test]
    fn codes_stored_before_the_voicemail_codes_read_with_their_defaults() {
        let old = r##"{"enabled":true,"forward_always":"#21","forwarding_off":"#20","dnd_on":"*1","dnd_off":"*2"}"##;
        let c: FeatureCodes = serde_json::from_str(old).unwrap();
        assert_eq!(c.voicemail_own, "*97");
        assert_eq!(c.voicemail_any, "*98");
        assert!(c.validate().is_ok());
        assert_eq!(c.recognise("*97"), Some(Feature::VoicemailOwn));
        // Written back, they are there.
        let again = serde_json::to_value(&c).unwrap();
        assert_eq!(again["voicemail_own"], "*97");
        assert_eq!(again["voicemail_any"], "*98");
    }

    #[test]
    fn old_codes_clashing_with_the_new_defaults_keep_their_meaning() {
        // Valid before *97 and *98 existed; not a valid set now.
        let old = r#"{"enabled":true,"forward_always":"*9","forwarding_off":"*73","dnd_on":"*78","dnd_off":"*98"}"#;
        let c: FeatureCodes = serde_json::from_str(old).unwrap();
        assert!(c.validate().is_err());
        assert_eq!(c.recognise("*97"), Some(Feature::ForwardAlways("7".into())));
        assert_eq!(c.recognise("*98"), Some(Feature::ForwardAlways("8".into())));
        let old = r#"{"enabled":true,"forward_always":"*72","forwarding_off":"*73","dnd_on":"*97","dnd_off":"*98"}"#;
        let c: FeatureCodes = serde_json::from_str(old).unwrap();
        assert_eq!(c.recognise("*97"), Some(Feature::DndOn));
        assert_eq!(c.recognise("*98"), Some(Feature::DndOff));
        // Other settings can still change (an empty patch keeps them)...
        assert_eq!(Patch::default().apply(&c).unwrap(), c);
        // ...and a change of codes must fix the clash, which it names.
        let e = Patch {
            enabled: Some(true),
            ..Patch::default()
        }
        .apply(&c)
        .unwrap_err()
        .to_string();
        assert!(e.contains("feature_code_voicemail_own"), "{e}");
        let fixed = Patch {
            voicemail_own: Some("*86".into()),
            voicemail_any: Some("*87".into()),
            ..Patch::default()
        }
        .apply(&c)
        .unwrap();
        assert_eq!(fixed.recognise("*86"), Some(Feature::VoicemailOwn));
        assert_eq!(fixed.recognise("*97"), Some(Feature::DndOn));
    }

    proptest! {
        /// Valid codes never let one dialled string mean two features, and
        /// every code dialled alone means its own feature.
        #[test]
        fn valid_codes_are_unambiguous(
            // Mostly well-formed (starting with * or #), so that valid
            // sets of six are common; the rest exercise refusals.
            codes in proptest::array::uniform6("[*#][*#0-9]{0,2}|[*#0-9]{1,4}"),
            dialled in "[*#0-9a-z]{0,8}",
        ) {
            let c = FeatureCodes {
                enabled: true,
                forward_always: codes[0].clone(),
                forwarding_off: codes[1].clone(),
                dnd_on: codes[2].clone(),
                dnd_off: codes[3].clone(),
                voicemail_own: codes[4].clone(),
                voicemail_any: codes[5].clone(),
            };
            if c.validate().is_ok() {
                let matches = c.codes().iter().filter(|code| dialled.starts_with(**code)).count();
                prop_assert!(matches <= 1);
                prop_assert_eq!(c.recognise(&codes[0]), Some(Feature::ForwardAlways(String::new())));
                prop_assert_eq!(c.recognise(&codes[1]), Some(Feature::ForwardingOff));
                prop_assert_eq!(c.recognise(&codes[2]), Some(Feature::DndOn));
                prop_assert_eq!(c.recognise(&codes[3]), Some(Feature::DndOff));
                prop_assert_eq!(c.recognise(&codes[4]), Some(Feature::VoicemailOwn));
                prop_assert_eq!(c.recognise(&codes[5]), Some(Feature::VoicemailAny));
                // Only forward-always takes a suffix.
                if let Some(f) = c.recognise(&dialled) {
                    let exact = c.codes().contains(&dialled.as_str());
                    prop_assert!(exact || matches!(f, Feature::ForwardAlways(_)), "{:?}", f);
                }
                // Stored and read back, the same codes.
                let json = serde_json::to_string(&c).unwrap();
                prop_assert_eq!(serde_json::from_str::<FeatureCodes>(&json).unwrap(), c);
            }
        }
    }
}
