//! The fuzz targets' entry points on their seed corpora and on every input a fuzzer ever found
//! failing (docs/security.md), as ordinary tests: no fuzzer needed, run by `cargo test`.

use mailroom_sidecar::fuzzing;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

fn files(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no seeds in {}", dir.display());
    files
}

fn name(path: &Path) -> String {
    path.file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// Runs `f` on every seed of `dir`; returns what it said per seed name.
fn each_seed(dir: &str, mut f: impl FnMut(&[u8]) -> usize) -> BTreeMap<String, usize> {
    files(dir)
        .into_iter()
        .map(|p| {
            println!("{}", p.display());
            (name(&p), f(&std::fs::read(&p).expect("seed")))
        })
        .collect()
}

#[test]
fn smtp_session_seeds_hold_the_invariants() {
    let committed = each_seed("fuzz/seeds/smtp_session", fuzzing::smtp_session);
    // The seeds do reach the spool: real clients' mail is accepted, hostile transcripts are not.
    for (seed, want) in [
        ("smtplib", 1),
        ("smtplib.split", 1),
        ("smtplib_two_messages", 2),
        ("curl", 1),
        ("smuggling", 0),
        ("smuggling.split", 1),
        ("spoofed_from", 0),
        ("foreign_sender", 0),
        ("too_big", 0),
    ] {
        assert_eq!(committed[seed], want, "messages committed by seed {seed}");
    }
}

#[test]
fn golden_configs_hold_the_config_invariants() {
    for f in files("tests/fixtures/sidecar-config") {
        println!("{}", f.display());
        fuzzing::config_parse(&std::fs::read_to_string(&f).expect("golden config"));
    }
}

#[test]
fn spool_replay_seeds_hold_the_invariants() {
    let queued = each_seed("fuzz/seeds/spool_replay", |bytes| {
        let dir = tempfile::tempdir().expect("tempdir");
        fuzzing::spool_replay(dir.path(), bytes)
    });
    // The sidecar's own segment delivered both messages (Done records): nothing is left queued.
    assert_eq!(queued["sidecar-0000000000000001"], 0);
    assert_eq!(queued["ops-commit"], 1);
}

/// Found by `spool_replay` (structured mode): a message whose chunks span two segments and whose
/// Commit record states a length its chunks do not have (one byte more, and with the length
/// bits the generator now sets, 4 TiB more). Replay defers the check of multi-segment messages
/// to the first read, which checked the CRC only, so the read returned a body shorter than
/// committed; with the huge length it asked the allocator for 4 TiB and aborted the process.
/// Now the read fails with `InvalidData`, which delivery counts as quarantined and sets aside.
#[test]
fn multi_segment_message_with_a_wrong_length_fails_its_read_instead_of_aborting() {
    let input = b"\x01\x00\x02\x03abc\x05\x00\x00\x02\x02de\x01\x02\x05\x04\x02\x04si\x02\x03\x03\x02\x02\x00\x01\x02\x01";
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(
        fuzzing::spool_replay(dir.path(), input),
        1,
        "the message is still queued"
    );
}
