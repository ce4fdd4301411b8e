use super::*;
use rand::{RngExt, SeedableRng, rngs::StdRng};

const MAX: u64 = 1024;

struct Case {
    name: &'static str,
    input: &'static [u8],
    bare: BareLineEndings,
    /// Message bytes, or the verdict when rejected.
    want: Result<&'static [u8], Verdict>,
    /// What follows the terminator (the next command), or None if no terminator is in `input`.
    rest: Option<&'static [u8]>,
}

use BareLineEndings::{Normalize, Reject};

fn ok(name: &'static str, input: &'static [u8], want: &'static [u8], rest: &'static [u8]) -> Case {
    Case {
        name,
        input,
        bare: Reject,
        want: Ok(want),
        rest: Some(rest),
    }
}

fn refused(name: &'static str, input: &'static [u8], want: Verdict, rest: &'static [u8]) -> Case {
    Case {
        name,
        input,
        bare: Reject,
        want: Err(want),
        rest: Some(rest),
    }
}

fn normalized(name: &'static str, input: &'static [u8], want: &'static [u8]) -> Case {
    Case {
        name,
        input,
        bare: Normalize,
        want: Ok(want),
        rest: Some(b""),
    }
}

fn cases() -> Vec<Case> {
    vec![
        ok("empty message right after the DATA line", b".\r\n", b"", b""),
        ok(
            "empty message then the next command",
            b".\r\nQUIT\r\n",
            b"",
            b"QUIT\r\n",
        ),
        ok("plain lines", b"a\r\nb\r\n.\r\n", b"a\r\nb\r\n", b""),
        ok("dot-stuffed line is unstuffed", b"..a\r\n.\r\n", b".a\r\n", b""),
        ok(
            "stuffed lone dot becomes a dot line",
            b"x\r\n..\r\n.\r\n",
            b"x\r\n.\r\n",
            b"",
        ),
        ok("three dots lose exactly one", b"...\r\n.\r\n", b"..\r\n", b""),
        ok("dot inside a line is text", b"a.b\r\n.\r\n", b"a.b\r\n", b""),
        ok(
            "unstuffed leading dot is deleted",
            b".abc\r\n.\r\n",
            b"abc\r\n",
            b"",
        ),
        ok("empty lines kept", b"\r\n\r\n.\r\n", b"\r\n\r\n", b""),
        ok("8-bit bytes pass", b"\xc3\xa9\r\n.\r\n", b"\xc3\xa9\r\n", b""),
        refused(
            "a NUL octet is refused",
            b"a\x00b\r\n.\r\nQUIT\r\n",
            Verdict::Nul,
            b"QUIT\r\n",
        ),
        refused(
            "CRLF NUL dot CRLF is not an end",
            b"a\r\n\x00.\r\nMAIL FROM:<x@evil>\r\n.\r\n",
            Verdict::Nul,
            b"",
        ),
        normalized(
            "a NUL octet is removed under normalize",
            b"a\x00b\r\n\x00x\r\n.\r\n",
            b"ab\r\nx\r\n",
        ),
        normalized(
            "CR NUL under normalize: the CR is bare, the NUL goes",
            b"a\r\x00b\r\n.\r\n",
            b"a\r\nb\r\n",
        ),
        refused(
            "a bare line ending and a NUL: the bare line ending is reported",
            b"a\nb\x00\r\n.\r\n",
            Verdict::BareLineEnding,
            b"",
        ),
        ok("dot-space line is not an end", b". \r\n.\r\n", b" \r\n", b""),
        ok(
            "pipelined commands after the end",
            b"a\r\n.\r\nMAIL FROM:<a@b>\r\n",
            b"a\r\n",
            b"MAIL FROM:<a@b>\r\n",
        ),
        Case {
            name: "no terminator yet",
            input: b"a\r\n.",
            bare: Reject,
            want: Ok(b"a\r\n"),
            rest: None,
        },
        // --- smuggling attempts: never an end, rejected at the real end ---
        refused(
            "LF dot LF is not an end",
            b"a\n.\nMAIL FROM:<x@evil>\r\n.\r\n",
            Verdict::BareLineEnding,
            b"",
        ),
        refused(
            "CRLF dot LF is not an end",
            b"a\r\n.\nRCPT\r\n.\r\n",
            Verdict::BareLineEnding,
            b"",
        ),
        refused(
            "LF dot CRLF is not an end",
            b"a\n.\r\nRCPT\r\n.\r\n",
            Verdict::BareLineEnding,
            b"",
        ),
        refused(
            "dot CR CR LF is not an end",
            b"a\r\n.\r\r\nX\r\n.\r\n",
            Verdict::BareLineEnding,
            b"",
        ),
        refused(
            "CR dot CR is not an end",
            b"a\r.\rX\r\n.\r\n",
            Verdict::BareLineEnding,
            b"",
        ),
        refused(
            "bare CR mid-line rejected",
            b"a\rb\r\n.\r\n",
            Verdict::BareLineEnding,
            b"",
        ),
        refused(
            "bare LF at the very start rejected",
            b"\n.\r\n.\r\n",
            Verdict::BareLineEnding,
            b"",
        ),
        // --- normalisation: each bare CR or LF becomes CRLF, still never an end ---
        normalized(
            "normalize LF dot LF stays inside the message",
            b"a\n.\nb\r\n.\r\n",
            b"a\r\n.\r\nb\r\n",
        ),
        normalized(
            "normalize LF dot CRLF stays inside the message",
            b"a\n.\r\nb\r\n.\r\n",
            b"a\r\n.\r\nb\r\n",
        ),
        normalized(
            "normalize bare CR and CR CR LF",
            b"a\rb\r\r\n.\r\n",
            b"a\r\nb\r\n\r\n",
        ),
        normalized(
            "normalize dot CR CR LF deletes the period",
            b"x\r\n.\r\r\n.\r\n",
            b"x\r\n\r\n\r\n",
        ),
        normalized(
            "normalize CRLF dot LF deletes the period",
            b"x\r\n.\ny\r\n.\r\n",
            b"x\r\n\r\ny\r\n",
        ),
    ]
}

