//! Typed views of header values, parsed on demand without copying: lists
//! (`a, b`), parameters (`;name=value`), hosts and ports, and the headers
//! the gateway reads ([`Via`], [`NameAddr`], [`Uri`], [`CSeq`]).

use std::net::IpAddr;

use super::lexical::*;
use super::message::ParseError;

/// Parses a decimal u32 with no sign and no surrounding garbage.
pub fn parse_u32(s: &str) -> Option<u32> {
    let s = trim(s);
    if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Splits a header value at commas that are not inside a quoted string or
/// `<...>` (RFC 3261 s.7.3.1: several values may share one header line).
pub fn split_list(value: &str) -> impl Iterator<Item = &str> {
    let mut rest = value;
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let bytes = rest.as_bytes();
        let mut i = 0;
        let mut in_quotes = false;
        let mut in_angle = false;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if in_quotes => i += 1,
                b'"' => in_quotes = !in_quotes,
                b'<' if !in_quotes => in_angle = true,
                b'>' if !in_quotes => in_angle = false,
                b',' if !in_quotes && !in_angle => break,
                _ => {}
            }
            i += 1;
        }
        let i = i.min(bytes.len());
        let item = trim(&rest[..i]);
        rest = if i < bytes.len() { &rest[i + 1..] } else { "" };
        if !item.is_empty() {
            return Some(item);
        }
    })
}

/// Iterates `;name[=value]` parameters. Quoted values keep their quotes.
pub fn params(s: &str) -> impl Iterator<Item = (&str, Option<&str>)> {
    let mut rest = s;
    std::iter::from_fn(move || loop {
        let b = rest.as_bytes();
        let mut i = 0;
        while i < b.len() && matches!(b[i], b' ' | b'\t' | b';') {
            i += 1;
        }
        rest = &rest[i..];
        if rest.is_empty() {
            return None;
        }
        let bytes = rest.as_bytes();
        let mut i = 0;
        let mut in_quotes = false;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' if in_quotes => i += 1,
                b'"' => in_quotes = !in_quotes,
                b';' if !in_quotes => break,
                _ => {}
            }
            i += 1;
        }
        let i = i.min(bytes.len());
        let item = trim(&rest[..i]);
        rest = &rest[i..];
        if item.is_empty() {
            continue;
        }
        return Some(match memchr::memchr(b'=', item.as_bytes()) {
            Some(eq) => (trim(&item[..eq]), Some(trim(&item[eq + 1..]))),
            None => (item, None),
        });
    })
}

