//! HTTP Digest authentication for SIP (RFC 3261 s.22, RFC 7616, RFC 8760).
//!
//! Our own parser for `Authorization` / `Proxy-Authorization` /
//! `WWW-Authenticate` / `Proxy-Authenticate` parameters, because the SIP crates
//! we looked at reject the RFC 7616 algorithm token `SHA-256`. Only `qop=auth`
//! is supported (what we offer), with MD5 and SHA-256; HA1 is given by the
//! caller (users' passwords are stored only as HA1 values).

use std::borrow::Cow;

use md5::Md5;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("not a Digest header")]
    NotDigest,
    #[error("malformed digest parameters")]
    Syntax,
    #[error("missing digest parameter `{0}`")]
    Missing(&'static str),
    #[error("unsupported digest algorithm")]
    Algorithm,
    #[error("bad nonce count")]
    NonceCount,
}

/// The digest algorithms we support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Md5,
    Sha256,
}

impl Algorithm {
    /// Case-insensitive (RFC 7616 s.3.3: algorithm names are case-insensitive).
    pub fn parse(s: &str) -> Option<Algorithm> {
        if s.eq_ignore_ascii_case("MD5") {
            Some(Algorithm::Md5)
        } else if s.eq_ignore_ascii_case("SHA-256") {
            Some(Algorithm::Sha256)
        } else {
            None
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Sha256 => "SHA-256",
        }
    }

    /// Length of the lower-case hex digest.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Md5 => 32,
            Algorithm::Sha256 => 64,
        }
    }

    /// H(parts joined by ':') as lower-case hex, written into `out`; returns
    /// the used prefix. No heap allocation.
    pub fn hash_hex<'o>(self, parts: &[&[u8]], out: &'o mut [u8; 64]) -> &'o [u8] {
        fn feed<D: sha2::Digest>(mut d: D, parts: &[&[u8]]) -> D {
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            d
        }
        match self {
            Algorithm::Md5 => {
                let h = feed(Md5::new(), parts).finalize();
                // 16 bytes -> 32 hex chars always fit.
                let _ = hex::encode_to_slice(h, &mut out[..32]);
                &out[..32]
            }
            Algorithm::Sha256 => {
                let h = feed(Sha256::new(), parts).finalize();
                let _ = hex::encode_to_slice(h, &mut out[..64]);
                &out[..64]
            }
        }
    }
}

/// HA1 = H(username:realm:password), lower-case hex.
pub fn ha1(alg: Algorithm, username: &str, realm: &str, password: &str) -> String {
    let mut out = [0u8; 64];
    let h = alg.hash_hex(
        &[username.as_bytes(), realm.as_bytes(), password.as_bytes()],
        &mut out,
    );
    String::from_utf8_lossy(h).into_owned()
}

/// The `response` for qop=auth (RFC 7616 s.3.4.1):
/// H(HA1:nonce:nc:cnonce:qop:H(method:uri)), lower-case hex.
#[allow(clippy::too_many_arguments)]
pub fn response(
    alg: Algorithm,
    ha1: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
    method: &str,
    uri: &str,
) -> String {
    let mut out = [0u8; 64];
    let r = response_into(alg, ha1, nonce, nc, cnonce, qop, method, uri, &mut out);
    String::from_utf8_lossy(r).into_owned()
}

#[allow(clippy::too_many_arguments)]
fn response_into<'o>(
    alg: Algorithm,
    ha1: &str,
    nonce: &str,
    nc: &str,
    cnonce: &str,
    qop: &str,
    method: &str,
    uri: &str,
    out: &'o mut [u8; 64],
) -> &'o [u8] {
    let mut ha2 = [0u8; 64];
    let ha2 = alg.hash_hex(&[method.as_bytes(), uri.as_bytes()], &mut ha2);
    alg.hash_hex(
        &[
            ha1.as_bytes(),
            nonce.as_bytes(),
            nc.as_bytes(),
            cnonce.as_bytes(),
            qop.as_bytes(),
            ha2,
        ],
        out,
    )
}

