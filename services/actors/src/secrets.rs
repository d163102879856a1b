//! The operator's secrets key: what seals carrier passwords before they are
//! written to the log, and opens them when a call needs them (ADR 0028).
//!
//! A key is 32 bytes for ChaCha20-Poly1305 (RustCrypto's AEAD, pure Rust).
//! Each sealed secret carries a fresh random 96-bit nonce and the id of the
//! key that sealed it (the first 8 bytes of the key's SHA-256, in hex: not
//! the key, and the same key always has the same id), so that keys rotate:
//! the keyring seals with its first key and opens with any of its keys,
//! and the operator re-saves the trunks sealed by an old key before
//! dropping it. The associated data is the trunk's address, so a
//! ciphertext copied into another trunk's event does not open.
//!
//! This is the one place the key lives in memory; `Debug` never shows it,
//! and nothing here logs a secret.

use std::fmt;

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use dialtone_domain::trunk::SealedSecret;
use sha2::{Digest as _, Sha256};

/// Why a key file could not be read, or a secret not sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretsError {
    #[error("{0}")]
    BadKeyFile(String),
    /// The secret was sealed by a key the keyring does not hold.
    #[error("sealed by key {0}, which the node does not have (--secrets-key-file)")]
    UnknownKey(String),
    /// The ciphertext, nonce or associated data was changed, or the key
    /// is another one with the same id.
    #[error("the sealed secret does not open with key {0}: it was changed or belongs elsewhere")]
    Corrupt(String),
    #[error("sealing failed")]
    Seal,
}

/// One key and its id.
#[derive(Clone)]
struct SecretKey {
    id: String,
    cipher: ChaCha20Poly1305,
}

/// The operator's keys: the first seals, all open.
#[derive(Clone)]
pub struct SecretsKeyring {
    keys: Vec<SecretKey>,
}

impl fmt::Debug for SecretsKeyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretsKeyring")
            .field("key_ids", &self.key_ids())
            .finish_non_exhaustive()
    }
}

/// Bytes of a key.
pub const KEY_LEN: usize = 32;

impl SecretsKeyring {
    /// A keyring from raw keys (the first seals).
    pub fn new(keys: &[[u8; KEY_LEN]]) -> Result<Self, SecretsError> {
        if keys.is_empty() {
            return Err(SecretsError::BadKeyFile("the key file holds no key".into()));
        }
        let keys = keys
            .iter()
            .map(|k| SecretKey {
                id: key_id(k),
                cipher: ChaCha20Poly1305::new(Key::from_slice(k)),
            })
            .collect();
        Ok(SecretsKeyring { keys })
    }

