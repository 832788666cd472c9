//! SMTP replies: a code, an RFC 3463 enhanced status code and human-readable text, one or many lines. Text
//! is borrowed where it never changes, so the common replies cost no allocation; the ones that never change
//! at all are the constants at the end of this file.
//!
//! Reply text is printable ASCII only (RFC 5321's `textstring`, without the UTF-8 RFC 6531 would allow). A
//! client's bytes in a reply are shown through [`Echo`], escaped and cut short; and whatever a reply's text
//! holds, it goes on the wire escaped, so no reply can carry a bare CR or LF — which a client that ends lines
//! at CR would read as the start of another reply (`VRFY x\r250 2.0.0 Ok`).

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use super::status::{Class, Detail, Status};

/// One reply to the client. Every reply but the greeting, HELO's, EHLO's and 354 carries an enhanced status
/// code, whose class always matches the reply code (a 550 says 5.X.X).
#[derive(Clone, Debug)]
pub struct Reply {
    code: u16,
    status: Option<Status>,
    text: Text,
}

/// Replies are equal when they go on the wire the same, whichever way their text is held.
impl PartialEq for Reply {
    fn eq(&self, other: &Reply) -> bool {
        (self.code, self.status, self.text_lines())
            == (other.code, other.status, other.text_lines())
    }
}

impl Eq for Reply {}

#[derive(Clone, Debug)]
enum Text {
    Line(Cow<'static, str>),
    /// Never empty. Shared, so that a reply built once is sent by many sessions without a copy.
    Lines(Arc<[Cow<'static, str>]>),
}

impl Reply {
    /// A one-line reply with the enhanced status code `detail` (its class comes from `code`).
    pub fn new(code: u16, detail: Detail, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: status(code, Some(detail)),
            text: Text::Line(text.into()),
        }
    }

    /// [`Reply::new`] for a reply that never changes, usable in a constant.
    pub const fn fixed(code: u16, detail: Detail, text: &'static str) -> Reply {
        Reply {
            code,
            status: status(code, Some(detail)),
            text: Text::Line(Cow::Borrowed(text)),
        }
    }

    /// A one-line reply without an enhanced status code: the greeting, HELO's answer, 354.
    pub fn plain(code: u16, text: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            code,
            status: None,
            text: Text::Line(text.into()),
        }
    }

    /// A multi-line reply: every line carries the code (and the status, if any).
    pub fn lines(code: u16, detail: Option<Detail>, lines: Vec<Cow<'static, str>>) -> Reply {
        let text = match <[_; 1]>::try_from(lines) {
            Ok([line]) => Text::Line(line),
            Err(lines) if lines.is_empty() => Text::Line(Cow::Borrowed("")),
            Err(lines) => Text::Lines(lines.into()),
        };
        Reply {
            code,
            status: status(code, detail),
            text,
        }
    }

    /// The reply with `lines` before its own, under the same code and status (VERB's narration).
    pub fn after_lines(self, lines: Vec<String>) -> Reply {
        let mut text: Vec<Cow<'static, str>> = lines.into_iter().map(Cow::Owned).collect();
        match self.text {
            Text::Line(line) => text.push(line),
            Text::Lines(own) => text.extend(own.iter().cloned()),
        }
        Reply {
            text: Text::Lines(text.into()),
            ..self
        }
    }

    /// The same reply in a form whose clones share its text: for one built once and sent by many sessions.
    pub fn shared(self) -> Reply {
        let text = match self.text {
            Text::Line(line) => Text::Lines(Arc::from([line])),
            lines @ Text::Lines(_) => lines,
        };
        Reply { text, ..self }
    }

    /// The reply code, e.g. 250.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// The enhanced status code, if the reply has one.
    pub fn status(&self) -> Option<Status> {
        self.status
    }

    /// 4xx and 5xx replies count against the session's error limit.
    pub fn is_error(&self) -> bool {
        self.code >= 400
    }

    fn text_lines(&self) -> &[Cow<'static, str>] {
        match &self.text {
            Text::Line(line) => std::slice::from_ref(line),
            Text::Lines(lines) => lines,
        }
    }

    /// Appends the reply as it goes on the wire: `250-first`, ..., `250 last`, each ended by CRLF.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let digit = |n: u16| b'0' + (n % 10) as u8;
        let code = [
            digit(self.code / 100),
            digit(self.code / 10),
            digit(self.code),
        ];
        let lines = self.text_lines();
        let last = lines.len() - 1;
        for (n, line) in lines.iter().enumerate() {
            out.extend_from_slice(&code);
            out.push(if n == last { b' ' } else { b'-' });
            if let Some(status) = self.status {
                status.write_to(out);
                out.push(b' ');
            }
            push_printable(out, line);
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// Appends `text` with every byte outside 0x20-0x7E escaped.
fn push_printable(out: &mut Vec<u8>, text: &str) {
    if text.bytes().all(is_printable) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    for byte in text.bytes() {
        if is_printable(byte) {
            out.push(byte);
        } else {
            let (escaped, len) = escape(byte);
            out.extend_from_slice(&escaped[..len]);
        }
    }
}

fn is_printable(byte: u8) -> bool {
    (0x20..=0x7e).contains(&byte)
}

/// A byte outside 0x20-0x7E as printable text: `\r`, `\n`, `\t`, else `\xNN` (each byte of a UTF-8 character
/// on its own).
fn escape(byte: u8) -> ([u8; 4], usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    match byte {
        b'\r' => (*b"\\r\0\0", 2),
        b'\n' => (*b"\\n\0\0", 2),
        b'\t' => (*b"\\t\0\0", 2),
        _ => (
            [
                b'\\',
                b'x',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ],
            4,
        ),
    }
}

/// How much of a client's text a reply shows; the rest is cut off, and "..." says so.
pub const ECHO_LIMIT: usize = 64;

/// Text from the client, as a reply shows it: [`Escaped`], and no more than [`ECHO_LIMIT`] bytes of it.
pub struct Echo<'a>(pub &'a str);

impl fmt::Display for Echo<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let bytes = self.0.as_bytes();
        Escaped(&bytes[..bytes.len().min(ECHO_LIMIT)]).fmt(f)?;
        if bytes.len() > ECHO_LIMIT {
            f.write_str("...")?;
        }
        Ok(())
    }
}