/// Digest parameters: `(name as written, unquoted value)`.
pub type Params<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// Parses `Scheme name=value, name="quoted", ...` into the scheme and the
/// parameters (values unquoted and unescaped). Robust to extra whitespace
/// and empty list elements; names are returned as written (compare them
/// case-insensitively).
pub fn parse_params(value: &str) -> Result<(&str, Params<'_>), DigestError> {
    let mut out = Vec::with_capacity(10);
    let scheme = scan_params(value, |name, v| out.push((name, v)))?;
    Ok((scheme, out))
}

/// The scanner behind [`parse_params`]: calls `f` for every parameter in
/// order and returns the scheme. No allocation unless a quoted value has
/// escapes.
fn scan_params<'a>(
    value: &'a str,
    mut f: impl FnMut(&'a str, Cow<'a, str>),
) -> Result<&'a str, DigestError> {
    let value = value.trim_start();
    let scheme_end = value.find([' ', '\t']).unwrap_or(value.len());
    let scheme = &value[..scheme_end];
    if scheme.is_empty() || scheme.contains(['=', ',', '"']) {
        return Err(DigestError::Syntax);
    }
    let b = value.as_bytes();
    let mut i = scheme_end;
    loop {
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b',' | b'\r' | b'\n') {
            i += 1;
        }
        if i >= b.len() {
            break;
        }
        let ns = i;
        while i < b.len() && !matches!(b[i], b'=' | b' ' | b'\t' | b',' | b'"') {
            i += 1;
        }
        let name = &value[ns..i];
        if name.is_empty() {
            return Err(DigestError::Syntax);
        }
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(DigestError::Syntax);
        }
        i += 1;
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i < b.len() && b[i] == b'"' {
            i += 1;
            let vs = i;
            let mut escaped = false;
            loop {
                if i >= b.len() {
                    return Err(DigestError::Syntax);
                }
                match b[i] {
                    b'\\' => {
                        escaped = true;
                        i += 2;
                    }
                    b'"' => break,
                    _ => i += 1,
                }
            }
            if i > b.len() {
                return Err(DigestError::Syntax);
            }
            let raw = &value[vs..i];
            i += 1;
            let v = if escaped {
                let mut s = String::with_capacity(raw.len());
                let mut chars = raw.chars();
                while let Some(c) = chars.next() {
                    if c == '\\' {
                        if let Some(n) = chars.next() {
                            s.push(n);
                        }
                    } else {
                        s.push(c);
                    }
                }
                Cow::Owned(s)
            } else {
                Cow::Borrowed(raw)
            };
            f(name, v);
        } else {
            let vs = i;
            while i < b.len() && !matches!(b[i], b',' | b' ' | b'\t') {
                i += 1;
            }
            if vs == i || value[vs..i].contains('"') {
                return Err(DigestError::Syntax);
            }
            f(name, Cow::Borrowed(&value[vs..i]));
        }
        // After a value: only whitespace, then a comma or the end.
        while i < b.len() && matches!(b[i], b' ' | b'\t') {
            i += 1;
        }
        if i < b.len() && b[i] != b',' {
            return Err(DigestError::Syntax);
        }
    }
    Ok(scheme)
}

fn get<'p>(params: &'p [(&str, Cow<'_, str>)], name: &str) -> Option<&'p str> {
    params
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_ref())
}

/// Digest credentials from an `Authorization` or `Proxy-Authorization` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    /// Absent algorithm means MD5 (RFC 7616 s.3.4).
    pub algorithm: Option<Algorithm>,
    /// The algorithm text when it is not one we support.
    pub unsupported_algorithm: bool,
    pub cnonce: Option<String>,
    /// The nonce count as sent (8 hex digits) and its value.
    pub nc: Option<(String, u32)>,
    pub qop: Option<String>,
    pub opaque: Option<String>,
}

impl Credentials {
    pub fn parse(value: &str) -> Result<Credentials, DigestError> {
        let c = CredentialsRef::parse(value)?;
        Ok(Credentials {
            username: c.username.into_owned(),
            realm: c.realm.into_owned(),
            nonce: c.nonce.into_owned(),
            uri: c.uri.into_owned(),
            response: c.response.into_owned(),
            algorithm: c.algorithm,
            unsupported_algorithm: c.unsupported_algorithm,
            cnonce: c.cnonce.map(Cow::into_owned),
            nc: c.nc.map(|(s, n)| (s.into_owned(), n)),
            qop: c.qop.map(Cow::into_owned),
            opaque: c.opaque.map(Cow::into_owned),
        })
    }

