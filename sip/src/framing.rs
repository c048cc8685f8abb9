//! Cutting SIP messages out of a byte stream (TCP, TLS): RFC 3261 §18.3.
//!
//! On a stream there are no datagram boundaries, so the only thing that says where a
//! message ends is its head's empty line plus `Content-Length` octets of body. That
//! makes `Content-Length` mandatory here, and a bad one fatal: once we cannot tell
//! where this message ends we cannot find the next one either, so the connection
//! must be closed (RFC 4475 §3.1.2.3 ncl, §3.3.9 mcl01). A `Content-Length` that is
//! larger than what has arrived is not an error on a stream — it means "wait"
//! (RFC 4475 §3.1.2.2 clerr), bounded by `max_message`.
//!
//! The framer follows mini-redis's `check`-then-`parse` split: it only finds the
//! boundaries and hands out the bytes of one message; [`crate::msg::parse`] does the
//! parsing. CRLFs between messages are keep-alives (RFC 5626 §3.5.1) and are skipped.
//!
//! ```
//! use sip::framing::StreamFramer;
//! let mut f = StreamFramer::new(64 * 1024);
//! f.push(b"\r\n\r\nOPTIONS sip:a@b SIP/2.0\r\nContent-Length: 2\r\n\r\nhi");
//! let msg = f.next_message().unwrap().unwrap();
//! assert!(msg.ends_with(b"\r\n\r\nhi"));
//! assert!(f.next_message().is_none());
//! ```

use crate::msg::canonical_name;
use crate::msg::parser::{content_length, head_end, head_lines, split_header_line};

/// Why a stream can no longer be framed. Every variant means: close the connection.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FramingError {
    #[error("message larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("no Content-Length on a stream transport")]
    MissingContentLength,
    #[error("bad Content-Length: {0}")]
    BadContentLength(String),
}

/// Accumulates stream bytes and yields whole messages.
#[derive(Debug)]
pub struct StreamFramer {
    buf: Vec<u8>,
    max_message: usize,
    /// How much of `buf` is known to hold no end of head: a peer that trickles a
    /// head in one byte at a time must not make us rescan it from the start.
    scanned: usize,
    failed: Option<FramingError>,
}

