//! A minimal, deterministic ustar writer: directories, regular files and symlinks owned by root
//! with mtime 0, enough for an image layer and an OCI archive (no long names, no extended headers).

use anyhow::{Result, bail, ensure};

const BLOCK: usize = 512;

/// One tar archive being written into memory.
#[derive(Debug, Default)]
pub(crate) struct Tar {
    bytes: Vec<u8>,
}

enum Kind<'a> {
    File(&'a [u8]),
    Dir,
    Symlink(&'a str),
}

// === impl Tar ===

impl Tar {
    /// Adds a directory (`path` without a trailing slash).
    pub(crate) fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.entry(&format!("{path}/"), mode, Kind::Dir)
    }

    /// Adds a regular file.
    pub(crate) fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.entry(path, mode, Kind::File(data))
    }

    /// Adds a symbolic link `path -> target`.
    pub(crate) fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.entry(path, 0o777, Kind::Symlink(target))
    }

    /// The archive, closed with its two zero blocks.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.bytes.extend_from_slice(&[0; 2 * BLOCK]);
        self.bytes
    }

    fn entry(&mut self, path: &str, mode: u32, kind: Kind<'_>) -> Result<()> {
        let mut header = [0u8; BLOCK];
        // ustar splits a long name into prefix (155) + name (100) at a slash.
        let (prefix, name) = match path.len() {
            0..=100 => ("", path),
            _ => match path[..path.len().min(156)].rfind('/') {
                Some(i) if path.len() - i - 1 <= 100 => (&path[..i], &path[i + 1..]),
                _ => bail!("tar path too long for ustar: {path}"),
            },
        };
        put(&mut header[0..100], name.as_bytes())?;
        put_octal(&mut header[100..108], u64::from(mode))?;
        put_octal(&mut header[108..116], 0)?; // uid
        put_octal(&mut header[116..124], 0)?; // gid
        let (size, typeflag, link) = match &kind {
            Kind::File(data) => (data.len() as u64, b'0', ""),
            Kind::Dir => (0, b'5', ""),
            Kind::Symlink(target) => (0, b'2', *target),
        };
        put_octal(&mut header[124..136], size)?;
        put_octal(&mut header[136..148], 0)?; // mtime: reproducible layers
        header[156] = typeflag;
        put(&mut header[157..257], link.as_bytes())?;
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        put(&mut header[265..297], b"root")?;
        put(&mut header[297..329], b"root")?;
        put(&mut header[345..500], prefix.as_bytes())?;
        // The checksum is computed with its own field as eight spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
        let text = format!("{sum:06o}\0 ");
        header[148..156].copy_from_slice(text.as_bytes());
        self.bytes.extend_from_slice(&header);
        if let Kind::File(data) = kind {
            self.bytes.extend_from_slice(data);
            let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
            self.bytes.extend(std::iter::repeat_n(0, pad));
        }
        Ok(())
    }
}

fn put(field: &mut [u8], value: &[u8]) -> Result<()> {
    ensure!(value.len() <= field.len(), "tar header field too long");
    field[..value.len()].copy_from_slice(value);
    Ok(())
}

fn put_octal(field: &mut [u8], value: u64) -> Result<()> {
    let width = field.len() - 1;
    let text = format!("{value:0width$o}");
    ensure!(text.len() == width, "{value} does not fit a tar header field");
    field[..width].copy_from_slice(text.as_bytes());
    field[width] = 0;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// GNU tar (an independent reader) lists what we wrote, with modes, owners and link targets.
    #[test]
    fn gnu_tar_reads_what_we_write() -> Result<()> {
        let mut tar = Tar::default();
        tar.dir("etc", 0o755)?;
        tar.file(
            "etc/passwd",
            0o644,
            b"nonroot:x:65532:65532::/nonexistent:/sbin/nologin\n",
        )?;
        tar.symlink("bin/sh", "busybox")?;
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        tar.file(&long, 0o755, &[7; 700])?;
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("t.tar");
        std::fs::write(&path, tar.finish())?;
        let out = Command::new("tar").arg("-tvf").arg(&path).output()?;
        ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8(out.stdout)?;
        let lines: Vec<&str> = listing.lines().collect();
        assert!(lines[0].starts_with("drwxr-xr-x root/root"), "{listing}");
        assert!(lines[1].starts_with("-rw-r--r-- root/root") && lines[1].ends_with("etc/passwd"));
        assert!(lines[2].ends_with("bin/sh -> busybox"), "{listing}");
        assert!(
            lines[3].contains(" 700 ") && lines[3].ends_with(&long),
            "{listing}"
        );
        Ok(())
    }
}