/// Finds a parameter by case-insensitive name: `Some(None)` for a flag.
pub fn param<'s>(s: &'s str, name: &str) -> Option<Option<&'s str>> {
    params(s)
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A host: a name or IPv4 as written, or an IPv6 reference in brackets.
pub(super) fn parse_host(s: &str) -> Option<(&str, &str)> {
    // Returns (host, rest after host).
    if s.starts_with('[') {
        let close = s.find(']')?;
        let inner = &s[1..close];
        inner.parse::<std::net::Ipv6Addr>().ok()?;
        return Some((&s[..=close], &s[close + 1..]));
    }
    let end = s
        .bytes()
        .position(|c| !(c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_'))
        .unwrap_or(s.len());
    if end == 0 {
        return None;
    }
    Some((&s[..end], &s[end..]))
}

pub(super) fn parse_port(s: &str) -> Option<(Option<u16>, &str)> {
    if let Some(r) = s.strip_prefix(':') {
        let end = r
            .bytes()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(r.len());
        if end == 0 || end > 5 {
            return None;
        }
        let port: u16 = r[..end].parse().ok()?;
        return Some((Some(port), &r[end..]));
    }
    Some((None, s))
}

/// A host name or IP address as an `IpAddr`, if it is one.
pub fn host_ip(host: &str) -> Option<IpAddr> {
    let h = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    h.parse().ok()
}

/// One Via element (RFC 3261 s.20.42).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Via<'a> {
    pub transport: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
    /// The raw `;param...` part.
    pub params: &'a str,
    /// Everything up to the parameters, e.g. `SIP/2.0/UDP host:port`.
    pub head: &'a str,
}

impl<'a> Via<'a> {
    pub fn parse(s: &'a str) -> Result<Via<'a>, ParseError> {
        const E: ParseError = ParseError::Header("Via");
        let s = trim(s);
        // sent-protocol = "SIP" SLASH "2.0" SLASH transport, LWS allowed
        // around the slashes.
        let mut parts = s.splitn(3, '/');
        let name = trim(parts.next().ok_or(E)?);
        let ver = trim(parts.next().ok_or(E)?);
        let rest = trim_start(parts.next().ok_or(E)?);
        if !name.eq_ignore_ascii_case("SIP") || ver != "2.0" {
            return Err(E);
        }
        let tend = rest
            .bytes()
            .position(|b| b == b' ' || b == b'\t')
            .ok_or(E)?;
        let transport = &rest[..tend];
        if !is_token(transport) {
            return Err(E);
        }
        let after = trim_start(&rest[tend..]);
        let (host, r) = parse_host(after).ok_or(E)?;
        let r = trim_start(r);
        let (port, r) = parse_port(r).ok_or(E)?;
        let r = trim_start(r);
        if !(r.is_empty() || r.starts_with(';')) {
            return Err(E);
        }
        let head_len = s.len() - r.len();
        Ok(Via {
            transport,
            host,
            port,
            params: r,
            head: trim_end(&s[..head_len]),
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        param(self.params, name)
    }

    pub fn branch(&self) -> Option<&'a str> {
        self.param("branch").flatten()
    }

    /// `sent-by` as written (lower-cased host, with port when given): part of
    /// the transaction key (RFC 3261 s.17.2.3).
    pub fn sent_by(&self) -> String {
        let mut s = self.host.to_ascii_lowercase();
        if let Some(p) = self.port {
            s.push(':');
            s.push_str(&p.to_string());
        }
        s
    }
}

/// `name-addr` / `addr-spec` with header parameters, as in From, To and
/// Contact (RFC 3261 s.20.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameAddr<'a> {
    pub display: Option<&'a str>,
    pub uri: &'a str,
    /// The raw `;param...` part after the URI.
    pub params: &'a str,
}

impl<'a> NameAddr<'a> {
    pub fn parse(s: &'a str) -> Option<NameAddr<'a>> {
        let s = trim(s);
        if s.is_empty() {
            return None;
        }
        let (display, rest) = if s.starts_with('"') {
            let end = quoted_end(s)?;
            (Some(&s[..end]), trim_start(&s[end..]))
        } else if let Some(lt) = find_byte(s, b'<') {
            let d = trim(&s[..lt]);
            (if d.is_empty() { None } else { Some(d) }, &s[lt..])
        } else {
            (None, s)
        };
        if let Some(r) = rest.strip_prefix('<') {
            let gt = find_byte(r, b'>')?;
            let uri = trim(&r[..gt]);
            let params = trim(&r[gt + 1..]);
            if uri.is_empty() || !(params.is_empty() || params.starts_with(';')) {
                return None;
            }
            return Some(NameAddr {
                display,
                uri,
                params,
            });
        }
        if display.is_some() {
            return None;
        }
        // addr-spec without brackets: parameters after the first ';' belong
        // to the header, not the URI (RFC 3261 s.20).
        let (uri, params) = match find_byte(rest, b';') {
            // LWS may precede the ';' (RFC 3261 s.25.1 SEMI = SWS ";" SWS).
            Some(i) => (trim_end(&rest[..i]), &rest[i..]),
            None => (rest, ""),
        };
        if uri.is_empty() || has_any(uri, b" \t,<>\"") {
            return None;
        }
        Some(NameAddr {
            display,
            uri: trim(uri),
            params,
        })
    }

    pub fn param(&self, name: &str) -> Option<Option<&'a str>> {
        param(self.params, name)
    }

    pub fn tag(&self) -> Option<&'a str> {
        self.param("tag").flatten()
    }
}

/// Index just past the closing quote of a quoted string starting at 0.
pub(super) fn quoted_end(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// A SIP/SIPS URI (RFC 3261 s.19.1), borrowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: &'a str,
    pub user: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
    pub params: &'a str,
}

impl<'a> Uri<'a> {
    /// Parses `sip:` and `sips:` URIs; other schemes are `None`.
    pub fn parse(s: &'a str) -> Option<Uri<'a>> {
        let s = trim(s);
        let colon = find_byte(s, b':')?;
        let scheme = &s[..colon];
        if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
            return None;
        }
        let rest = &s[colon + 1..];
        // userinfo ends at the last '@' before any ';' or '?' of the host part
        // ('@' may not appear unescaped in a user part, but be lenient).
        let (user, hostpart) = match rest.bytes().rposition(|c| c == b'@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let user = &userinfo[..find_byte(userinfo, b':').unwrap_or(userinfo.len())];
                if user.is_empty() || has_any(user, b" \t<>\"") {
                    return None;
                }
                (Some(user), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let (host, r) = parse_host(hostpart)?;
        let (port, r) = parse_port(r)?;
        if !(r.is_empty() || r.starts_with(';') || r.starts_with('?')) {
            return None;
        }
        if has_any(r, b" \t<>") {
            return None;
        }
        Some(Uri {
            scheme,
            user,
            host,
            port,
            params: r,
        })
    }
}

/// CSeq: sequence number and method (RFC 3261 s.20.16).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    pub seq: u32,
    pub method: &'a str,
}

impl<'a> CSeq<'a> {
    pub fn parse(s: &'a str) -> Result<CSeq<'a>, ParseError> {
        const E: ParseError = ParseError::Header("CSeq");
        let mut it = s.split_ascii_whitespace();
        let seq = parse_u32(it.next().ok_or(E)?).ok_or(E)?;
        // RFC 3261 s.8.1.1.5: less than 2**31.
        if seq >= 1 << 31 {
            return Err(E);
        }
        let method = it.next().ok_or(E)?;
        if it.next().is_some() || !is_token(method) {
            return Err(E);
        }
        Ok(CSeq { seq, method })
    }
}
