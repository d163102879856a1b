//! Framing of SIP over a byte stream (TCP), in two steps as mini-redis'
//! `Frame::check` then parse: [`check`] only finds out whether a whole
//! message is buffered (headers, then Content-Length bytes of body); the
//! caller parses it afterwards from exactly those bytes.

use crate::wire::message::header_end;

/// What the start of the buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// A whole message of this many bytes.
    Message(usize),
    /// This many CR/LF bytes before a start line: keep-alives (RFC 5626
    /// s.4.4.1) or stray line ends (RFC 3261 s.7.5 says to ignore them).
    KeepAlive(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The message is (or would be) larger than the limit. `header_len` is
    /// set when the header section was complete, so a 513 can be answered.
    #[error("message larger than the limit")]
    TooLarge { header_len: Option<usize> },
    /// Content-Length is not a number: the stream cannot be resynchronised.
    #[error("bad Content-Length")]
    BadContentLength,
}

/// Checks whether `buf` starts with a whole message no larger than `max`.
/// `Ok(None)`: read more.
pub fn check(buf: &[u8], max: usize) -> Result<Option<Frame>, FrameError> {
    let crlf = buf
        .iter()
        .take_while(|b| **b == b'\r' || **b == b'\n')
        .count();
    if crlf > 0 {
        return Ok(Some(Frame::KeepAlive(crlf)));
    }
    let Some(head) = header_end(buf) else {
        if buf.len() > max {
            return Err(FrameError::TooLarge { header_len: None });
        }
        return Ok(None);
    };
    let len = content_length(&buf[..head])?;
    let total = head.checked_add(len).ok_or(FrameError::BadContentLength)?;
    if total > max {
        return Err(FrameError::TooLarge {
            header_len: Some(head),
        });
    }
    if buf.len() >= total {
        Ok(Some(Frame::Message(total)))
    } else {
        Ok(None)
    }
}

/// Content-Length (or compact `l`) of a header section; 0 when absent
/// (RFC 3261 s.18.3 requires it on streams, but an absent one can only mean
/// an empty body).
fn content_length(head: &[u8]) -> Result<usize, FrameError> {
    let mut found = None;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = trim(&line[..colon]);
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            // Two lengths make the framing ambiguous (RFC 4475 s.3.1.2.7,
            // "mcl01"): the stream cannot be trusted any more.
            if found.is_some() {
                return Err(FrameError::BadContentLength);
            }
            let v = trim(&line[colon + 1..]);
            if v.is_empty() || v.len() > 9 || !v.iter().all(u8::is_ascii_digit) {
                return Err(FrameError::BadContentLength);
            }
            found = Some(v.iter().fold(0usize, |n, d| n * 10 + usize::from(d - b'0')));
        }
    }
    Ok(found.unwrap_or(0))
}

fn trim(s: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\r');
    let start = s.iter().position(|b| !is_ws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|b| !is_ws(b)).map_or(start, |e| e + 1);
    &s[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MSG: &[u8] = b"OPTIONS sip:h SIP/2.0\r\nl: 3\r\n\r\nabc";

    #[test]
    fn two_content_lengths_are_refused() {
        let msg = b"OPTIONS sip:h SIP/2.0\r\nl: 3\r\nContent-Length: 5\r\n\r\nabcde";
        assert_eq!(check(msg, 1000), Err(FrameError::BadContentLength));
    }

    #[test]
    fn whole_partial_keepalive() {
        assert_eq!(check(MSG, 1000), Ok(Some(Frame::Message(MSG.len()))));
        for i in 0..MSG.len() {
            assert_eq!(check(&MSG[..i], 1000), Ok(None), "{i}");
        }
        let mut two = MSG.to_vec();
        two.extend_from_slice(MSG);
        assert_eq!(check(&two, 1000), Ok(Some(Frame::Message(MSG.len()))));
        assert_eq!(check(b"\r\n\r\nOPT", 1000), Ok(Some(Frame::KeepAlive(4))));
    }

    #[test]
    fn limits() {
        assert_eq!(
            check(MSG, 20),
            Err(FrameError::TooLarge {
                header_len: Some(MSG.len() - 3)
            })
        );
        assert_eq!(
            check(&[b'a'; 100], 50),
            Err(FrameError::TooLarge { header_len: None })
        );
        assert_eq!(
            check(b"OPTIONS sip:h SIP/2.0\r\nContent-Length: x\r\n\r\n", 100),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(
            check(
                b"OPTIONS sip:h SIP/2.0\r\nContent-Length: 99999999999\r\n\r\n",
                100
            ),
            Err(FrameError::BadContentLength)
        );
    }

    proptest! {
        #[test]
        fn never_panics_and_stays_in_bounds(buf in proptest::collection::vec(any::<u8>(), 0..300), max in 0usize..400) {
            match check(&buf, max) {
                Ok(Some(Frame::Message(n))) => prop_assert!(n <= buf.len() && n <= max),
                Ok(Some(Frame::KeepAlive(n))) => prop_assert!(n >= 1 && n <= buf.len()),
                _ => {}
            }
        }
    }
}
