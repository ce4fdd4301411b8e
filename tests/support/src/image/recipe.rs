//! Reads an image's recipe from our Dockerfiles, so that the test images and the published ones
//! share one source of truth: the files the build stage writes to `/out/` (its `install -D` and
//! `printf > /out/...` steps), and the final stage's `USER`, `ENV` and `ENTRYPOINT`. A step this
//! parser does not know is an error, so a Dockerfile change cannot drift from the test image.

use anyhow::{Context, Result, bail, ensure};

/// Where the content of one file of the image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `target/release/<name>`: one of our binaries.
    Binary(String),
    /// A file of the build machine (e.g. the CA bundle), at the same path here.
    Host(String),
    /// Text the Dockerfile writes itself.
    Text(String),
}

/// One file of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// Absolute path in the image.
    pub path: String,
    /// Permission bits.
    pub mode: u32,
    /// Where its content comes from.
    pub source: Source,
}

/// The content and run settings of one image, as its Dockerfile declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipe {
    /// The files of the final image, in Dockerfile order.
    pub files: Vec<File>,
    /// `USER` (`uid:gid`).
    pub user: String,
    /// `ENV`, as `KEY=value`.
    pub env: Vec<String>,
    /// `ENTRYPOINT` (exec form).
    pub entrypoint: Vec<String>,
}

// === impl Recipe ===

impl Recipe {
    /// Parses a two-stage Dockerfile: a build stage that writes the image's files to `/out/`,
    /// and `FROM scratch` + `COPY --from=build /out/ /` + `USER`/`ENV`/`ENTRYPOINT`.
    pub fn from_dockerfile(text: &str) -> Result<Self> {
        let instructions = instructions(text);
        let last_from = instructions
            .iter()
            .rposition(|(op, _)| op == "FROM")
            .context("no FROM")?;
        ensure!(
            instructions[last_from].1 == "scratch",
            "the final stage must be FROM scratch"
        );
        let mut files = Vec::new();
        for (op, args) in &instructions[..last_from] {
            if op == "RUN" && args.contains("/out/") {
                for step in args.split("&&").map(str::trim) {
                    if let Some(file) = parse_step(step)? {
                        files.push(file);
                    }
                }
            }
        }
        ensure!(!files.is_empty(), "the build stage writes nothing to /out/");
        let (mut user, mut env, mut entrypoint, mut copied) = (None, Vec::new(), None, false);
        for (op, args) in &instructions[last_from + 1..] {
            match op.as_str() {
                "COPY" if args == "--from=build /out/ /" => copied = true,
                "USER" => user = Some(args.clone()),
                "ENV" => env.push(args.clone()),
                "ENTRYPOINT" => entrypoint = Some(serde_json::from_str(args).context("ENTRYPOINT")?),
                _ => bail!("final stage: unexpected `{op} {args}`"),
            }
        }
        ensure!(copied, "the final stage must COPY --from=build /out/ /");
        Ok(Self {
            files,
            user: user.context("no USER in the final stage")?,
            env,
            entrypoint: entrypoint.context("no ENTRYPOINT in the final stage")?,
        })
    }
}

/// `(INSTRUCTION, arguments)` with comments dropped and continuation lines joined.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                if let Some((op, args)) = current.trim().split_once(char::is_whitespace) {
                    out.push((op.to_uppercase(), args.trim().to_string()));
                }
                current.clear();
            }
        }
    }
    out
}

/// One `&&` step of the build stage: a file it writes to `/out/`, or nothing for the build and
/// the checks.
fn parse_step(step: &str) -> Result<Option<File>> {
    let words: Vec<&str> = step.split_whitespace().collect();
    match words.as_slice() {
        ["cargo", "build", ..] => Ok(None),
        // The static-binary check of the musl build stage.
        ["{", "!", "ldd", ..] => Ok(None),
        ["install", "-D", "-m", mode, src, dst] => {
            let path = dst.strip_prefix("/out").context("install outside /out")?;
            let source = match src.strip_prefix("target/release/") {
                Some(bin) => Source::Binary(bin.to_string()),
                None => Source::Host(src.to_string()),
            };
            Ok(Some(File {
                path: path.to_string(),
                mode: u32::from_str_radix(mode, 8).context("install -m")?,
                source,
            }))
        }
        ["printf", ..] => {
            let (text, dst) = step
                .strip_prefix("printf '")
                .and_then(|s| s.split_once("' > "))
                .context("printf step must be: printf '<text>' > /out/<path>")?;
            let path = dst.trim().strip_prefix("/out").context("printf outside /out")?;
            Ok(Some(File {
                path: path.to_string(),
                mode: 0o644,
                source: Source::Text(text.replace("\\n", "\n")),
            }))
        }
        _ => bail!("build step not understood by the test image builder: `{step}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both published images: exactly the binary, the CA bundle and the non-root user, run as
    /// 65532 with the binary as entrypoint. The test images are built from this same parse.
    #[test]
    fn dockerfiles_declare_binary_ca_bundle_and_nonroot_user() -> Result<()> {
        struct Case {
            dockerfile: &'static str,
            bin: &'static str,
        }
        let cases = [
            Case {
                dockerfile: include_str!("../../../../operator/Dockerfile"),
                bin: "mailroom-operator",
            },
            Case {
                dockerfile: include_str!("../../../../sidecar/Dockerfile"),
                bin: "mailroom-sidecar",
            },
        ];
        for case in cases {
            let recipe = Recipe::from_dockerfile(case.dockerfile)?;
            let want = Recipe {
                files: vec![
                    File {
                        path: format!("/usr/local/bin/{}", case.bin),
                        mode: 0o755,
                        source: Source::Binary(case.bin.into()),
                    },
                    File {
                        path: "/etc/ssl/certs/ca-certificates.crt".into(),
                        mode: 0o644,
                        source: Source::Host("/etc/ssl/certs/ca-certificates.crt".into()),
                    },
                    File {
                        path: "/etc/passwd".into(),
                        mode: 0o644,
                        source: Source::Text(
                            "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n".into(),
                        ),
                    },
                    File {
                        path: "/etc/group".into(),
                        mode: 0o644,
                        source: Source::Text("nonroot:x:65532:\n".into()),
                    },
                ],
                user: "65532:65532".into(),
                env: vec!["PATH=/usr/local/bin".into()],
                entrypoint: vec![format!("/usr/local/bin/{}", case.bin)],
            };
            assert_eq!(recipe, want, "{}", case.bin);
        }
        Ok(())
    }

    #[test]
    fn an_unknown_build_step_is_an_error() {
        let dockerfile = "FROM rust AS build\nRUN install -D -m 0755 target/release/x /out/x \\\n && \
                          strip /out/x\nFROM scratch\nCOPY --from=build /out/ /\nUSER 1\nENTRYPOINT [\"/x\"]\n";
        let err = Recipe::from_dockerfile(dockerfile)
            .expect_err("strip is not a known step")
            .to_string();
        assert!(err.contains("strip /out/x"), "{err}");
    }
}