    /// Reads a key file's contents: exactly 32 raw bytes, or text with one
    /// base64 key (32 bytes) per line, the current one first and older
    /// ones after it (blank lines and lines starting with `#` skipped).
    pub fn from_file_contents(contents: &[u8]) -> Result<Self, SecretsError> {
        // A base64 text of a 32-byte key is 44 characters: a file of exactly
        // 32 bytes can only be a raw key.
        if contents.len() == KEY_LEN {
            let mut key = [0u8; KEY_LEN];
            key.copy_from_slice(contents);
            return Self::new(&[key]);
        }
        let text = std::str::from_utf8(contents).map_err(|_| {
            SecretsError::BadKeyFile(format!(
                "the key file is neither {KEY_LEN} raw bytes nor text with one base64 key per line"
            ))
        })?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(line)
                .map_err(|e| {
                    SecretsError::BadKeyFile(format!("line {}: not base64 ({e})", n + 1))
                })?;
            let key: [u8; KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
                SecretsError::BadKeyFile(format!(
                    "line {}: a key is {KEY_LEN} bytes, this one is {} (make one with: head -c 32 /dev/urandom | base64)",
                    n + 1,
                    bytes.len()
                ))
            })?;
            keys.push(key);
        }
        Self::new(&keys)
    }

    /// The ids of the keys, the sealing one first.
    pub fn key_ids(&self) -> Vec<String> {
        self.keys.iter().map(|k| k.id.clone()).collect()
    }

    /// Seals `secret` with the current key, bound to `context` (the
    /// trunk's address).
    pub fn seal(&self, secret: &str, context: &str) -> Result<SealedSecret, SecretsError> {
        let key = self.keys.first().ok_or(SecretsError::Seal)?;
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let ciphertext = key
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: secret.as_bytes(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SecretsError::Seal)?;
        SealedSecret::new(&key.id, nonce.to_vec(), ciphertext).map_err(|_| SecretsError::Seal)
    }

    /// Opens a secret sealed for `context` by any key of the ring.
    pub fn open(&self, sealed: &SealedSecret, context: &str) -> Result<String, SecretsError> {
        let key = self
            .keys
            .iter()
            .find(|k| k.id == sealed.key_id())
            .ok_or_else(|| SecretsError::UnknownKey(sealed.key_id().to_owned()))?;
        let corrupt = || SecretsError::Corrupt(key.id.clone());
        if sealed.nonce().len() != SealedSecret::NONCE_LEN {
            return Err(corrupt());
        }
        let plain = key
            .cipher
            .decrypt(
                Nonce::from_slice(sealed.nonce()),
                Payload {
                    msg: sealed.ciphertext(),
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }
}

/// The id of a key: the first 8 bytes of its SHA-256, in hex.
fn key_id(key: &[u8; KEY_LEN]) -> String {
    let digest = Sha256::digest(key);
    hex::encode(&digest[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_with_the_current_and_old_keys() {
        let old = SecretsKeyring::new(&[[1; 32]]).unwrap();
        let sealed_old = old.seal("hunter2", "carrier@example.com").unwrap();
        let ring = SecretsKeyring::new(&[[2; 32], [1; 32]]).unwrap();
        let sealed_new = ring.seal("s3cret", "carrier@example.com").unwrap();
        assert_eq!(sealed_new.key_id(), ring.key_ids()[0]);
        assert_ne!(sealed_new.key_id(), sealed_old.key_id());
        assert_eq!(
            ring.open(&sealed_old, "carrier@example.com").unwrap(),
            "hunter2"
        );
        assert_eq!(
            ring.open(&sealed_new, "carrier@example.com").unwrap(),
            "s3cret"
        );
        // The same secret sealed twice differs (fresh nonce).
        let again = ring.seal("s3cret", "carrier@example.com").unwrap();
        assert_ne!(again.ciphertext(), sealed_new.ciphertext());
        // Not in the clear anywhere in the stored form.
        let stored: String = sealed_new.clone().into();
        assert!(!stored.contains("s3cret"));
        assert!(!stored.contains(&hex::encode("s3cret")));
    }

    #[test]
    fn a_wrong_context_key_or_tampering_does_not_open() {
        let ring = SecretsKeyring::new(&[[2; 32]]).unwrap();
        let sealed = ring.seal("s3cret", "a@example.com").unwrap();
        assert!(matches!(
            ring.open(&sealed, "b@example.com"),
            Err(SecretsError::Corrupt(_))
        ));
        let other = SecretsKeyring::new(&[[3; 32]]).unwrap();
        assert!(matches!(
            other.open(&sealed, "a@example.com"),
            Err(SecretsError::UnknownKey(_))
        ));
        let mut bytes = sealed.ciphertext().to_vec();
        bytes[0] ^= 1;
        let tampered = SealedSecret::new(sealed.key_id(), sealed.nonce().to_vec(), bytes).unwrap();
        assert!(ring.open(&tampered, "a@example.com").is_err());
    }

    #[test]
    fn key_files_are_raw_or_base64_lines() {
        let raw = SecretsKeyring::from_file_contents(&[7u8; 32]).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        let text = format!(
            "# current\n{b64}\n\n{}\n",
            base64::engine::general_purpose::STANDARD.encode([8u8; 32])
        );
        let lines = SecretsKeyring::from_file_contents(text.as_bytes()).unwrap();
        assert_eq!(raw.key_ids()[0], lines.key_ids()[0]);
        assert_eq!(lines.key_ids().len(), 2);
        let err = SecretsKeyring::from_file_contents(b"c2hvcnQ=\n").unwrap_err();
        assert!(
            err.to_string().contains("a key is 32 bytes, this one is 5"),
            "{err}"
        );
        assert!(SecretsKeyring::from_file_contents(b"not base64!\n").is_err());
        assert!(SecretsKeyring::from_file_contents(b"# nothing\n").is_err());
        assert!(!format!("{raw:?}").contains("0707"));
    }
}