/// Bytes from the client, as a reply or a log line shows them: printable ASCII as it is, a backslash doubled
/// (so an escape is never the client's own text), other bytes escaped (`\r`, `\x13`), so that no control
/// character reaches a log or a terminal.
pub struct Escaped<'a>(pub &'a [u8]);

impl fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn ascii(run: &[u8]) -> &str {
            std::str::from_utf8(run).expect("printable ASCII and escapes are UTF-8")
        }
        let mut rest = self.0;
        while let Some(at) = rest.iter().position(|&b| b == b'\\' || !is_printable(b)) {
            f.write_str(ascii(&rest[..at]))?;
            match rest[at] {
                b'\\' => f.write_str("\\\\")?,
                byte => {
                    let (escaped, len) = escape(byte);
                    f.write_str(ascii(&escaped[..len]))?;
                }
            }
            rest = &rest[at + 1..];
        }
        f.write_str(ascii(rest))
    }
}

/// The status for a reply `code`; none for 1yz and 3yz replies, which RFC 3463 does not cover.
const fn status(code: u16, detail: Option<Detail>) -> Option<Status> {
    match (Class::of_reply_code(code), detail) {
        (Some(class), Some(detail)) => Some(Status::new(class, detail)),
        _ => None,
    }
}

impl fmt::Display for Reply {
    /// The reply as one log line: `250 2.0.0 Ok`, multi-line replies joined with " / ".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(status) = self.status {
            write!(f, " {status}")?;
        }
        write!(f, " {}", self.text_lines().join(" / "))
    }
}