    /// Checks the `response` against HA1 for `method`, using the `uri`
    /// parameter the client sent (which may differ from the Request-URI:
    /// SIPp and some phones put the proxy's address there). Requires
    /// qop=auth with nc and cnonce. Constant-time comparison.
    pub fn verify(&self, ha1: &str, method: &str) -> bool {
        verify(
            self.algorithm,
            self.qop.as_deref(),
            self.cnonce.as_deref(),
            self.nc.as_ref().map(|(s, _)| s.as_str()),
            &self.nonce,
            &self.uri,
            &self.response,
            ha1,
            method,
        )
    }
}

/// [`Credentials`] borrowing from the header value: what the gateway parses
/// for every authenticated request (no heap unless a quoted value has
/// escapes). Same rules as [`Credentials::parse`]: the first occurrence of a
/// parameter counts, names are case-insensitive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialsRef<'a> {
    pub username: Cow<'a, str>,
    pub realm: Cow<'a, str>,
    pub nonce: Cow<'a, str>,
    pub uri: Cow<'a, str>,
    pub response: Cow<'a, str>,
    /// Absent algorithm means MD5 (RFC 7616 s.3.4).
    pub algorithm: Option<Algorithm>,
    pub unsupported_algorithm: bool,
    pub cnonce: Option<Cow<'a, str>>,
    /// The nonce count as sent (8 hex digits) and its value.
    pub nc: Option<(Cow<'a, str>, u32)>,
    pub qop: Option<Cow<'a, str>>,
    pub opaque: Option<Cow<'a, str>>,
}

impl<'a> CredentialsRef<'a> {
    pub fn parse(value: &'a str) -> Result<CredentialsRef<'a>, DigestError> {
        const NAMES: [&str; 10] = [
            "username",
            "realm",
            "nonce",
            "uri",
            "response",
            "algorithm",
            "nc",
            "cnonce",
            "qop",
            "opaque",
        ];
        let mut f: [Option<Cow<'a, str>>; 10] = Default::default();
        let scheme = scan_params(value, |name, v| {
            // By length first: one comparison per parameter.
            let i = match name.len() {
                8 if name.eq_ignore_ascii_case(NAMES[0]) => 0,
                5 if name.eq_ignore_ascii_case(NAMES[1]) => 1,
                5 if name.eq_ignore_ascii_case(NAMES[2]) => 2,
                3 if name.eq_ignore_ascii_case(NAMES[3]) => 3,
                8 if name.eq_ignore_ascii_case(NAMES[4]) => 4,
                9 if name.eq_ignore_ascii_case(NAMES[5]) => 5,
                2 if name.eq_ignore_ascii_case(NAMES[6]) => 6,
                6 if name.eq_ignore_ascii_case(NAMES[7]) => 7,
                3 if name.eq_ignore_ascii_case(NAMES[8]) => 8,
                6 if name.eq_ignore_ascii_case(NAMES[9]) => 9,
                _ => return,
            };
            if f[i].is_none() {
                f[i] = Some(v);
            }
        })?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest);
        }
        let [username, realm, nonce, uri, response, algorithm, nc, cnonce, qop, opaque] = f;
        let (algorithm, unsupported_algorithm) = match algorithm.as_deref() {
            None => (Some(Algorithm::Md5), false),
            Some(a) => match Algorithm::parse(a) {
                Some(a) => (Some(a), false),
                None => (None, true),
            },
        };
        let nc = match nc {
            None => None,
            Some(s) => {
                if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(DigestError::NonceCount);
                }
                let n = u32::from_str_radix(&s, 16).map_err(|_| DigestError::NonceCount)?;
                Some((s, n))
            }
        };
        Ok(CredentialsRef {
            username: username.ok_or(DigestError::Missing("username"))?,
            realm: realm.ok_or(DigestError::Missing("realm"))?,
            nonce: nonce.ok_or(DigestError::Missing("nonce"))?,
            uri: uri.ok_or(DigestError::Missing("uri"))?,
            response: response.ok_or(DigestError::Missing("response"))?,
            algorithm,
            unsupported_algorithm,
            cnonce,
            nc,
            qop,
            opaque,
        })
    }

    /// See [`Credentials::verify`].
    pub fn verify(&self, ha1: &str, method: &str) -> bool {
        verify(
            self.algorithm,
            self.qop.as_deref(),
            self.cnonce.as_deref(),
            self.nc.as_ref().map(|(s, _)| s.as_ref()),
            &self.nonce,
            &self.uri,
            &self.response,
            ha1,
            method,
        )
    }
}

