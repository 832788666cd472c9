//! Message content after DATA: dot-unstuffing, line-end rules and the end of data, byte by byte and without
//! copying. The end of data is only CR LF "." CR LF: a bare LF or a bare CR never ends a message, so the
//! "SMTP smuggling" sequences (`\n.\n`, `\n.\r\n`, `\r.\r`, `\r\n.\r`, `\r\n.\n`) stay message content.

/// What to do with a bare LF (one without a CR before it) in message content (config key `bare_lf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BareLf {
    /// Store it as CR LF, as most servers do.
    Normalize,
    /// Refuse the message with 550 5.6.0 at the end of data.
    Reject,
}

/// What the receiver found in the input.
#[derive(Debug, PartialEq, Eq)]
pub enum DataStep<'a> {
    /// Everything given has been consumed, but for at most 2 bytes that need more input to be decided.
    NeedInput,
    /// Message content, unstuffed, with CR LF line ends (possibly empty).
    Content(&'a [u8]),
    /// The end-of-data line was consumed.
    End,
}

/// Receives DATA content. A new receiver stands at the start of a line (the DATA command's line end).
#[derive(Debug)]
pub struct DataReceiver {
    bare_lf: BareLf,
    at_line_start: bool,
    /// The last byte consumed was a CR, so an LF at the start of the next input ends a line.
    after_cr: bool,
    /// A bare LF was just consumed and its CR LF is still to be given out.
    pending_crlf: bool,
    /// A bare LF was seen in Reject mode.
    pub saw_bare_lf: bool,
}

const CRLF: &[u8] = b"\r\n";

impl DataReceiver {
    pub fn new(bare_lf: BareLf) -> DataReceiver {
        DataReceiver {
            bare_lf,
            at_line_start: true,
            after_cr: false,
            pending_crlf: false,
            saw_bare_lf: false,
        }
    }

    /// Consumes a prefix of `input`; returns its length and what it held. Content comes out in pieces as long
    /// as the input allows, ending only at a line end, a line that starts with a dot, or a bare LF.
    pub fn step<'a>(&mut self, input: &'a [u8]) -> (usize, DataStep<'a>) {
        if self.pending_crlf {
            self.pending_crlf = false;
            return (0, DataStep::Content(CRLF));
        }
        let mut start = 0;
        if self.at_line_start {
            match input {
                [] | [b'.'] | [b'.', b'\r'] => return (0, DataStep::NeedInput),
                [b'.', b'\r', b'\n', ..] => return (3, DataStep::End),
                [b'.', ..] => {
                    // A leading dot is transparency (RFC 5321 4.5.2): drop it.
                    start = 1;
                    self.after_cr = false;
                }
                _ => {}
            }
            self.at_line_start = false;
        }
        let mut scanned = start;
        loop {
            let Some(lf) = memchr::memchr(b'\n', &input[scanned..]).map(|at| scanned + at) else {
                if let Some(&last) = input[start..].last() {
                    self.after_cr = last == b'\r';
                }
                return self.content(input, start, input.len());
            };
            let crlf = if lf > start {
                input[lf - 1] == b'\r'
            } else {
                self.after_cr
            };
            if !crlf {
                return self.bare_lf(input, start, lf);
            }
            self.after_cr = false;
            let next = lf + 1;
            match input.get(next) {
                // The next line may start with a dot: let the next step look at it.
                None | Some(b'.') => {
                    self.at_line_start = true;
                    return self.content(input, start, next);
                }
                Some(_) => scanned = next,
            }
        }
    }

    fn content<'a>(&self, input: &'a [u8], start: usize, end: usize) -> (usize, DataStep<'a>) {
        if start == end {
            (end, DataStep::NeedInput)
        } else {
            (end, DataStep::Content(&input[start..end]))
        }
    }

    /// A bare LF at `lf`: content before it, then CR LF (Normalize) or nothing (Reject). It does not start a
    /// new line for the dot rules, so it can never lead to the end of data. The content may be empty.
    fn bare_lf<'a>(&mut self, input: &'a [u8], start: usize, lf: usize) -> (usize, DataStep<'a>) {
        self.after_cr = false;
        match self.bare_lf {
            BareLf::Normalize if start == lf => return (lf + 1, DataStep::Content(CRLF)),
            BareLf::Normalize => self.pending_crlf = true,
            BareLf::Reject => self.saw_bare_lf = true,
        }
        (lf + 1, DataStep::Content(&input[start..lf]))
    }
}

#[cfg(test)]
mod tests {
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
}
