//! Copying a message in one streaming pass, the way every writer needs it (after Postfix's mail_copy()): line
//! ends made LF (mbox, pipes) or CRLF (SMTP, the spool), mboxrd `>From ` quoting, SMTP dot-stuffing, headers put
//! in front, and a line end added to a last line that lacks one. Input may come in chunks of any size and with
//! either line end; nothing is held back but a partial `>*From ` or a CR.

use std::io::{self, BufRead, Write};

/// The line end a copy writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineEnd {
    /// LF alone: CR LF becomes LF (mbox files, commands).
    Lf,
    /// CR LF: a LF without its CR gets one (SMTP, the spool).
    Crlf,
}

/// How a copy changes the message on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub line_end: LineEnd,
    /// mboxrd: a line matching `^>*From ` gets one more `>`, so mbox readers never take it for a separator.
    pub quote_from: bool,
    /// SMTP (RFC 5321 4.5.2): a line starting with "." gets one more, so it cannot end the data.
    pub stuff_dots: bool,
    /// [`Copier::finish`] ends a last line that has no line end.
    pub end_last_line: bool,
}

impl Format {
    /// A message in an mbox file.
    pub const MBOX: Format = Format {
        line_end: LineEnd::Lf,
        quote_from: true,
        stuff_dots: false,
        end_last_line: true,
    };
    /// A message on a command's standard input, as it is.
    pub const PIPE: Format = Format {
        line_end: LineEnd::Lf,
        quote_from: false,
        stuff_dots: false,
        end_last_line: false,
    };
    /// A message as SMTP DATA content (the final "." is the client's).
    pub const SMTP: Format = Format {
        line_end: LineEnd::Crlf,
        quote_from: false,
        stuff_dots: true,
        end_last_line: true,
    };
    /// Text (headers, a notification) in the spool's and SMTP's line ends, as it is otherwise.
    pub const CRLF: Format = Format {
        line_end: LineEnd::Crlf,
        quote_from: false,
        stuff_dots: false,
        end_last_line: false,
    };
}

/// Why a copy stopped.
#[derive(Debug)]
pub enum CopyError {
    /// The message could not be read.
    Read(io::Error),
    /// The output could not be written.
    Write(io::Error),
}

/// Copies `headers` and then all of `body` to `out` in `format`, finished; returns the output and the bytes
/// written to it.
pub fn copy<W: Write>(
    format: Format,
    headers: &[u8],
    body: &mut dyn BufRead,
    out: W,
) -> Result<(W, u64), CopyError> {
    let mut copier = Copier::new(out, format);
    copier.write(headers).map_err(CopyError::Write)?;
    copier.copy_from(body)?;
    copier.finish().map_err(CopyError::Write)
}

/// `text` in `format`, finished.
pub fn convert(format: Format, text: &[u8]) -> Vec<u8> {
    let mut copier = Copier::new(Vec::with_capacity(text.len() + text.len() / 16), format);
    // Writing to a Vec cannot fail.
    let _ = copier.write(text);
    copier.finish().map(|(out, _)| out).unwrap_or_default()
}

const FROM: &[u8] = b"From ";

/// Where the copy is within the current line.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Line {
    /// Still matching `>*From ` at the start of a line: `quotes` `>` seen, then `matched` bytes of "From ".
    Start { quotes: u64, matched: usize },
    /// Past the point where the line could need quoting or stuffing.
    Rest,
}

const LINE_START: Line = Line::Start {
    quotes: 0,
    matched: 0,
};

/// A streaming copy into `out`: feed it with [`Copier::write`] or [`Copier::copy_from`], end with
/// [`Copier::finish`].
pub struct Copier<W: Write> {
    out: W,
    format: Format,
    line: Line,
    /// A CR was the last byte seen: part of the line end if an LF follows, written as it is otherwise.
    pending_cr: bool,
    /// Bytes written to `out` so far.
    written: u64,
}

impl<W: Write> Copier<W> {
    pub fn new(out: W, format: Format) -> Self {
        Copier {
            out,
            format,
            line: LINE_START,
            pending_cr: false,
            written: 0,
        }
    }

    /// Copies the next piece of the message.
    pub fn write(&mut self, mut input: &[u8]) -> io::Result<()> {
        while let Some(&byte) = input.first() {
            if self.pending_cr {
                self.pending_cr = false;
                if byte != b'\n' {
                    self.put(b"\r")?;
                }
            }
            match self.line {
                Line::Start { quotes, matched } => {
                    if self.format.stuff_dots && (quotes, matched) == (0, 0) && byte == b'.' {
                        self.put(b".")?;
                        self.line = Line::Rest;
                        continue;
                    } else if !self.format.quote_from {
                        self.line = Line::Rest;
                        continue;
                    } else if matched == 0 && byte == b'>' {
                        self.line = Line::Start {
                            quotes: quotes + 1,
                            matched,
                        };
                    } else if byte == FROM[matched] {
                        if matched + 1 < FROM.len() {
                            self.line = Line::Start {
                                quotes,
                                matched: matched + 1,
                            };
                        } else {
                            self.put_quotes(quotes + 1)?;
                            self.put(FROM)?;
                            self.line = Line::Rest;
                        }
                    } else {
                        // Not a From_ line: write what was held back, then this byte as ordinary text.
                        self.flush_start()?;
                        continue;
                    }
                    input = &input[1..];
                }
                Line::Rest => match memchr::memchr2(b'\r', b'\n', input) {
                    None => {
                        self.put(input)?;
                        input = &[];
                    }
                    Some(at) => {
                        self.put(&input[..at])?;
                        if input[at] == b'\n' {
                            self.put_line_end()?;
                        } else {
                            self.pending_cr = true;
                        }
                        input = &input[at + 1..];
                    }
                },
            }
        }
        Ok(())
    }

