//! The message as it goes on the wire after `354`: dot-stuffed (RFC 5321 4.5.2) and ended by
//! `CRLF.CRLF` (4.1.1.4), built in one buffer so that it leaves in one write.

use memchr::memmem;

/// `message` dot-stuffed, with its last line ended by CRLF (added when missing) and the
/// terminating `.` line.
pub(crate) fn encode(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 512 + 8);
    let mut rest = message;
    // A line starting with "." gets one more (RFC 5321 4.5.2); only the start of the message and
    // the byte after each LF can start a line, and lettre's codec, which this replaces, treated
    // them so too.
    if rest.first() == Some(&b'.') {
        out.push(b'.');
    }
    let finder = memmem::Finder::new(b"\n.");
    while let Some(at) = finder.find(rest) {
        out.extend_from_slice(&rest[..=at]);
        out.push(b'.');
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
    if !message.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffs_dots_at_line_starts_and_ends_with_one_terminator() {
        struct Case {
            input: &'static [u8],
            want: &'static [u8],
        }
        let cases = [
            Case {
                input: b"a\r\n",
                want: b"a\r\n.\r\n",
            },
            Case {
                input: b"a",
                want: b"a\r\n.\r\n",
            },
            Case {
                input: b"a\r\n\r\n",
                want: b"a\r\n\r\n.\r\n",
            },
            Case {
                input: b".a\r\n.\r\n..\r\nb.c\r\n",
                want: b"..a\r\n..\r\n...\r\nb.c\r\n.\r\n",
            },
            Case {
                input: b"",
                want: b".\r\n",
            },
        ];
        for c in cases {
            assert_eq!(
                String::from_utf8_lossy(&encode(c.input)),
                String::from_utf8_lossy(c.want),
                "{:?}",
                String::from_utf8_lossy(c.input)
            );
        }
    }
}