/// Replies that never change.
pub const OK: Reply = Reply::fixed(250, Detail::Undefined, "Ok");
pub const SENDER_OK: Reply = Reply::fixed(250, Detail::OtherAddress, "Ok");
pub const RECIPIENT_OK: Reply = Reply::fixed(250, Detail::DestinationValid, "Ok");
pub const BYE: Reply = Reply::fixed(221, Detail::Undefined, "Bye");
pub const START_DATA: Reply = Reply {
    code: 354,
    status: None,
    text: Text::Line(Cow::Borrowed("End data with <CR><LF>.<CR><LF>")),
};
pub const EMPTY_LINE: Reply = Reply::fixed(500, Detail::SyntaxError, "Error: empty command line");
pub const UNKNOWN_COMMAND: Reply =
    Reply::fixed(500, Detail::SyntaxError, "Error: command not recognized");
pub const NUL_IN_COMMAND: Reply = Reply::fixed(
    500,
    Detail::SyntaxError,
    "Error: NUL character in command line",
);
/// A CR inside a command line: a strict server's answer, since a CR that does not end the line is what
/// smuggling and reply-injection attempts are made of.
pub const BARE_CR_IN_COMMAND: Reply = Reply::fixed(
    500,
    Detail::SyntaxError,
    "Error: bare CR in command line; SMTP lines end with CR LF",
);
pub const COMMAND_NOT_UTF8: Reply = Reply::fixed(
    500,
    Detail::SyntaxError,
    "Error: command line is not valid UTF-8",
);
pub const NEED_HELO: Reply = Reply::fixed(
    503,
    Detail::InvalidCommand,
    "Error: send HELO or EHLO first",
);
pub const NEED_MAIL: Reply = Reply::fixed(503, Detail::InvalidCommand, "Error: need MAIL command");
pub const NO_VALID_RECIPIENTS: Reply =
    Reply::fixed(554, Detail::InvalidCommand, "Error: no valid recipients");
pub const MAIL_PARAMETERS_NEED_EHLO: Reply = Reply::fixed(
    555,
    Detail::InvalidArguments,
    "Error: MAIL parameters need EHLO, not HELO",
);
pub const BAD_SIZE: Reply = Reply::fixed(
    501,
    Detail::InvalidArguments,
    "Syntax: SIZE=<number of bytes>",
);
pub const UNSUPPORTED_BODY: Reply = Reply::fixed(
    555,
    Detail::InvalidArguments,
    "Unsupported BODY type: 7BIT or 8BITMIME",
);
pub const NO_SPACE_BEFORE_PARAMETERS: Reply = Reply::fixed(
    501,
    Detail::InvalidArguments,
    "Syntax: a space must separate the address and its parameters",
);
pub const SENDER_NEEDS_SMTPUTF8: Reply = Reply::fixed(
    553,
    Detail::NonAsciiAddress,
    "Error: a non-ASCII address needs the SMTPUTF8 parameter",
);
pub const RECIPIENT_NEEDS_SMTPUTF8: Reply = Reply::fixed(
    553,
    Detail::NonAsciiAddress,
    "Error: a non-ASCII address needs SMTPUTF8 in MAIL FROM",
);
pub const INSUFFICIENT_STORAGE: Reply = Reply::fixed(
    452,
    Detail::MailSystemFull,
    "Error: insufficient system storage",
);
/// The one refusal that does not count against the error limit: the client did nothing wrong.
pub const TOO_MANY_RECIPIENTS: Reply =
    Reply::fixed(452, Detail::TooManyRecipients, "Error: too many recipients");