impl StreamFramer {
    /// `max_message` bounds one message (head and body); a peer that sends more
    /// without completing a message gets [`FramingError::TooLarge`].
    pub fn new(max_message: usize) -> Self {
        StreamFramer {
            buf: Vec::new(),
            max_message,
            scanned: 0,
            failed: None,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes received but not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// `Some(Ok(bytes of one whole message))` | `Some(Err(FramingError))` — a
    /// framing error is unrecoverable: close the connection (RFC 4475 ncl/mcl01) |
    /// `None` = need more. Skips CRLF keep-alives between messages.
    pub fn next_message(&mut self) -> Option<Result<Vec<u8>, FramingError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        match self.check() {
            Ok(Some(len)) => {
                self.scanned = 0;
                Some(Ok(self.buf.drain(..len).collect()))
            }
            Ok(None) => None,
            Err(e) => {
                self.buf = Vec::new();
                self.failed = Some(e.clone());
                Some(Err(e))
            }
        }
    }

    /// The length of the first whole message in the buffer, if it has all arrived.
    fn check(&mut self) -> Result<Option<usize>, FramingError> {
        let skip = self
            .buf
            .iter()
            .position(|&b| b != b'\r' && b != b'\n')
            .unwrap_or(self.buf.len());
        if skip > 0 {
            self.buf.drain(..skip);
            self.scanned = 0;
        }
        let too_large = FramingError::TooLarge {
            limit: self.max_message,
        };
        // Back up over a blank line that may straddle the old end ("\r\n\r" + "\n").
        let from = self.scanned.saturating_sub(3);
        let Some((head_len, body_start)) = self
            .buf
            .get(from..)
            .and_then(head_end)
            .map(|(h, b)| (from + h, from + b))
        else {
            self.scanned = self.buf.len();
            return if self.buf.len() > self.max_message {
                Err(too_large)
            } else {
                Ok(None)
            };
        };
        let lengths: Vec<String> = head_lines(&self.buf[..head_len])
            .skip(1)
            .filter_map(|line| {
                let (name, value) = split_header_line(&line)?;
                (canonical_name(name) == "Content-Length").then(|| value.to_owned())
            })
            .collect();
        let len = content_length(lengths.iter().map(String::as_str))
            .map_err(|e| FramingError::BadContentLength(e.to_string()))?
            .ok_or(FramingError::MissingContentLength)?;
        let total = body_start.checked_add(len).ok_or(too_large.clone())?;
        if total > self.max_message {
            return Err(too_large);
        }
        Ok((self.buf.len() >= total).then_some(total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@example.com SIP/2.0\r\n\
        Via: SIP/2.0/TCP h;branch=z9hG4bK1\r\n\
        l: 5\r\n\r\nhello";

    #[test]
    fn one_byte_at_a_time() {
        let mut f = StreamFramer::new(4096);
        for (i, b) in MSG.iter().enumerate() {
            assert!(f.next_message().is_none(), "complete too early at {i}");
            f.push(std::slice::from_ref(b));
        }
        assert_eq!(f.next_message().unwrap().unwrap(), MSG);
        assert!(f.next_message().is_none());
        assert_eq!(f.buffered(), 0);
    }

    #[test]
    fn every_split_point() {
        // Includes splits inside the blank line ("\r\n\r" | "\n"), where the
        // incremental head scan must back up.
        for k in 0..=MSG.len() {
            let mut f = StreamFramer::new(4096);
            f.push(&MSG[..k]);
            let early = f.next_message();
            f.push(&MSG[k..]);
            let msg = match early {
                Some(m) => m.unwrap(),
                None => f.next_message().unwrap().unwrap(),
            };
            assert_eq!(msg, MSG, "split at {k}");
        }
    }

    #[test]
    fn two_messages_in_one_push_with_keepalives() {
        let mut f = StreamFramer::new(4096);
        let mut data = b"\r\n\r\n".to_vec();
        data.extend_from_slice(MSG);
        data.extend_from_slice(b"\r\n");
        data.extend_from_slice(MSG);
        data.extend_from_slice(&MSG[..10]);
        f.push(&data);
        assert_eq!(f.next_message().unwrap().unwrap(), MSG);
        assert_eq!(f.next_message().unwrap().unwrap(), MSG);
        assert!(f.next_message().is_none());
        f.push(&MSG[10..]);
        assert_eq!(f.next_message().unwrap().unwrap(), MSG);
    }

    #[test]
    fn fatal_errors_stick() {
        for head in [
            "Content-Length: -999",
            "Content-Length: five",
            "Content-Length: 13\r\nContent-Length: 5",
            "Max-Forwards: 70",
        ] {
            let mut f = StreamFramer::new(4096);
            f.push(format!("OPTIONS sip:a@b SIP/2.0\r\n{head}\r\n\r\nbody").as_bytes());
            assert!(matches!(f.next_message(), Some(Err(_))), "{head}");
            f.push(MSG);
            assert!(matches!(f.next_message(), Some(Err(_))), "{head} recovered");
        }
    }

    #[test]
    fn size_limit() {
        let mut f = StreamFramer::new(64);
        f.push(&[b'x'; 65]);
        assert_eq!(
            f.next_message(),
            Some(Err(FramingError::TooLarge { limit: 64 }))
        );
        let mut f = StreamFramer::new(64);
        f.push(b"OPTIONS sip:a@b SIP/2.0\r\nl: 4000000000\r\n\r\n");
        assert!(matches!(
            f.next_message(),
            Some(Err(FramingError::TooLarge { .. }))
        ));
    }
}
