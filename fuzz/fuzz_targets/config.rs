//! oxvirtd's configuration file (TOML, written by operators and tools): parsed and checked
//! with the daemon's own code, whatever the bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../crates/oxvirtd/src/config.rs"]
mod config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = config::Config::parse(text);
    }
});
