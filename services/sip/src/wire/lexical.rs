//! The lexical bits of RFC 3261 s.25 the parsers share: `token`
//! characters and the white-space trimming that header values allow.

/// RFC 3261 `token` characters: alphanumerics and `-.!%*_+`'~`.
pub(super) static TOKEN_CHARS: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        c += 1;
    }
    t
};

pub(super) fn is_token_char(c: u8) -> bool {
    TOKEN_CHARS[usize::from(c)]
}

/// First index of the ASCII byte `b` in `s` (short strings: a plain loop
/// beats a vectorised search's set-up).
pub(super) fn find_byte(s: &str, b: u8) -> Option<usize> {
    s.bytes().position(|c| c == b)
}

pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

/// Whitespace as `char::is_whitespace` sees it, in ASCII.
pub(super) fn is_ascii_ws(b: u8) -> bool {
    matches!(b, b'\t'..=b'\r' | b' ')
}

/// `str::trim`, fast for ASCII: when what is left starts or ends with a
/// non-ASCII byte (maybe Unicode whitespace), std decides.
pub(crate) fn trim(s: &str) -> &str {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && is_ascii_ws(b[i]) {
        i += 1;
    }
    let mut j = b.len();
    while j > i && is_ascii_ws(b[j - 1]) {
        j -= 1;
    }
    if i < j && (b[i] >= 0x80 || b[j - 1] >= 0x80) {
        return s.trim();
    }
    &s[i..j]
}

/// `str::trim_start`, fast for ASCII.
pub(super) fn trim_start(s: &str) -> &str {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && is_ascii_ws(b[i]) {
        i += 1;
    }
    if i < b.len() && b[i] >= 0x80 {
        return s.trim_start();
    }
    &s[i..]
}

/// `str::trim_end`, fast for ASCII.
pub(super) fn trim_end(s: &str) -> &str {
    let b = s.as_bytes();
    let mut j = b.len();
    while j > 0 && is_ascii_ws(b[j - 1]) {
        j -= 1;
    }
    if j > 0 && b[j - 1] >= 0x80 {
        return s.trim_end();
    }
    &s[..j]
}

/// Whether `s` contains any of the ASCII bytes in `set`.
pub(super) fn has_any(s: &str, set: &[u8]) -> bool {
    s.bytes().any(|b| set.contains(&b))
}

/// `s` without trailing SP/HT (ASCII, so the cut is a char boundary).
pub(super) fn trim_sp_end(s: &str) -> &str {
    let b = s.as_bytes();
    let mut e = b.len();
    while e > 0 && matches!(b[e - 1], b' ' | b'\t') {
        e -= 1;
    }
    &s[..e]
}

/// `s` without leading and trailing SP/HT.
pub(super) fn trim_sp(s: &str) -> &str {
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() && matches!(b[i], b' ' | b'\t') {
        i += 1;
    }
    trim_sp_end(&s[i..])
}
