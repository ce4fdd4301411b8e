//! An SMTP client byte stream against one inbound session (first byte: variant; see
//! `mailroom_sidecar::fuzzing::smtp_session`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    mailroom_sidecar::fuzzing::smtp_session(data);
});
