//! SMTP replies: a code, an RFC 3463 enhanced status code and human-readable text, one or many lines.

use std::fmt;

/// One reply to the client. Every reply but the greeting and EHLO's carries an enhanced status code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: &'static str,
    lines: Vec<String>,
}

impl Reply {
    /// A one-line reply. `status` is the enhanced status code (e.g. "2.1.0"), or "" where none belongs.
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// A multi-line reply: every line carries the code (and the status, if any).
    pub fn lines(code: u16, status: &'static str, lines: Vec<String>) -> Reply {
        debug_assert!(!lines.is_empty());
        Reply {
            code,
            status,
            lines,
        }
    }

    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, or "".
    pub fn status(&self) -> &'static str {
        self.status
    }

    /// 4xx and 5xx replies count against the session's error limit.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    /// Appends the reply as it goes on the wire: `250-first`, ..., `250 last`, each ended by CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let digit = |n: u16| b'0' + (n % 10) as u8;
        let code = [
            digit(self.code / 100),
            digit(self.code / 10),
            digit(self.code),
        ];
        let last = self.lines.len().saturating_sub(1);
        for (n, line) in self.lines.iter().enumerate() {
            out.extend_from_slice(&code);
            out.push(if n == last { b' ' } else { b'-' });
            if !self.status.is_empty() {
                out.extend_from_slice(self.status.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

impl fmt::Display for Reply {
    /// The reply as one log line: `250 2.0.0 Ok`, multi-line replies joined with " / ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if !self.status.is_empty() {
            write!(f, " {}", self.status)?;
        }
        write!(f, " {}", self.lines.join(" / "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(reply: &Reply) -> String {
        let mut out = Vec::new();
        reply.write_to(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn one_line_and_many() {
        assert_eq!(wire(&Reply::new(250, "2.0.0", "Ok")), "250 2.0.0 Ok\r\n");
        assert_eq!(wire(&Reply::new(220, "", "mx ESMTP")), "220 mx ESMTP\r\n");
        let ehlo = Reply::lines(
            250,
            "",
            vec!["mx".into(), "PIPELINING".into(), "HELP".into()],
        );
        assert_eq!(wire(&ehlo), "250-mx\r\n250-PIPELINING\r\n250 HELP\r\n");
        let help = Reply::lines(214, "2.0.0", vec!["a".into(), "b".into()]);
        assert_eq!(wire(&help), "214-2.0.0 a\r\n214 2.0.0 b\r\n");
        assert_eq!(ehlo.to_string(), "250 mx / PIPELINING / HELP");
    }
}
