//! SMTP replies: a code, an RFC 3463 enhanced status code and human-readable text, one or many lines. Text
//! is borrowed where it never changes, so the common replies cost no allocation; the ones that never change
//! at all are the constants at the end of this file.

use std::borrow::Cow;
use std::fmt;

use super::status::{Class, Detail, Status};

/// One reply to the client. Every reply but the greeting, HELO's, EHLO's and 354 carries an enhanced status
/// code, whose class always matches the reply code (a 550 says 5.X.X).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    code: u16,
    status: Option<Status>,
    text: Text,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Text {
    Line(Cow<'static, str>),
    /// Never empty.
    Lines(Vec<Cow<'static, str>>),
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
            Err(lines) => Text::Lines(lines),
        };
        Reply {
            code,
            status: status(code, detail),
            text,
        }
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
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
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
/// The one refusal that does not count against the error limit: the client did nothing wrong.
pub const TOO_MANY_RECIPIENTS: Reply =
    Reply::fixed(452, Detail::TooManyRecipients, "Error: too many recipients");
pub const BARE_LF: Reply = Reply::fixed(
    550,
    Detail::OtherContent,
    "Error: bare LF in the message; SMTP lines must end with CR LF",
);

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
