//! Feature codes: what a user dials on a phone to change their own
//! forwarding and do-not-disturb (`*72bob`, `*73`, `*78`, `*79`), per
//! domain (ADR 0020).
//!
//! A domain's [`FeatureCodes`] are part of its settings; [`FeatureCodes::recognise`]
//! tells what a dialled user part asks for. Applying it is the same
//! command as the API's (`SetForwarding`, `SetDnd`), so a code and the API
//! always agree.

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
}

impl Default for FeatureCodes {
    /// `*72`, `*73`, `*78`, `*79`: the codes most PBXs and phones in North
    /// America use, so users find them where they expect.
    fn default() -> Self {
        FeatureCodes {
            enabled: true,
            forward_always: "*72".into(),
            forwarding_off: "*73".into(),
            dnd_on: "*78".into(),
            dnd_off: "*79".into(),
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
}

/// Which setting a code is (the field names of the API and the CLI).
const FIELDS: [&str; 4] = [
    "feature_code_forward_always",
    "feature_code_forwarding_off",
    "feature_code_dnd_on",
    "feature_code_dnd_off",
];

impl FeatureCodes {
    fn codes(&self) -> [&str; 4] {
        [
            &self.forward_always,
            &self.forwarding_off,
            &self.dnd_on,
            &self.dnd_off,
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
    /// others must be dialled alone (`*78` is DND on, `*781` is no code).
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
}

impl Patch {
    pub fn is_empty(&self) -> bool {
        *self == Patch::default()
    }

    /// The codes after this patch, checked as a whole.
    pub fn apply(&self, current: &FeatureCodes) -> Result<FeatureCodes> {
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
    fn the_defaults_recognise_the_four_codes() {
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
        for other in ["*7", "*99garbage", "*781", "bob", "72bob", "", "*"] {
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

    proptest! {
        /// Valid codes never let one dialled string mean two features, and
        /// every code dialled alone means its own feature.
        #[test]
        fn valid_codes_are_unambiguous(
            codes in proptest::array::uniform4("[*#0-9]{1,4}"),
            dialled in "[*#0-9a-z]{0,8}",
        ) {
            let c = FeatureCodes {
                enabled: true,
                forward_always: codes[0].clone(),
                forwarding_off: codes[1].clone(),
                dnd_on: codes[2].clone(),
                dnd_off: codes[3].clone(),
            };
            if c.validate().is_ok() {
                let matches = c.codes().iter().filter(|code| dialled.starts_with(**code)).count();
                prop_assert!(matches <= 1);
                prop_assert_eq!(c.recognise(&codes[0]), Some(Feature::ForwardAlways(String::new())));
                prop_assert_eq!(c.recognise(&codes[1]), Some(Feature::ForwardingOff));
                prop_assert_eq!(c.recognise(&codes[2]), Some(Feature::DndOn));
                prop_assert_eq!(c.recognise(&codes[3]), Some(Feature::DndOff));
            }
        }
    }
}
