//! The sandboxed run's output: passed through line by line as it comes, while the failure messages
//! of failed scenarios are kept, so the final error names what failed and why even when only the
//! end of a long log is read (CI shows an excerpt).

use std::{
    io::{BufRead, BufReader, Read, Write},
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

/// Lines kept of one failure message (the message itself, not the backtrace).
const FAILURE_LINES: usize = 12;

/// Failure messages kept in all; later ones are only counted.
const MAX_FAILURES: usize = 8;

/// What a run's output held: each failure message, named by its test where the output says.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Failures {
    pub kept: Vec<String>,
    pub more: usize,
}

impl Failures {
    /// One block for an error message; empty when nothing failed.
    pub fn summary(&self) -> String {
        let mut out = self.kept.join("\n\n");
        if self.more > 0 {
            out.push_str(&format!("\n\n(and {} more failures)", self.more));
        }
        out
    }
}

/// Picks failure messages out of lines of test output: a panic (`thread '…' panicked at`) or a
/// test's returned error (`Error: …`), up to its backtrace, a `note:` line, or the harness's next
/// line. A returned error does not name its test, so it is named by the `test … FAILED` line that
/// follows it.
#[derive(Default)]
pub struct FailureScanner {
    current: Option<Vec<String>>,
    unnamed: Vec<usize>,
    failures: Failures,
}

impl FailureScanner {
    pub fn line(&mut self, line: &str) {
        let starts =
            (line.starts_with("thread '") && line.contains(" panicked at ")) || line.starts_with("Error: ");
        let ends = starts
            || line.to_ascii_lowercase().starts_with("stack backtrace:")
            || line.starts_with("note: ")
            || line.starts_with("test ")
            || line.starts_with("failures:");
        if ends {
            self.close();
        }
        if let Some(name) = line
            .strip_prefix("test ")
            .filter(|l| l.ends_with("FAILED"))
            .and_then(|l| l.split(" ... ").next())
        {
            for i in self.unnamed.drain(..) {
                self.failures.kept[i].insert_str(0, &format!("{name}: "));
            }
        }
        if starts {
            self.current = Some(vec![line.to_string()]);
        } else if let Some(lines) = &mut self.current
            && lines.len() < FAILURE_LINES
        {
            lines.push(line.to_string());
        }
    }

    fn close(&mut self) {
        if let Some(lines) = self.current.take() {
            if self.failures.kept.len() < MAX_FAILURES {
                if lines[0].starts_with("Error: ") {
                    self.unnamed.push(self.failures.kept.len());
                }
                self.failures.kept.push(lines.join("\n").trim_end().to_string());
            } else {
                self.failures.more += 1;
            }
        }
    }

    pub fn finish(mut self) -> Failures {
        self.close();
        self.failures
    }
}

/// Copies `from` to `to` line by line, scanning each line, on a thread of its own.
pub fn tee(
    from: impl Read + Send + 'static,
    mut to: impl Write + Send + 'static,
    scanner: Arc<Mutex<FailureScanner>>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(from);
        let mut buf = Vec::new();
        while matches!(reader.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
            let _ = to.write_all(&buf);
            let _ = to.flush();
            let line = String::from_utf8_lossy(&buf);
            scanner
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .line(line.trim_end_matches(['\r', '\n']));
            buf.clear();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(text: &str) -> Failures {
        let mut s = FailureScanner::default();
        text.lines().for_each(|l| s.line(l));
        s.finish()
    }

    #[test]
    fn keeps_each_panic_and_returned_error_without_the_backtrace() {
        let out = scan(
            "test a ... node: pod ready\n\
             thread 'a' (12) panicked at tests/node/main.rs:9:5:\n\
             no delivery in 60 s\n\
             last status: queued\n\
             stack backtrace:\n   0: frame\n\
             FAILED\n\
             test b ... ok\n\
             thread 'c' (13) panicked at x.rs:1:1:\n\
             boom\n\
             note: run with `RUST_BACKTRACE=1`\n\
             Error: no pod Ready in 120 s\n\
             \n\
             Caused by:\n    timed out\n\
             Stack backtrace:\n   0: anyhow\n\
             test d ... FAILED\n",
        );
        assert_eq!(
            out.kept,
            [
                "thread 'a' (12) panicked at tests/node/main.rs:9:5:\nno delivery in 60 s\nlast status: queued",
                "thread 'c' (13) panicked at x.rs:1:1:\nboom",
                "d: Error: no pod Ready in 120 s\n\nCaused by:\n    timed out",
            ]
        );
        assert_eq!(out.more, 0);
    }

    #[test]
    fn long_messages_and_many_failures_are_bounded() {
        let mut text = String::new();
        for i in 0..10 {
            text.push_str(&format!("thread 't{i}' panicked at f.rs:1:1:\n"));
            for j in 0..50 {
                text.push_str(&format!("line {j}\n"));
            }
        }
        let out = scan(&text);
        assert_eq!(out.kept.len(), MAX_FAILURES);
        assert_eq!(out.more, 10 - MAX_FAILURES);
        assert!(out.kept.iter().all(|p| p.lines().count() == FAILURE_LINES));
        assert!(out.summary().ends_with("(and 2 more failures)"));
        assert_eq!(scan("test a ... ok\n").summary(), "");
    }
}
