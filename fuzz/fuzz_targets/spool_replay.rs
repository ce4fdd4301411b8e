//! Arbitrary bytes as spool segment files, replayed by `Spool::open` (first byte: raw or
//! structured; see `mailroom_sidecar::fuzzing::spool_replay`).
#![no_main]

use std::path::Path;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // tmpfs where there is one: the spool fsyncs, and the directory is made and removed per input.
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    let dir = dir.expect("temp dir for the spool");
    mailroom_sidecar::fuzzing::spool_replay(dir.path(), data);
});
