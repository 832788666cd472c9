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
#[path = "data_tests.rs"]
mod tests;
