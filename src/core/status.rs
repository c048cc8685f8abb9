//! How SIP outcomes map to public call statuses and Q.850 causes.
//!
//! One table, tested row by row: the API, callbacks and logs all read from here.

use crate::model::CallStatus;

/// The public status for a final non-2xx response to our INVITE.
pub fn status_for_final(code: u16) -> CallStatus {
    match code {
        486 | 600 => CallStatus::Busy,
        408 | 480 => CallStatus::NoAnswer,
        487 => CallStatus::Cancelled,
        _ => CallStatus::Failed,
    }
}

/// RFC 3398 §8.2.6 (SIP → ISUP cause), the mapping carriers use. 0 means "no cause".
pub fn q850_for_sip(code: u16) -> i32 {
    match code {
        200..=299 => 16, // normal call clearing
        400 | 402 | 403 => 21,
        401 | 407 => 21,
        404 | 485 | 604 => 1,
        405 | 406 | 413 | 414 | 416 | 420 | 421 | 423 | 505 | 513 => 127,
        408 | 504 => 102,
        410 => 22,
        480 => 18,
        483 => 25,
        484 => 28,
        486 | 600 => 17,
        487 => 16,
        488 | 606 => 65,
        500 => 41,
        501 => 79,
        502 => 38,
        503 => 41,
        603 => 21,
        _ => 31, // normal, unspecified
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table() {
        let rows = [
            (486, CallStatus::Busy),
            (600, CallStatus::Busy),
            (408, CallStatus::NoAnswer),
            (480, CallStatus::NoAnswer),
            (487, CallStatus::Cancelled),
            (404, CallStatus::Failed),
            (503, CallStatus::Failed),
            (603, CallStatus::Failed),
        ];
        for (code, want) in rows {
            assert_eq!(status_for_final(code), want, "{code}");
        }
    }

    #[test]
    fn q850_table() {
        assert_eq!(q850_for_sip(486), 17);
        assert_eq!(q850_for_sip(480), 18);
        assert_eq!(q850_for_sip(404), 1);
        assert_eq!(q850_for_sip(503), 41);
        assert_eq!(q850_for_sip(200), 16);
    }
}
