//! Streaming DATA receiver: finds the one true end of data (CRLF "." CRLF, RFC 5321 4.1.1.4),
//! undoes dot-stuffing (RFC 5321 4.5.2) and handles bare CR/LF (RFC 5321 2.3.8) and NUL octets
//! so that no "second message" can be smuggled (CVE-2023-51764 family; a next hop that drops
//! NULs would read `CRLF NUL . CRLF` as the end of data). Pure: bytes in, bytes out. The same
//! receiver checks BDAT chunks (RFC 3030), which have no terminator and no dot-stuffing.

use crate::config::BareLineEndings;

/// Where the receiver is inside the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Just after a real CRLF (or the CRLF that ended the DATA command line).
    LineStart,
    /// Inside a line.
    Text,
    /// Saw CR inside a line; the CR is not emitted yet.
    Cr,
    /// Saw "." at the start of a line; not emitted yet.
    Dot,
    /// Saw "." CR at the start of a line; not emitted yet.
    DotCr,
    /// Saw the terminator.
    Done,
}

/// The result of a complete DATA phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The message is acceptable as far as the transfer goes; `size` bytes were emitted.
    Complete {
        /// Bytes of message data (after unstuffing and normalisation).
        size: u64,
    },
    /// More than the size limit (RFC 1870): reply `552 5.3.4`.
    TooBig,
    /// A bare CR or LF with [`BareLineEndings::Reject`]: reply `550 5.5.2`.
    BareLineEnding,
    /// A NUL octet with [`BareLineEndings::Reject`]: reply `550 5.6.0`.
    Nul,
    /// A line longer than [`MAX_LINE_OCTETS`]: reply `550 5.6.0`. Strict next hops refuse such
    /// lines, so taking the message would mean bouncing it later.
    LineTooLong,
}

/// RFC 5322 2.1.1 (and RFC 5321 4.5.3.1.6): a line is at most 998 octets without its CRLF.
pub const MAX_LINE_OCTETS: usize = 998;

/// Incremental DATA receiver. Feed it what the socket gives, in any split; it appends message
/// bytes to the caller's buffer, so memory stays bounded by the caller's chunk size.
///
/// Once the message is known to be rejected (too big, or a bare line ending with `Reject`), it
/// stops emitting but keeps scanning for the terminator: the reply comes only after the real
/// end of data, and nothing after a fake end is ever read as commands.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    state: State,
    bare: BareLineEndings,
    max_bytes: u64,
    size: u64,
    bare_seen: bool,
    nul_seen: bool,
    too_big: bool,
    /// Octets of the current line emitted so far.
    line: usize,
    long_line: bool,
    /// DATA (terminator, dot-stuffing) rather than BDAT chunks.
    dots: bool,
}

// === impl DataReceiver ===

impl DataReceiver {
    /// A receiver positioned just after the CRLF of the `DATA` command line, so that
    /// `DATA\r\n.\r\n` is an empty message.
    pub fn new(max_bytes: u64, bare: BareLineEndings) -> Self {
        Self {
            state: State::LineStart,
            bare,
            max_bytes,
            size: 0,
            bare_seen: false,
            nul_seen: false,
            too_big: false,
            line: 0,
            long_line: false,
            dots: true,
        }
    }

    /// A receiver for the chunks of one BDAT transfer (RFC 3030 2): no terminator and no
    /// dot-stuffing (a leading "." is text), the same line checks; call
    /// [`finish`](Self::finish) after the last chunk.
    pub fn chunked(max_bytes: u64, bare: BareLineEndings) -> Self {
        Self {
            dots: false,
            ..Self::new(max_bytes, bare)
        }
    }

