//! The node's cgroups (v1, `cgroupfs` driver): made before the kubelet starts (its cgroup root
//! must exist), emptied and removed when the node stops.

use std::path::PathBuf;

use anyhow::{Context, Result};

/// Makes cgroup `path` in every cgroup v1 hierarchy (the kubelet needs its root to exist).
pub(crate) fn make(path: &str) -> Result<()> {
    for hierarchy in hierarchies()? {
        let dir = hierarchy.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating cgroup {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(value) = std::fs::read_to_string(dir.parent().context("parent")?.join(file)) {
                std::fs::write(dir.join(file), value.trim())?;
            }
        }
    }
    Ok(())
}

/// Every process in cgroup `path` or below (pids hierarchy).
pub(super) fn pids(path: &str) -> Vec<String> {
    let mut pids = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup/pids").join(path.trim_start_matches('/'))];
    while let Some(dir) = stack.pop() {
        pids.extend(
            std::fs::read_to_string(dir.join("cgroup.procs"))
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from),
        );
        stack.extend(
            std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir()),
        );
    }
    pids
}

/// Removes cgroup `path` and everything below it, deepest first, in every v1 hierarchy.
pub(super) fn remove(path: &str) {
    for hierarchy in hierarchies().unwrap_or_default() {
        let mut dirs = Vec::new();
        let mut stack = vec![hierarchy.join(path.trim_start_matches('/'))];
        while let Some(dir) = stack.pop() {
            if dir.is_dir() {
                stack.extend(
                    std::fs::read_dir(&dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|e| e.path()),
                );
                dirs.push(dir);
            }
        }
        for dir in dirs.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn hierarchies() -> Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir("/sys/fs/cgroup")?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|h| h.join("cgroup.procs").is_file() && !h.join("cgroup.controllers").exists())
        .collect())
}
