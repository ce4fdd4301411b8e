//! Arbitrary text as a `SidecarConfig` file: parse, validate and round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // The sidecar reads the file with read_to_string: invalid UTF-8 is a read error before parsing.
    if let Ok(text) = std::str::from_utf8(data) {
        mailroom_sidecar::fuzzing::config_parse(text);
    }
});
