//! The sidecar's floors (docs/architecture.md): a module imports only from its own floor or below,
//! and the two folders of the same floor (`inbound/`, `outbound/`) never import each other. This
//! test reads every file under `src/` and fails on an import that points up a floor or across, so
//! the layering cannot rot silently.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

/// Top-level module -> floor. A module missing here fails the test: place it when you add it.
const FLOORS: &[(&str, u8)] = &[
    // The contract crate's re-exports and the ground-floor vocabulary.
    ("config", 0),
    ("address", 0),
    ("settings", 0),
    ("message", 0),
    ("shutdown", 0),
    ("sync", 0),
    ("memory", 0),
    ("rate", 0),
    // Services over the vocabulary.
    ("metrics", 1),
    ("dkim", 1),
    ("dsn", 1),
    ("admin", 1),
    // Durable storage.
    ("spool", 2),
    // The two edges: SMTP in, SMTP out.
    ("inbound", 3),
    ("outbound", 3),
    // The delivery scheduler and decision.
    ("queue", 4),
    // Wiring.
    ("reload", 5),
    ("app", 5),
    ("delivery_runtime", 5),
    // The queue API server and the `queue`/`quarantine` subcommands that call it.
    ("control", 5),
    // Shadow copies: the replicated accept and the hub's owner checks, over the spool, the queue's
    // delivery generation and the outbound connections.
    ("shadow", 5),
    // Test doubles and fuzzing entry points (behind the `testing` feature): may use anything.
    ("fuzzing", 9),
    ("testing", 9),
];

/// The floor of the two edges, which must not know each other.
const EDGES: u8 = 3;

fn floor(module: &str) -> Option<u8> {
    FLOORS.iter().find(|(m, _)| *m == module).map(|(_, f)| *f)
}

/// Every `crate::<name>` this source refers to: in `use crate::{a, b::c}` groups and in paths.
fn crate_refs(source: &str) -> Vec<String> {
    let code: String = source
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut refs = Vec::new();
    let mut rest = code.as_str();
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // A use group: collect the top-level names up to the matching brace.
            let (mut depth, mut name, mut end) = (1usize, String::new(), group.len());
            for (i, ch) in group.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            end = i;
                            break;
                        }
                    }
                    ',' if depth == 1 => {
                        refs.push(std::mem::take(&mut name));
                        continue;
                    }
                    _ => {}
                }
                if depth == 1 {
                    name.push(ch);
                }
            }
            refs.push(name);
            rest = &group[end..];
        } else {
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            refs.push(name);
            rest = after;
        }
    }
    refs.into_iter()
        .filter_map(|r| {
            let top = r.trim().split("::").next().unwrap_or("").trim().to_string();
            (!top.is_empty() && top != "self").then_some(top)
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_import_points_up_a_floor_or_across_the_edges() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 40,
        "found only {} files under {}",
        files.len(),
        src.display()
    );
    let mut violations = Vec::new();
    let mut seen = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).expect("under src");
        let first = rel.components().next().expect("a component");
        let module = first
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if matches!(module.as_str(), "lib" | "main") {
            continue;
        }
        let Some(own) = floor(&module) else {
            violations.push(format!(
                "{}: module `{module}` has no floor in FLOORS",
                rel.display()
            ));
            continue;
        };
        let source = std::fs::read_to_string(file).expect("read source");
        for target in crate_refs(&source) {
            *seen.entry((module.clone(), target.clone())).or_insert(0) += 1;
            // Unit tests (`tests.rs` files) may use the test doubles from any floor.
            let is_test = file.file_name().is_some_and(|n| n == "tests.rs");
            if target == module || (is_test && target == "testing") {
                continue;
            }
            match floor(&target) {
                None => violations.push(format!("{}: imports `crate::{target}`, which has no floor", rel.display())),
                Some(f) if f > own => violations.push(format!(
                    "{}: floor {own} `{module}` imports `crate::{target}` from floor {f} above it",
                    rel.display()
                )),
                Some(f) if f == own && own == EDGES => violations.push(format!(
                    "{}: `{module}` imports its sibling `crate::{target}` on floor {f}; move the shared part down",
                    rel.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(
        violations.is_empty(),
        "layering violations:\n  {}",
        violations.join("\n  ")
    );
    // The scan must actually see imports, or the test would pass vacuously.
    for edge in [
        ("queue", "outbound"),
        ("spool", "message"),
        ("app", "queue"),
        ("inbound", "message"),
    ] {
        let key = (edge.0.to_string(), edge.1.to_string());
        assert!(
            seen.contains_key(&key),
            "expected `{}` to import `crate::{}`",
            edge.0,
            edge.1
        );
    }
}

#[test]
fn the_scanner_sees_groups_paths_and_comments() {
    let refs = crate_refs(
        "use crate::{\n    a::{b, c},\n    d,\n};\n// crate::commented\nfn f() { crate::e::g(); }\nuse crate::h::i;",
    );
    assert_eq!(refs, ["a", "d", "e", "h"]);
}
