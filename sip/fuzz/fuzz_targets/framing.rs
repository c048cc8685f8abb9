//! The stream framer must never panic, and never hand out more bytes than it was
//! given, however the input is split into pushes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sip::framing::StreamFramer;

fuzz_target!(|data: &[u8]| {
    let Some((&split, rest)) = data.split_first() else {
        return;
    };
    let mut framer = StreamFramer::new(8 * 1024);
    let mut handed_out = 0;
    for chunk in rest.chunks(usize::from(split).max(1)) {
        framer.push(chunk);
        while let Some(Ok(msg)) = framer.next_message() {
            handed_out += msg.len();
            let _ = sip::msg::parse(&msg);
        }
    }
    assert!(handed_out <= rest.len());
});
