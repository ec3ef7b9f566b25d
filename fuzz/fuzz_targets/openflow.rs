//! What a switch sends over OpenFlow (a switch on a hostile network may send anything): one
//! message decoded; what decodes is encoded and decoded again, and must read the same the
//! second time (the codec never loses or invents a field it keeps).
#![no_main]
use libfuzzer_sys::fuzz_target;
use oxvirt_openflow::{decode, encode, format_match, Message};

fuzz_target!(|data: &[u8]| {
    if let Ok((xid, msg)) = decode(data) {
        let Ok(bytes) = encode(xid, &msg) else { return };
        let again = decode(&bytes).expect("what oxvirt encodes decodes");
        let bytes2 = encode(xid, &again.1).expect("encodes again");
        assert_eq!(bytes, bytes2, "one normalisation, then stable");
        if let Message::FlowMod(f) = &again.1 {
            let _ = format_match(&f.r#match);
        }
    }
});