/// Feeds `input` in the given pieces; returns (output, consumed-or-None, receiver).
fn run(
    input: &[u8],
    bare: BareLineEndings,
    max: u64,
    cuts: &[usize],
) -> (Vec<u8>, Option<usize>, DataReceiver) {
    let mut rx = DataReceiver::new(max, bare);
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&input.len())) {
        if let Some(n) = rx.feed(&input[start..end], &mut out) {
            return (out, Some(start + n), rx);
        }
        start = end;
    }
    (out, None, rx)
}

fn check(case: &Case, cuts: &[usize]) {
    let (out, consumed, rx) = run(case.input, case.bare, MAX, cuts);
    let rest = consumed.map(|n| &case.input[n..]);
    assert_eq!(rest, case.rest, "{}: rest (cuts {cuts:?})", case.name);
    match case.want {
        Ok(want) => {
            assert_eq!(out, want, "{}: output (cuts {cuts:?})", case.name);
            if consumed.is_some() {
                assert_eq!(
                    rx.verdict(),
                    Verdict::Complete {
                        size: want.len() as u64
                    },
                    "{}",
                    case.name
                );
            }
        }
        Err(verdict) => assert_eq!(rx.verdict(), verdict, "{}: verdict (cuts {cuts:?})", case.name),
    }
}

#[test]
fn data_table_in_one_piece() {
    for case in cases() {
        check(&case, &[]);
    }
}

#[test]
fn data_table_byte_by_byte() {
    for case in cases() {
        let cuts: Vec<usize> = (1..case.input.len()).collect();
        check(&case, &cuts);
    }
}

#[test]
fn data_table_random_splits() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    for case in cases() {
        for _ in 0..200 {
            let mut cuts: Vec<usize> = (0..rng.random_range(0..6))
                .map(|_| rng.random_range(0..=case.input.len()))
                .collect();
            cuts.sort_unstable();
            check(&case, &cuts);
        }
    }
}

