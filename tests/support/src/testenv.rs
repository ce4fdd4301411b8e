//! Finds the test environment that `tests/env/prepare.sh` builds: control-plane binaries, helm,
//! prometheus, promtool and the Python venv, under `$XDG_CACHE_HOME/mailroom/testenv/<version>-<hash>`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

/// Overrides the directory holding the binaries (`prepare.sh` writes it to `env.sh`).
pub const ENV_BIN: &str = "MAILROOM_TESTENV_BIN";
/// Overrides the test environment directory (the parent of `bin/` and `venv/`).
pub const ENV_DIR: &str = "MAILROOM_TESTENV_DIR";
/// Overrides the Python interpreter (default `$MAILROOM_TESTENV_DIR/venv/bin/python`).
pub const ENV_PYTHON: &str = "MAILROOM_TESTENV_PYTHON";

/// Set to `1` to keep control-plane logs even when every test passed (they are always kept when a
/// test panics).
pub const ENV_KEEP_LOGS: &str = "MAILROOM_TESTENV_KEEP_LOGS";

/// What to do when something is missing; every "not found" error ends with it.
pub const PREPARE_HINT: &str =
    "run `make testenv` (tests/env/prepare.sh) to build the control plane binaries";

/// The pinned versions; the cache directory name hashes exactly these bytes, as `prepare.sh` does.
const VERSIONS_ENV: &str = include_str!("../../env/versions.env");

/// The value of `key` in `tests/env/versions.env` (e.g. `HELM_VERSION` -> `v3.22.0`).
pub fn pinned(key: &str) -> Option<&'static str> {
    VERSIONS_ENV.lines().find_map(|line| {
        let (k, v) = line.trim().split_once('=')?;
        (k == key).then(|| v.trim_matches('"'))
    })
}

/// The test environment directory: `$MAILROOM_TESTENV_DIR`, else the default `prepare.sh` uses.
pub fn dir() -> Result<PathBuf> {
    if let Some(dir) = env::var_os(ENV_DIR).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    // Same rule as the shell's ${XDG_CACHE_HOME:-$HOME/.cache}: empty counts as unset.
    let cache = match env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(cache) => PathBuf::from(cache),
        None => PathBuf::from(env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?)
            .join(".cache"),
    };
    let k8s = pinned("KUBERNETES_VERSION").context("versions.env has no KUBERNETES_VERSION")?;
    Ok(cache
        .join("mailroom/testenv")
        .join(format!("{k8s}-{}", versions_hash())))
}

/// The directory holding the binaries: `$MAILROOM_TESTENV_BIN`, else `dir()/bin`.
pub fn bin_dir() -> Result<PathBuf> {
    match env::var_os(ENV_BIN).filter(|v| !v.is_empty()) {
        Some(bin) => Ok(PathBuf::from(bin)),
        None => Ok(dir()?.join("bin")),
    }
}

/// The path of one cached binary (`kube-apiserver`, `etcd`, `helm`, `promtool`, ...), which must exist.
pub fn bin(name: &str) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    ensure_file(&path, name)?;
    Ok(path)
}

/// A `Command` for a cached binary.
pub fn command(name: &str) -> Result<Command> {
    Ok(Command::new(bin(name)?))
}

/// The venv's Python interpreter (with aiosmtpd, dkimpy, cryptography and dnspython installed).
pub fn python() -> Result<PathBuf> {
    let path = match env::var_os(ENV_PYTHON).filter(|v| !v.is_empty()) {
        Some(python) => PathBuf::from(python),
        None => dir()?.join("venv/bin/python"),
    };
    ensure_file(&path, "python (test venv)")?;
    Ok(path)
}

fn ensure_file(path: &Path, what: &str) -> Result<()> {
    if !path.is_file() {
        bail!("{what} not found at {}: {PREPARE_HINT}", path.display());
    }
    Ok(())
}

fn versions_hash() -> String {
    let digest = Sha256::digest(VERSIONS_ENV.as_bytes());
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_reads_plain_and_quoted_values() {
        assert!(pinned("KUBERNETES_VERSION").is_some_and(|v| v.starts_with("v1.")));
        assert!(pinned("PYTHON_REQUIREMENTS").is_some_and(|v| !v.contains('"')));
        assert_eq!(pinned("NO_SUCH_KEY"), None);
    }

    #[test]
    fn versions_hash_is_twelve_hex_digits() {
        let hash = versions_hash();
        assert_eq!(hash.len(), 12);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