#[allow(clippy::too_many_arguments)]
fn verify(
    alg: Option<Algorithm>,
    qop: Option<&str>,
    cnonce: Option<&str>,
    nc: Option<&str>,
    nonce: &str,
    uri: &str,
    response: &str,
    ha1: &str,
    method: &str,
) -> bool {
    let Some(alg) = alg else {
        return false;
    };
    let (Some(qop), Some(cnonce), Some(nc)) = (qop, cnonce, nc) else {
        return false;
    };
    if !qop.eq_ignore_ascii_case("auth") {
        return false;
    }
    let mut out = [0u8; 64];
    let expected = response_into(alg, ha1, nonce, nc, cnonce, "auth", method, uri, &mut out);
    let given = response.as_bytes();
    if given.len() != expected.len() {
        return false;
    }
    let mut lower = [0u8; 64];
    for (d, s) in lower.iter_mut().zip(given) {
        *d = s.to_ascii_lowercase();
    }
    bool::from(lower[..given.len()].ct_eq(expected))
}

/// A challenge from a `WWW-Authenticate` / `Proxy-Authenticate` value (used
/// by the test UA and by tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Option<Algorithm>,
    pub qop: Option<String>,
    pub stale: bool,
}

impl Challenge {
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let (scheme, p) = parse_params(value)?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest);
        }
        let algorithm = match get(&p, "algorithm") {
            None => Some(Algorithm::Md5),
            Some(a) => Algorithm::parse(a),
        };
        Ok(Challenge {
            realm: get(&p, "realm")
                .ok_or(DigestError::Missing("realm"))?
                .to_owned(),
            nonce: get(&p, "nonce")
                .ok_or(DigestError::Missing("nonce"))?
                .to_owned(),
            opaque: get(&p, "opaque").map(str::to_owned),
            algorithm,
            qop: get(&p, "qop").map(str::to_owned),
            stale: get(&p, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }
}

/// Writes a challenge header value:
/// `Digest realm="..", nonce="..", opaque="..", algorithm=X, qop="auth"[, stale=true]`.
pub fn write_challenge(
    out: &mut Vec<u8>,
    realm: &str,
    nonce: &str,
    opaque: &str,
    alg: Algorithm,
    stale: bool,
) {
    out.extend_from_slice(b"Digest realm=\"");
    write_quoted_inner(out, realm);
    out.extend_from_slice(b"\", nonce=\"");
    write_quoted_inner(out, nonce);
    out.extend_from_slice(b"\", opaque=\"");
    write_quoted_inner(out, opaque);
    out.extend_from_slice(b"\", algorithm=");
    out.extend_from_slice(alg.name().as_bytes());
    out.extend_from_slice(b", qop=\"auth\"");
    if stale {
        out.extend_from_slice(b", stale=true");
    }
}

fn write_quoted_inner(out: &mut Vec<u8>, s: &str) {
    if !s.bytes().any(|b| b == b'"' || b == b'\\') {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    for b in s.bytes() {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// Builds an `Authorization` value answering a challenge (client side: the
/// test UA).
#[allow(clippy::too_many_arguments)]
pub fn authorization(
    alg: Algorithm,
    username: &str,
    realm: &str,
    password: &str,
    nonce: &str,
    opaque: Option<&str>,
    method: &str,
    uri: &str,
    nc: u32,
    cnonce: &str,
) -> String {
    let ha1 = ha1(alg, username, realm, password);
    let nc_s = format!("{nc:08x}");
    let resp = response(alg, &ha1, nonce, &nc_s, cnonce, "auth", method, uri);
    let mut s = format!(
        "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{resp}\", algorithm={}, cnonce=\"{cnonce}\", qop=auth, nc={nc_s}",
        alg.name()
    );
    if let Some(o) = opaque {
        s.push_str(&format!(", opaque=\"{o}\""));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // RFC 7616 s.3.9.1 example (HTTP, but the computation is the same).
    const RFC_NONCE: &str = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v";
    const RFC_CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    #[test]
    fn rfc7616_md5_vector() {
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let r = response(
            Algorithm::Md5,
            &ha1,
            RFC_NONCE,
            "00000001",
            RFC_CNONCE,
            "auth",
            "GET",
            "/dir/index.html",
        );
        assert_eq!(r, "8ca523f5e9506fed4657c9700eebdbec");
    }

    #[test]
    fn rfc7616_sha256_vector() {
        let ha1 = ha1(
            Algorithm::Sha256,
            "Mufasa",
            "http-auth@example.org",
            "Circle of Life",
        );
        let r = response(
            Algorithm::Sha256,
            &ha1,
            RFC_NONCE,
            "00000001",
            RFC_CNONCE,
            "auth",
            "GET",
            "/dir/index.html",
        );
        assert_eq!(
            r,
            "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        );
    }

    #[test]
    fn rfc2617_style_vector_verifies() {
        // RFC 2617 s.3.5 example, MD5 with qop=auth.
        let h = "Digest username=\"Mufasa\", realm=\"testrealm@host.com\", \
                 nonce=\"dcd98b7102dd2f0e8b11d0f600bfb0c093\", uri=\"/dir/index.html\", \
                 qop=auth, nc=00000001, cnonce=\"0a4f113b\", \
                 response=\"6629fae49393a05397450978507c4ef1\", \
                 opaque=\"5ccc069c403ebaf9f0171e9517f40e41\"";
        let c = Credentials::parse(h).unwrap();
        let ha1 = ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "Circle Of Life",
        );
        assert!(c.verify(&ha1, "GET"));
        assert!(!c.verify(&ha1, "POST"));
        let wrong = super::ha1(
            Algorithm::Md5,
            "Mufasa",
            "testrealm@host.com",
            "circle of life",
        );
        assert!(!c.verify(&wrong, "GET"));
    }

    #[test]
    fn sipp_style_header_parses() {
        // SIPp writes no spaces, unquoted qop/nc/algorithm.
        let h = "Digest username=\"user000001\",realm=\"example.test\",cnonce=\"6b8b4567\",nc=00000001,\
                 qop=auth,uri=\"sip:example.test\",nonce=\"abc\",response=\"0123\",algorithm=MD5";
        let c = Credentials::parse(h).unwrap();
        assert_eq!(c.username, "user000001");
        assert_eq!(c.nc, Some(("00000001".into(), 1)));
        assert_eq!(c.algorithm, Some(Algorithm::Md5));
        assert_eq!(c.qop.as_deref(), Some("auth"));
    }

    #[test]
    fn sha256_token_and_case_insensitive_names() {
        let h = "digest  USERNAME = \"a\" ,, Realm=\"r\",NONCE=\"n\", uri=\"sip:x\",response=\"ab\", ALGORITHM=sha-256 ,qop=\"auth\",nc=0000000a,cnonce=\"c\"";
        let c = Credentials::parse(h).unwrap();
        assert_eq!(c.algorithm, Some(Algorithm::Sha256));
        assert_eq!(c.nc.as_ref().unwrap().1, 10);
        assert_eq!(c.realm, "r");
    }

    #[test]
    fn escapes_in_quoted_strings() {
        let h = r#"Digest username="a\"b\\c", realm="r", nonce="n", uri="u", response="x""#;
        let c = Credentials::parse(h).unwrap();
        assert_eq!(c.username, "a\"b\\c");
    }

    #[test]
    fn unsupported_algorithm_is_flagged() {
        let h = "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", algorithm=SHA-512-256";
        let c = Credentials::parse(h).unwrap();
        assert!(c.unsupported_algorithm);
        assert_eq!(c.algorithm, None);
        assert!(!c.verify("00", "REGISTER"));
    }

    #[test]
    fn syntax_errors() {
        for h in [
            "",
            "Digest username",
            "Digest username=",
            "Digest username=\"unterminated",
            "Digest a=b c=d",
            "Digest =x",
            "Basic dXNlcjpwYXNz",
            "Digest username=\"a\", realm=\"r\", nonce=\"n\", uri=\"u\", response=\"x\", nc=1",
        ] {
            assert!(Credentials::parse(h).is_err(), "{h:?}");
        }
    }

    #[test]
    fn challenge_round_trip() {
        let mut out = Vec::new();
        write_challenge(&mut out, "ex\"ample", "N", "O", Algorithm::Sha256, true);
        let s = String::from_utf8(out).unwrap();
        let c = Challenge::parse(&s).unwrap();
        assert_eq!(c.realm, "ex\"ample");
        assert_eq!(c.algorithm, Some(Algorithm::Sha256));
        assert!(c.stale);
        assert_eq!(c.qop.as_deref(), Some("auth"));
    }

    #[test]
    fn uppercase_hex_response_accepted() {
        let a = authorization(
            Algorithm::Md5,
            "u",
            "r",
            "p",
            "n",
            None,
            "REGISTER",
            "sip:r",
            1,
            "c",
        );
        let mut c = Credentials::parse(&a).unwrap();
        c.response = c.response.to_ascii_uppercase();
        assert!(c.verify(&ha1(Algorithm::Md5, "u", "r", "p"), "REGISTER"));
    }

    proptest! {
        #[test]
        fn authorization_round_trips_and_verifies(
            user in "[a-zA-Z0-9._-]{1,20}",
            pass in "[ -~]{0,20}",
            realm in "[a-z0-9.-]{1,20}",
            nonce in "[A-Za-z0-9+/=]{1,40}",
            cnonce in "[A-Za-z0-9]{1,16}",
            nc in 1u32..u32::MAX,
            uri in "sip:[a-z0-9.@:-]{1,30}",
            sha in any::<bool>(),
        ) {
            let alg = if sha { Algorithm::Sha256 } else { Algorithm::Md5 };
            let h = authorization(alg, &user, &realm, &pass, &nonce, Some("op"), "REGISTER", &uri, nc, &cnonce);
            let c = Credentials::parse(&h).unwrap();
            prop_assert_eq!(&c.username, &user);
            prop_assert_eq!(&c.uri, &uri);
            prop_assert_eq!(c.nc.as_ref().map(|n| n.1), Some(nc));
            prop_assert!(c.verify(&ha1(alg, &user, &realm, &pass), "REGISTER"));
            let other = format!("{pass}x");
            prop_assert!(!c.verify(&ha1(alg, &user, &realm, &other), "REGISTER"));
        }

        #[test]
        fn borrowed_parse_agrees_with_the_params_list(s in "(Digest|digest|Basic)? ?((username|realm|nonce|uri|response|algorithm|nc|cnonce|qop|opaque|NC|Realm)=(\"[a-z\\\\\", ]{0,6}\"|[0-9a-fA-F]{0,9}|MD5|SHA-256|x)[ ,]{0,2}){0,12}") {
            // The first occurrence of each name wins, as `get` finds it.
            let reference = parse_params(&s).map(|(scheme, p)| {
                (scheme.to_owned(), ["username", "realm", "nonce", "uri", "response", "cnonce", "qop", "opaque"]
                    .map(|n| get(&p, n).map(str::to_owned)))
            });
            match (reference, CredentialsRef::parse(&s)) {
                (Err(e), r) => prop_assert_eq!(Err(e), r.map(|_| ())),
                (Ok((scheme, fields)), r) => {
                    if !scheme.eq_ignore_ascii_case("Digest") {
                        prop_assert_eq!(r, Err(DigestError::NotDigest));
                    } else if let Ok(c) = r {
                        let got = [Some(&c.username), Some(&c.realm), Some(&c.nonce), Some(&c.uri), Some(&c.response), c.cnonce.as_ref(), c.qop.as_ref(), c.opaque.as_ref()]
                            .map(|v| v.map(|v| v.to_string()));
                        prop_assert_eq!(got, fields);
                    }
                }
            }
        }

        #[test]
        fn parser_never_panics(s in "\\PC{0,200}") {
            let _ = Credentials::parse(&s);
            let _ = Challenge::parse(&s);
        }

        #[test]
        fn parser_never_panics_on_digest_like_input(s in "Digest [a-z=\", \\\\]{0,100}") {
            let _ = Credentials::parse(&s);
        }
    }
}
