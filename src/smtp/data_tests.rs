//! DATA content: dot-unstuffing, line ends and the end of data, fed in pieces of every size.

use super::*;

/// Feeds `input` in pieces of `piece` bytes; returns the content and whether the end was found, with what
/// was left after it.
fn receive(input: &[u8], piece: usize, bare_lf: BareLf) -> (Vec<u8>, Option<Vec<u8>>) {
    let mut receiver = DataReceiver::new(bare_lf);
    let (mut content, mut buffer, mut fed) = (Vec::new(), Vec::new(), 0);
    for _ in 0..100_000 {
        let (used, step) = receiver.step(&buffer);
        let (ended, needs_input) = match step {
            DataStep::Content(c) => {
                content.extend_from_slice(c);
                (false, false)
            }
            DataStep::End => (true, false),
            DataStep::NeedInput => (false, true),
        };
        buffer.drain(..used);
        if ended {
            buffer.extend_from_slice(&input[fed..]);
            return (content, Some(buffer));
        }
        if needs_input {
            if fed == input.len() {
                return (content, None);
            }
            let more = piece.min(input.len() - fed);
            buffer.extend_from_slice(&input[fed..fed + more]);
            fed += more;
        }
    }
    panic!("the receiver made no progress");
}

#[test]
fn content_and_end_of_data_in_any_pieces() {
    // (input, content, what follows the end of data if it was found)
    type Case<'a> = (&'a [u8], &'a [u8], Option<&'a [u8]>);
    let cases: &[Case] = &[
        (b".\r\n", b"", Some(b"")),
        (
            b"Subject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n",
            b"Subject: hi\r\n\r\nbody\r\n",
            Some(b"QUIT\r\n"),
        ),
        (b"..\r\n.x\r\n...\r\n.\r\n", b".\r\nx\r\n..\r\n", Some(b"")),
        (
            b"no final newline.\r\n.\r\n",
            b"no final newline.\r\n",
            Some(b""),
        ),
        (b"a\r\n.", b"a\r\n", None),
        (b"line\r\n.\r", b"line\r\n", None),
        (
            b"From me\r\n>From\r\n\r\n.\r\n",
            b"From me\r\n>From\r\n\r\n",
            Some(b""),
        ),
        (
            b"8bit \xc3\xa9\0\r\n.\r\n",
            b"8bit \xc3\xa9\0\r\n",
            Some(b""),
        ),
        // The smuggling sequences never end a message.
        (
            b"a\n.\nMAIL FROM:<x@y>\r\n.\r\n",
            b"a\r\n.\r\nMAIL FROM:<x@y>\r\n",
            Some(b""),
        ),
        (b"a\n.\r\nMAIL\r\n.\r\n", b"a\r\n.\r\nMAIL\r\n", Some(b"")),
        (b"a\r.\rMAIL\r\n.\r\n", b"a\r.\rMAIL\r\n", Some(b"")),
        (b"a\r\n.\rMAIL\r\n.\r\n", b"a\r\n\rMAIL\r\n", Some(b"")),
        (b"a\r\n.\nMAIL\r\n.\r\n", b"a\r\n\r\nMAIL\r\n", Some(b"")),
        (b"a\nb\n\nc\r\n.\r\n", b"a\r\nb\r\n\r\nc\r\n", Some(b"")),
        (b"\n.\r\n", b"\r\n.\r\n", None),
    ];
    for &(input, content, rest) in cases {
        for piece in [1, 2, 3, 5, 64] {
            let (got, got_rest) = receive(input, piece, BareLf::Normalize);
            assert_eq!(
                got,
                content,
                "{:?} in pieces of {piece}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(
                got_rest.as_deref(),
                rest,
                "{:?} in pieces of {piece}",
                String::from_utf8_lossy(input)
            );
        }
    }
}

#[test]
fn bare_lf_is_flagged_in_reject_mode() {
    let mut receiver = DataReceiver::new(BareLf::Reject);
    let mut input: &[u8] = b"a\nb\r\n.\r\n";
    let mut content = Vec::new();
    loop {
        let (used, step) = receiver.step(input);
        input = &input[used..];
        match step {
            DataStep::Content(c) => content.extend_from_slice(c),
            DataStep::End => break,
            DataStep::NeedInput => panic!("the whole message was given"),
        }
    }
    assert!(receiver.saw_bare_lf);
    assert_eq!(content, b"ab\r\n");
    assert!(!DataReceiver::new(BareLf::Reject).saw_bare_lf);
}

#[test]
fn content_comes_out_in_large_pieces() {
    let input = b"one\r\ntwo\r\nthree\r\n.\r\n";
    let mut receiver = DataReceiver::new(BareLf::Normalize);
    assert_eq!(
        receiver.step(input),
        (17, DataStep::Content(b"one\r\ntwo\r\nthree\r\n"))
    );
    assert_eq!(receiver.step(&input[17..]), (3, DataStep::End));
}