#[test]
fn random_messages_round_trip_through_dot_stuffing() {
    let mut rng = StdRng::seed_from_u64(42);
    let alphabet = b".\r\nab";
    for _ in 0..500 {
        // A message of CRLF lines made from an adversarial alphabet (no bare CR/LF inside lines).
        let mut message = Vec::new();
        for _ in 0..rng.random_range(0..8) {
            for _ in 0..rng.random_range(0..6) {
                let c = alphabet[rng.random_range(0..alphabet.len())];
                if c != b'\r' && c != b'\n' {
                    message.push(c);
                }
            }
            message.extend_from_slice(b"\r\n");
        }
        let mut wire = Vec::new();
        for line in message.split_inclusive(|&b| b == b'\n') {
            if line.starts_with(b".") {
                wire.push(b'.');
            }
            wire.extend_from_slice(line);
        }
        wire.extend_from_slice(b".\r\nNEXT");
        let mut cuts: Vec<usize> = (0..rng.random_range(0..5))
            .map(|_| rng.random_range(0..=wire.len()))
            .collect();
        cuts.sort_unstable();
        let (out, consumed, rx) = run(&wire, Reject, u64::MAX, &cuts);
        assert_eq!(out, message, "wire {:?}", String::from_utf8_lossy(&wire));
        assert_eq!(consumed, Some(wire.len() - 4));
        assert_eq!(
            rx.verdict(),
            Verdict::Complete {
                size: message.len() as u64
            }
        );
    }
}

#[test]
fn random_garbage_never_ends_before_a_real_crlf_dot_crlf() {
    let mut rng = StdRng::seed_from_u64(7);
    let alphabet = b".\r\nx";
    for _ in 0..2000 {
        let len = rng.random_range(0..24);
        let input: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.random_range(0..alphabet.len())])
            .collect();
        for bare in [Reject, Normalize] {
            let (_, consumed, _) = run(&input, bare, u64::MAX, &[]);
            if let Some(n) = consumed {
                // The end is exactly CRLF "." CRLF, where the first CRLF is a real line end
                // (or the DATA line's CRLF at offset 0).
                let prefix = [b"\r\n".as_slice(), &input[..n]].concat();
                assert!(prefix.ends_with(b"\r\n.\r\n"), "{input:?} ended at {n}");
            }
        }
    }
}

#[test]
fn oversized_message_is_discarded_but_the_terminator_is_still_found() {
    let mut input = b"0123456789\r\n".repeat(10);
    input.extend_from_slice(b".\r\nQUIT\r\n");
    let (out, consumed, rx) = run(&input, Reject, 50, &[7, 33, 80]);
    assert_eq!(rx.verdict(), Verdict::TooBig);
    assert!(out.len() <= 50, "stops emitting at the limit");
    assert_eq!(&input[consumed.expect("terminator found")..], b"QUIT\r\n");
}

#[test]
fn message_of_exactly_the_limit_is_accepted() {
    let (out, _, rx) = run(b"abc\r\n.\r\n", Reject, 5, &[]);
    assert_eq!(out, b"abc\r\n");
    assert_eq!(rx.verdict(), Verdict::Complete { size: 5 });
}