    /// Ends a chunked message: a CR held back at its very end was bare, and a last line
    /// without its CRLF gets one (RFC 5322 2.1: every line ends in CRLF, and the next hop's
    /// DATA needs one before its terminator).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            State::Cr => self.bare_line_ending(out),
            State::Text => self.emit(out, b"\r\n"),
            _ => {}
        }
        self.state = State::LineStart;
    }

    /// Consumes `input`, appending message bytes to `out`. Returns `Some(n)` once the terminator
    /// has been seen, where `n` bytes of `input` (terminator included) belong to the message;
    /// the rest is the next command. Returns `None` when all of `input` was consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Text => {
                    let rest = &input[i..];
                    let n = rest
                        .iter()
                        .position(|&c| c == b'\r' || c == b'\n' || c == 0)
                        .unwrap_or(rest.len());
                    if n > 0 {
                        self.emit(out, &rest[..n]);
                        i += n;
                        continue;
                    }
                    i += 1;
                    if b == 0 {
                        self.nul();
                    } else if b == b'\r' {
                        self.state = State::Cr;
                    } else {
                        // A bare LF never starts a line: the next "." is ordinary text, so
                        // "\n.\n" or "\n.\r\n" can never end DATA.
                        self.bare_line_ending(out);
                    }
                }
                State::LineStart => {
                    i += 1;
                    self.state = State::Text;
                    match b {
                        b'.' if self.dots => self.state = State::Dot,
                        b'\r' => self.state = State::Cr,
                        b'\n' => self.bare_line_ending(out),
                        0 => self.nul(),
                        _ => self.emit(out, &[b]),
                    }
                }
                State::Cr => {
                    i += 1;
                    match b {
                        b'\n' => {
                            self.emit(out, b"\r\n");
                            self.state = State::LineStart;
                        }
                        // The earlier CR was bare; this one is pending in turn.
                        b'\r' => self.bare_line_ending(out),
                        0 => {
                            self.bare_line_ending(out);
                            self.nul();
                            self.state = State::Text;
                        }
                        _ => {
                            self.bare_line_ending(out);
                            self.emit(out, &[b]);
                            self.state = State::Text;
                        }
                    }
                }
                State::Dot => {
                    if b == b'\r' {
                        i += 1;
                        self.state = State::DotCr;
                    } else {
                        // RFC 5321 4.5.2: a leading period followed by more characters is deleted;
                        // the character itself is ordinary text (so ".." gives ".").
                        self.state = State::Text;
                    }
                }
                State::DotCr => {
                    if b == b'\n' {
                        self.state = State::Done;
                        return Some(i + 1);
                    }
                    // ".\r" then anything else: the period is deleted (4.5.2), the CR is bare,
                    // and `b` is read again as text ("\r\n.\r\r\n" is not an end).
                    self.bare_line_ending(out);
                    self.state = State::Text;
                }
                State::Done => return Some(i),
            }
        }
        (self.state == State::Done).then_some(i)
    }

    /// Whether the terminator has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Whether the message will be rejected whatever follows; output is no longer produced.
    pub fn is_rejected(&self) -> bool {
        self.too_big
            || self.long_line
            || ((self.bare_seen || self.nul_seen) && self.bare == BareLineEndings::Reject)
    }

    /// The verdict so far (final once [`is_done`](Self::is_done)).
    pub fn verdict(&self) -> Verdict {
        if self.bare_seen && self.bare == BareLineEndings::Reject {
            Verdict::BareLineEnding
        } else if self.nul_seen && self.bare == BareLineEndings::Reject {
            Verdict::Nul
        } else if self.too_big {
            Verdict::TooBig
        } else if self.long_line {
            Verdict::LineTooLong
        } else {
            Verdict::Complete { size: self.size }
        }
    }

    fn bare_line_ending(&mut self, out: &mut Vec<u8>) {
        self.bare_seen = true;
        if self.bare == BareLineEndings::Normalize {
            self.emit(out, b"\r\n");
        }
    }

    /// A NUL octet: never forwarded. Under `normalize` it is dropped; otherwise the message is
    /// refused.
    fn nul(&mut self) {
        self.nul_seen = true;
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        // Every CRLF is emitted alone (and no other chunk holds CR or LF), so this sees lines.
        if bytes == b"\r\n" {
            self.line = 0;
        } else {
            self.line += bytes.len();
            if self.line > MAX_LINE_OCTETS {
                self.long_line = true;
            }
        }
        self.size = self.size.saturating_add(bytes.len() as u64);
        if self.size > self.max_bytes {
            self.too_big = true;
        }
        if !self.is_rejected() {
            out.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests;