    /// Copies all of `input`; returns the bytes read from it.
    pub fn copy_from(&mut self, input: &mut dyn BufRead) -> Result<u64, CopyError> {
        let mut read = 0;
        loop {
            let chunk = match input.fill_buf() {
                Ok(chunk) => chunk,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            if chunk.is_empty() {
                return Ok(read);
            }
            let len = chunk.len();
            self.write(chunk).map_err(CopyError::Write)?;
            input.consume(len);
            read += len as u64;
        }
    }

    /// Ends the copy (a held-back CR, and the last line's end if the format adds it); returns the output and the
    /// bytes written to it in all.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        if self.pending_cr {
            self.put(b"\r")?;
        }
        if self.line != LINE_START {
            self.flush_start()?;
            if self.format.end_last_line {
                self.put_line_end()?;
            }
        }
        Ok((self.out, self.written))
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn put_line_end(&mut self) -> io::Result<()> {
        self.line = LINE_START;
        match self.format.line_end {
            LineEnd::Lf => self.put(b"\n"),
            LineEnd::Crlf => self.put(b"\r\n"),
        }
    }

    /// Writes the held-back start of a line that turned out not to be a From_ line.
    fn flush_start(&mut self) -> io::Result<()> {
        if let Line::Start { quotes, matched } = self.line {
            self.put_quotes(quotes)?;
            self.put(&FROM[..matched])?;
        }
        self.line = Line::Rest;
        Ok(())
    }

    fn put_quotes(&mut self, mut count: u64) -> io::Result<()> {
        const QUOTES: [u8; 64] = [b'>'; 64];
        while count > 0 {
            let n = count.min(QUOTES.len() as u64) as usize;
            self.put(&QUOTES[..n])?;
            count -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `input` copied in `format`, fed in chunks of `chunk` bytes.
    fn copied(format: Format, input: &[u8], chunk: usize) -> Vec<u8> {
        let mut copier = Copier::new(Vec::new(), format);
        for piece in input.chunks(chunk) {
            copier.write(piece).unwrap();
        }
        let (out, written) = copier.finish().unwrap();
        assert_eq!(written, out.len() as u64);
        out
    }

    fn check(format: Format, input: &[u8], want: &[u8]) {
        for chunk in 1..=input.len().max(1) {
            assert_eq!(
                String::from_utf8_lossy(&copied(format, input, chunk)),
                String::from_utf8_lossy(want),
                "{input:?} in chunks of {chunk}"
            );
        }
    }

    #[test]
    fn mbox_form_quotes_from_lines_and_ends_lines_with_lf() {
        check(
            Format::MBOX,
            b"From a\r\n>>From b\r\n\r\nx\r\r\n>F>From \r\nFro\r\n\r",
            b">From a\n>>>From b\n\nx\r\n>F>From \nFro\n\r\n",
        );
        check(
            Format::MBOX,
            b"Fromage\r\n>From\r\n a From b\r\nbare\rcr\r\n.dot\nend",
            b"Fromage\n>From\n a From b\nbare\rcr\n.dot\nend\n",
        );
        for (input, want) in [
            ("", ""),
            ("x", "x\n"),
            ("From", "From\n"),
            (">>", ">>\n"),
            ("a\r", "a\r\n"),
        ] {
            check(Format::MBOX, input.as_bytes(), want.as_bytes());
        }
    }

    #[test]
    fn smtp_form_stuffs_dots_and_ends_lines_with_crlf() {
        check(
            Format::SMTP,
            b"Subject: hi\r\n\r\n.hidden\n..two\r\nFrom x\rno line end",
            b"Subject: hi\r\n\r\n..hidden\r\n...two\r\nFrom x\rno line end\r\n",
        );
        check(Format::SMTP, b".", b"..\r\n");
        check(Format::SMTP, b"a\r", b"a\r\r\n");
        check(Format::SMTP, b"", b"");
    }

    #[test]
    fn plain_forms_only_change_line_ends() {
        check(Format::PIPE, b"From a\r\n.b\r\nc", b"From a\n.b\nc");
        check(Format::CRLF, b"From a\n.b\r\nc\n", b"From a\r\n.b\r\nc\r\n");
        assert_eq!(
            convert(Format::CRLF, b"Received: x\n\tby y\n"),
            b"Received: x\r\n\tby y\r\n"
        );
    }

    #[test]
    fn headers_go_first_and_read_errors_are_told_apart() {
        let (out, written) = copy(
            Format::MBOX,
            b"X-Trace: 1\r\n",
            &mut &b"From me\r\n"[..],
            Vec::new(),
        )
        .unwrap();
        assert_eq!(out, b"X-Trace: 1\n>From me\n");
        assert_eq!(written, out.len() as u64);
        struct Broken;
        impl io::Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("gone"))
            }
        }
        let mut broken = io::BufReader::new(Broken);
        assert!(matches!(
            copy(Format::SMTP, b"", &mut broken, Vec::new()),
            Err(CopyError::Read(_))
        ));
    }
}