#[test]
fn lines_over_998_octets_are_refused_whatever_the_split() {
    struct Long {
        name: &'static str,
        input: Vec<u8>,
        want: Verdict,
    }
    let line = |n: usize| "a".repeat(n);
    let cases = [
        Long {
            name: "998 octets is the limit",
            input: format!("{}\r\n.\r\n", line(998)).into_bytes(),
            want: Verdict::Complete { size: 1000 },
        },
        Long {
            name: "999 octets is one too many",
            input: format!("x\r\n{}\r\n.\r\n", line(999)).into_bytes(),
            want: Verdict::LineTooLong,
        },
        Long {
            name: "the stuffing dot does not count",
            input: format!(".{}\r\n.\r\n", line(998)).into_bytes(),
            want: Verdict::Complete { size: 1000 },
        },
        Long {
            name: "a long last line before the terminator",
            input: format!("{}\r\n.\r\n", line(5000)).into_bytes(),
            want: Verdict::LineTooLong,
        },
        Long {
            name: "too big wins over too long",
            input: format!("{}\r\n.\r\n", line(20_000)).into_bytes(),
            want: Verdict::TooBig,
        },
    ];
    for case in &cases {
        for cuts in [vec![], vec![1], vec![500, 999], vec![997, 998, 999, 1000]] {
            let cuts: Vec<usize> = cuts.into_iter().filter(|&c| c < case.input.len()).collect();
            let (_, consumed, rx) = run(&case.input, Reject, 10_000, &cuts);
            assert_eq!(
                consumed,
                Some(case.input.len()),
                "{}: the real end is found",
                case.name
            );
            assert_eq!(rx.verdict(), case.want, "{} (cuts {cuts:?})", case.name);
        }
    }
}

/// A chunked (BDAT) transfer of `chunks`, finished: the message bytes, or the verdict.
fn chunked(bare: BareLineEndings, chunks: &[&[u8]]) -> Result<Vec<u8>, Verdict> {
    let mut rx = DataReceiver::chunked(MAX, bare);
    let mut out = Vec::new();
    for chunk in chunks {
        assert_eq!(rx.feed(chunk, &mut out), None, "a chunk never ends the message");
    }
    rx.finish(&mut out);
    match rx.verdict() {
        Verdict::Complete { size } => {
            assert_eq!(size, out.len() as u64);
            Ok(out)
        }
        v => Err(v),
    }
}

#[test]
fn bdat_chunks_are_taken_as_they_are_with_no_terminator_and_no_dot_stuffing() {
    let want: &[u8] = b"Subject: x\r\n\r\n.\r\n..two\r\n.\r\nend\r\n";
    assert_eq!(chunked(Reject, &[want]).as_deref(), Ok(want), "one chunk");
    assert_eq!(
        chunked(
            Reject,
            &[b"Subject: x\r", b"\n\r\n.", b"\r\n..two\r\n.\r\nend\r\n"]
        )
        .as_deref(),
        Ok(want),
        "a CRLF split over two chunks is one line end"
    );
    assert_eq!(
        chunked(Reject, &[]).as_deref(),
        Ok(&b""[..]),
        "BDAT 0 LAST: an empty message"
    );
}

#[test]
fn a_bdat_message_without_a_final_crlf_gets_one_and_a_final_bare_cr_is_bare() {
    assert_eq!(
        chunked(Reject, &[b"a: b\r\n\r\nno end"]).as_deref(),
        Ok(&b"a: b\r\n\r\nno end\r\n"[..])
    );
    assert_eq!(
        chunked(Reject, &[b"a: b\r\n\r\nx\r"]),
        Err(Verdict::BareLineEnding)
    );
    assert_eq!(
        chunked(Normalize, &[b"a: b\r\n\r\nx\r"]).as_deref(),
        Ok(&b"a: b\r\n\r\nx\r\n"[..])
    );
}

#[test]
fn bdat_chunks_get_the_same_checks_as_data() {
    assert_eq!(chunked(Reject, &[b"a: b\n\r\n"]), Err(Verdict::BareLineEnding));
    assert_eq!(chunked(Reject, &[b"a: b\r\n\0\r\n"]), Err(Verdict::Nul));
    assert_eq!(
        chunked(Reject, &[&[b'x'; 999], b"\r\n"]),
        Err(Verdict::LineTooLong)
    );
    assert_eq!(
        chunked(Reject, &[&[b'x'; 600], b"\r\n", &[b'y'; 600]]),
        Err(Verdict::TooBig)
    );
    assert_eq!(
        chunked(Normalize, &[b"a: b\n", b"c\rd\r\n"]).as_deref(),
        Ok(&b"a: b\r\nc\r\nd\r\n"[..])
    );
}
