//! OCI images for the test node, written without a container daemon or registry: one
//! uncompressed layer, a config and a manifest, packed as an OCI archive for
//! `ctr images import`. Our images follow the Dockerfiles' recipe ([`Recipe`]); the sandbox
//! (`pause`) and app (busybox) images are ours too.
//!
//! The published images link against musl (Alpine's build stage); that target cannot be
//! installed on our machines, so the test images carry our glibc debug binary plus exactly the
//! shared libraries `ldd` names for it, at the same paths. Everything else is the recipe's.

mod recipe;
mod tar;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use recipe::{File, Recipe, Source};

use self::tar::Tar;

/// Reference of the sandbox image (the `.test` TLD is reserved: nothing is ever pulled from it).
pub const PAUSE: &str = "mailroom.test/pause:1";
/// Reference of the app image: busybox-static, with `sh` and `nc`.
pub const APP: &str = "mailroom.test/app:1";
/// Reference of the sidecar image built from `sidecar/Dockerfile`'s recipe.
pub const SIDECAR: &str = "mailroom.test/mailroom-sidecar:dev";
/// Reference of the operator image built from `operator/Dockerfile`'s recipe.
pub const OPERATOR: &str = "mailroom.test/mailroom-operator:dev";

/// The non-root user of every image of ours.
const PASSWD: &str = "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n";

/// An image being assembled: the files of its one layer and its run settings.
#[derive(Debug)]
pub struct Image {
    reference: String,
    layer: Tar,
    dirs: BTreeSet<String>,
    user: String,
    env: Vec<String>,
    entrypoint: Vec<String>,
}

// === impl Image ===

impl Image {
    /// An empty image that runs `entrypoint` as `user`.
    pub fn new(reference: &str, user: &str, entrypoint: &[&str]) -> Self {
        Self {
            reference: reference.into(),
            layer: Tar::default(),
            dirs: BTreeSet::new(),
            user: user.into(),
            env: vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()],
            entrypoint: entrypoint.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// The image a Dockerfile's recipe describes, with our binaries taken from `bin_dir` (and the
    /// shared libraries they need, see the module docs).
    pub fn from_recipe(reference: &str, recipe: &Recipe, bin_dir: &Path) -> Result<Self> {
        let mut image = Self::new(reference, &recipe.user, &[]);
        image.env = recipe.env.clone();
        image.entrypoint = recipe.entrypoint.clone();
        for file in &recipe.files {
            match &file.source {
                Source::Binary(name) => {
                    let path = bin_dir.join(name);
                    image.add_file(&file.path, file.mode, &read(&path)?)?;
                    image.add_libraries(&path)?;
                }
                Source::Host(host) => image.add_file(&file.path, file.mode, &read(Path::new(host))?)?,
                Source::Text(text) => image.add_file(&file.path, file.mode, text.as_bytes())?,
            }
        }
        Ok(image)
    }

    /// The sandbox image: the static `pause` binary prepared by `tests/env/prepare.sh`.
    pub fn pause(pause: &Path) -> Result<Self> {
        let mut image = Self::new(PAUSE, "65535:65535", &["/pause"]);
        image.add_file("/pause", 0o755, &read(pause)?)?;
        Ok(image)
    }

    /// The app image: Debian's static busybox with `sh`, `nc` and a few tools, run as 65532.
    pub fn app(busybox: &Path) -> Result<Self> {
        let mut image = Self::new(APP, "65532:65532", &["/bin/sh"]);
        image.add_file("/bin/busybox", 0o755, &read(busybox)?)?;
        for tool in [
            "sh", "nc", "cat", "echo", "printf", "sleep", "id", "grep", "date", "ls", "kill",
        ] {
            image.add_symlink(&format!("/bin/{tool}"), "busybox")?;
        }
        image.add_file("/etc/passwd", 0o644, PASSWD.as_bytes())?;
        Ok(image)
    }

    /// Adds a regular file (and its parent directories).
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        let rel = self.parents(path)?;
        self.layer.file(&rel, mode, data)
    }

