//! `parse` must never panic, and whatever it accepts must serialise to bytes that
//! parse back to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::msg::{error_response, parse};

fuzz_target!(|data: &[u8]| {
    match parse(data) {
        Ok(msg) => {
            let wire = msg.to_bytes();
            let again = parse(&wire).expect("a serialised message parses");
            assert_eq!(again.to_bytes(), wire);
            let _ = msg.headers().top_via();
            let _ = msg.headers().from();
            let _ = msg.headers().cseq();
        }
        Err(e) => {
            if let Some(resp) = error_response(data, &e) {
                assert_eq!(resp.code, e.status());
            }
        }
    }
});