pub const BARE_LF: Reply = Reply::fixed(
    550,
    Detail::OtherContent,
    "Error: bare LF in the message; SMTP lines must end with CR LF",
);
/// ETRN makes the server work for the client, so only clients it knows may ask.
pub const ETRN_NOT_PERMITTED: Reply = Reply::fixed(
    502,
    Detail::OtherSecurity,
    "Error: ETRN is only for trusted or authenticated clients",
);
pub const ETRN_TOO_OFTEN: Reply = Reply::fixed(
    458,
    Detail::OtherSecurity,
    "Unable to queue messages now: one ETRN per client every 10 seconds",
);
pub const EXPN_DISABLED: Reply = Reply::fixed(
    502,
    Detail::OtherSecurity,
    "Error: EXPN is disabled on this server",
);
pub const CANNOT_VRFY_REMOTE: Reply = Reply::fixed(
    252,
    Detail::DestinationValid,
    "Cannot VRFY a remote user, but will accept the message and attempt delivery",
);
pub const CANNOT_EXPN_REMOTE: Reply =
    Reply::fixed(252, Detail::DestinationValid, "Cannot EXPN a remote list");
pub const NARRATION_ON: Reply = Reply::fixed(
    250,
    Detail::Undefined,
    "Ok: narration on; replies carry the server's steps as extra lines (VERB OFF ends it)",
);
pub const NARRATION_OFF: Reply = Reply::fixed(250, Detail::Undefined, "Ok: narration off");
pub const NARRATION_REFUSED: Reply = Reply::fixed(
    250,
    Detail::Undefined,
    "Ok: narration (VERB) is for local, trusted and authenticated clients only; nothing changes",
);

pub const NEED_STARTTLS: Reply = Reply::fixed(
    530,
    Detail::OtherSecurity,
    "Error: must issue a STARTTLS command first",
);
pub const NEED_AUTH: Reply = Reply::fixed(
    530,
    Detail::OtherSecurity,
    "Error: authentication required: log in with AUTH first",
);
pub const ATRN_NOT_HERE: Reply = Reply::fixed(
    502,
    Detail::InvalidCommand,
    "Error: ATRN is answered only on the On-Demand Mail Relay port (RFC 2645)",
);
pub const ATRN_NEEDS_AUTH: Reply = Reply::fixed(
    530,
    Detail::OtherSecurity,
    "Error: authentication required: ATRN is for a logged-in customer (RFC 2645)",
);
pub const ATRN_SYNTAX: Reply = Reply::fixed(
    501,
    Detail::InvalidArguments,
    "Syntax: ATRN [domain[,domain...]]",
);
pub const TURNING: Reply = Reply::fixed(250, Detail::Undefined, "OK now reversing the connection");
pub const READY_FOR_TLS: Reply = Reply::fixed(220, Detail::Undefined, "Ready to start TLS");
pub const TLS_ALREADY_ACTIVE: Reply =
    Reply::fixed(503, Detail::InvalidCommand, "Error: TLS is already active");
pub const TLS_NOT_AVAILABLE: Reply = Reply::fixed(
    454,
    Detail::OtherSecurity,
    "TLS not available: this server has no certificate",
);
pub const AUTH_NOT_OFFERED: Reply = Reply::fixed(
    502,
    Detail::InvalidCommand,
    "Error: AUTH is not offered by this server",
);
pub const AUTH_NEEDS_TLS: Reply = Reply::fixed(
    538,
    Detail::EncryptionRequiredForMechanism,
    "Error: authentication needs an encrypted connection: say STARTTLS first",
);
pub const ALREADY_AUTHENTICATED: Reply =
    Reply::fixed(503, Detail::InvalidCommand, "Error: already authenticated");
pub const AUTH_OK: Reply = Reply::fixed(235, Detail::OtherSecurity, "Authentication successful");
pub const AUTH_FAILED: Reply = Reply::fixed(
    535,
    Detail::InvalidCredentials,
    "Error: authentication failed",
);
pub const AUTH_CANCELLED: Reply =
    Reply::fixed(501, Detail::SyntaxError, "Error: authentication cancelled");
pub const AUTH_BAD_BASE64: Reply = Reply::fixed(
    501,
    Detail::SyntaxError,
    "Error: the authentication response is not valid base64",
);

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