    /// Adds a symbolic link (and its parent directories).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> Result<()> {
        let rel = self.parents(path)?;
        self.layer.symlink(&rel, target)
    }

    /// The shared libraries and loader `ldd` names for `binary`, at the paths it names them by.
    fn add_libraries(&mut self, binary: &Path) -> Result<()> {
        let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if text.contains("statically linked") || text.contains("not a dynamic executable") {
            return Ok(());
        }
        ensure!(out.status.success(), "ldd {} failed", binary.display());
        for lib in ldd_paths(&text)? {
            self.add_file(&lib, 0o755, &read(Path::new(&lib))?)?;
        }
        Ok(())
    }

    /// Adds the missing parent directories of absolute `path`; returns it relative to `/`.
    fn parents(&mut self, path: &str) -> Result<String> {
        let rel = path
            .strip_prefix('/')
            .with_context(|| format!("{path} is not absolute"))?;
        let mut dir = String::new();
        for part in rel.split('/').rev().skip(1).collect::<Vec<_>>().into_iter().rev() {
            dir = if dir.is_empty() {
                part.to_string()
            } else {
                format!("{dir}/{part}")
            };
            if self.dirs.insert(dir.clone()) {
                self.layer.dir(&dir, 0o755)?;
            }
        }
        Ok(rel.to_string())
    }

    /// Writes the image as an OCI archive (`oci-layout`, `index.json`, `blobs/sha256/*`) to
    /// `path`, named by `io.containerd.image.name` so that `ctr images import` tags it. Returns
    /// the manifest digest.
    pub fn write_archive(self, path: &Path) -> Result<String> {
        let layer = self.layer.finish();
        let layer_digest = digest(&layer);
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"User": self.user, "Env": self.env, "Entrypoint": self.entrypoint},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        });
        let config = serde_json::to_vec(&config)?;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", &config),
            // Uncompressed, so the layer digest is its diff ID.
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar", &layer)],
        });
        let manifest = serde_json::to_vec(&manifest)?;
        let tag = self
            .reference
            .rsplit_once(':')
            .context("reference without a tag")?
            .1;
        let mut entry = descriptor("application/vnd.oci.image.manifest.v1+json", &manifest);
        entry["platform"] = json!({"architecture": "amd64", "os": "linux"});
        entry["annotations"] = json!({
            "io.containerd.image.name": self.reference,
            "org.opencontainers.image.ref.name": tag,
        });
        let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                           "manifests": [entry]});
        let mut archive = Tar::default();
        archive.file("oci-layout", 0o644, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        archive.file("index.json", 0o644, &serde_json::to_vec(&index)?)?;
        archive.dir("blobs", 0o755)?;
        archive.dir("blobs/sha256", 0o755)?;
        for blob in [&layer, &config, &manifest] {
            let name = digest(blob).replace("sha256:", "blobs/sha256/");
            archive.file(&name, 0o644, blob)?;
        }
        std::fs::write(path, archive.finish()).with_context(|| format!("writing {}", path.display()))?;
        Ok(digest(&manifest))
    }
}

/// Every image the node tests use, written as archives into `dir`: our two from their
/// Dockerfiles' recipes (binaries from `bin_dir`), the app and the sandbox image. Returns the
/// archive paths.
pub fn build_all(dir: &Path, bin_dir: &Path, pause: &Path, busybox: &Path) -> Result<Vec<PathBuf>> {
    let repo = crate::stack::repo();
    let mut archives = Vec::new();
    for (reference, dockerfile) in [(SIDECAR, "sidecar/Dockerfile"), (OPERATOR, "operator/Dockerfile")] {
        let text = read(&repo.join(dockerfile))?;
        let recipe = Recipe::from_dockerfile(std::str::from_utf8(&text)?)
            .with_context(|| format!("reading the image recipe of {dockerfile}"))?;
        archives.push((reference, Image::from_recipe(reference, &recipe, bin_dir)?));
    }
    archives.push((APP, Image::app(busybox)?));
    archives.push((PAUSE, Image::pause(pause)?));
    let mut paths = Vec::new();
    for (reference, image) in archives {
        let name = reference
            .rsplit('/')
            .next()
            .unwrap_or(reference)
            .replace(':', "_");
        let path = dir.join(format!("{name}.oci.tar"));
        image.write_archive(&path)?;
        paths.push(path);
    }
    Ok(paths)
}

/// The absolute paths in `ldd` output (`libc.so.6 => /lib/.../libc.so.6 (0x...)` and the loader).
fn ldd_paths(text: &str) -> Result<Vec<String>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once(" => ") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        match path {
            Some("not") => bail!("ldd: a library is missing: {line}"),
            Some(p) if p.starts_with('/') => paths.push(p.to_string()),
            _ => {} // linux-vdso.so.1: provided by the kernel
        }
    }
    Ok(paths)
}

fn descriptor(media_type: &str, blob: &[u8]) -> serde_json::Value {
    json!({"mediaType": media_type, "digest": digest(blob), "size": blob.len()})
}

fn digest(blob: &[u8]) -> String {
    let hash = Sha256::digest(blob);
    format!(
        "sha256:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths_are_the_libraries_and_the_loader() -> Result<()> {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            ldd_paths(text)?,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
        );
        assert!(ldd_paths("\tlibfoo.so => not found\n").is_err());
        Ok(())
    }

    /// The archive is a valid OCI layout: its index names the manifest by digest, and the
    /// manifest's blobs are in it with the sizes it claims.
    #[test]
    fn archive_blobs_match_their_descriptors() -> Result<()> {
        let mut image = Image::new(APP, "65532:65532", &["/bin/sh"]);
        image.add_file("/etc/passwd", 0o644, PASSWD.as_bytes())?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("app.tar");
        let manifest_digest = image.write_archive(&path)?;
        let out = Command::new("tar")
            .arg("-xf")
            .arg(&path)
            .arg("-C")
            .arg(dir.path())
            .output()?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let blob = |d: &str| std::fs::read(dir.path().join(d.replace("sha256:", "blobs/sha256/")));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json"))?)?;
        assert_eq!(index["manifests"][0]["digest"], manifest_digest.as_str());
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            APP
        );
        let manifest: serde_json::Value = serde_json::from_slice(&blob(&manifest_digest)?)?;
        for d in [&manifest["config"], &manifest["layers"][0]] {
            let data = blob(d["digest"].as_str().context("digest")?)?;
            assert_eq!(d["size"], data.len());
            assert_eq!(d["digest"], digest(&data).as_str());
        }
        Ok(())
    }
}
