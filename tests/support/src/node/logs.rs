//! The kubelet's container log files (CRI format), read back for the tests: the kubelet removes
//! them with the pod, so tests read them while it runs or goes.

use std::path::{Path, PathBuf};

/// `(time, text)` of every line container `container` of pod `namespace/pod` wrote, oldest
/// restart first, from the kubelet's `podLogsDir` `dir`.
pub(super) fn lines(dir: &Path, namespace: &str, pod: &str, container: &str) -> Vec<(String, String)> {
    let prefix = format!("{namespace}_{pod}_");
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .flat_map(|e| {
            std::fs::read_dir(e.path().join(container))
                .into_iter()
                .flatten()
                .flatten()
        })
        .map(|e| e.path())
        .collect();
    files.sort_by_key(|p| {
        let stem = p
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        stem.parse::<u32>().unwrap_or(u32::MAX)
    });
    let mut lines = Vec::new();
    for file in files {
        for line in std::fs::read_to_string(&file).unwrap_or_default().lines() {
            // <RFC 3339 time> <stdout|stderr> <F|P> <text>
            let mut parts = line.splitn(4, ' ');
            let time = normalize_time(parts.next().unwrap_or_default());
            let text = parts.nth(2).unwrap_or_default().to_string();
            lines.push((time, text));
        }
    }
    lines
}

/// An RFC 3339 UTC time with its fraction padded to nanoseconds (the kubelet trims zeros), so
/// that times compare as strings.
fn normalize_time(time: &str) -> String {
    let time = time.trim_end_matches('Z');
    let (secs, frac) = time.split_once('.').unwrap_or((time, ""));
    format!("{secs}.{frac:0<9}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_compare_after_normalizing() {
        let a = normalize_time("2026-12-02T19:30:01.5Z");
        let b = normalize_time("2026-12-02T19:30:01.123456789Z");
        assert_eq!(a, "2026-12-02T19:30:01.500000000Z");
        assert!(b < a);
        assert_eq!(
            normalize_time("2026-12-02T19:30:01Z"),
            "2026-12-02T19:30:01.000000000Z"
        );
    }
}
