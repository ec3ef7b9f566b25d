//! What QEMU sends over QMP (a compromised guest's QEMU may send anything): one line as JSON,
//! then classified as reply, event or other, and read as a greeting.
#![no_main]
use libfuzzer_sys::fuzz_target;
use oxvirt_qemu::qmp::{classify, decode_line, parse_greeting};

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = decode_line(data) {
        let _ = parse_greeting(&v);
        let _ = classify(v);
    }
});
