//! `layout/hot.ld` names the functions the sidecar runs, so that release builds place them together
//! (sidecar/build.rs). Names drift as the code changes; a pattern that matches nothing only loses
//! its function's place, so the build never breaks, but the memory the layout saves drains away
//! unnoticed. This test fails first: it checks the patterns against this build's symbols.

use std::{collections::HashSet, path::Path, process::Command};

/// Share of the patterns that must still name a function of the binary.
const MIN_MATCHED: f64 = 0.9;

/// Each pattern's name: a Rust function's mangled path before its hash, or a C function's name.
fn patterns() -> Vec<(String, bool)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("layout/hot.ld");
    let text = std::fs::read_to_string(&script).expect("layout/hot.ld (make layout writes it)");
    assert!(
        text.contains("INSERT BEFORE .text;"),
        "hot.ld must only insert into the default layout"
    );
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("*(.text.")?.split(' ').next())
        .map(|p| match p.strip_suffix("17h*") {
            Some(prefix) => (prefix.to_string(), true),
            None => (p.to_string(), false),
        })
        .collect()
}

/// Defined function symbols of `binary`, by `nm` (binutils).
fn symbols(binary: &str) -> Vec<String> {
    let out = Command::new("nm")
        .args(["--defined-only", binary])
        .output()
        .expect("nm not found: apt-get install binutils");
    assert!(out.status.success(), "nm {binary} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [_, kind, name] if kind.eq_ignore_ascii_case("t") => Some(name.to_string()),
            _ => None,
        })
        .collect()
}

#[test]
fn hot_functions_are_still_named_by_the_layout() {
    let patterns = patterns();
    assert!(
        patterns.len() > 1000,
        "hot.ld lists {} functions: regenerate it with `make layout`",
        patterns.len()
    );
    let symbols = symbols(env!("CARGO_BIN_EXE_mailroom-sidecar"));
    let exact: HashSet<&str> = symbols.iter().map(String::as_str).collect();
    // A Rust pattern matches every instance (hash) of its path.
    let paths: HashSet<&str> = symbols
        .iter()
        .filter_map(|s| s.rfind("17h").map(|i| &s[..i]))
        .collect();
    let missing: Vec<&str> = patterns
        .iter()
        .filter(|(name, rust)| {
            if *rust {
                !paths.contains(name.as_str())
            } else {
                !exact.contains(name.as_str())
            }
        })
        .map(|(name, _)| name.as_str())
        .collect();
    let matched = 1.0 - missing.len() as f64 / patterns.len() as f64;
    assert!(
        matched >= MIN_MATCHED,
        "only {:.0} % of layout/hot.ld's {} functions are still in the sidecar; regenerate it with \
         `make layout`. Some that are gone: {:?}",
        matched * 100.0,
        patterns.len(),
        &missing[..missing.len().min(10)]
    );
}
