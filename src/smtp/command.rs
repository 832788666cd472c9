//! One command line (without its line end) to a [`Command`], or the reply that explains why it is not one.

use super::address::{self, AddressError, ForwardPath, ReversePath};
use super::reply::{self, Reply};
use super::status::Detail;

/// A parsed SMTP command. Arguments borrow the command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    Helo(&'a str),
    Ehlo(&'a str),
    Mail {
        from: ReversePath,
        params: MailParams,
        /// The address has non-ASCII characters, allowed only with SMTPUTF8.
        utf8: bool,
    },
    Rcpt {
        to: ForwardPath,
        utf8: bool,
    },
    Data,
    Bdat {
        size: u64,
        last: bool,
    },
    Rset,
    Noop,
    Quit,
    Vrfy(&'a str),
    Expn(&'a str),
    Help(&'a str),
    Etrn(&'a str),
    Verb,
    Turn,
    Atrn,
    /// RFC 821's SEND, SOML and SAML: delivery to a user's terminal.
    TerminalDelivery(&'static str),
    /// Commands of extensions this server does not offer (STARTTLS, AUTH).
    NotOffered(&'static str),
}

/// The ESMTP parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the size the client announces.
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

impl BodyType {
    pub fn as_str(&self) -> &'static str {
        match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
        }
    }
}

/// The syntax of each command, for 501 replies and HELP.
pub const SYNTAX: &[(&str, &str)] = &[
    ("HELO", "HELO <your host name>"),
    ("EHLO", "EHLO <your host name>"),
    (
        "MAIL",
        "MAIL FROM:<address> [SIZE=<bytes>] [BODY=7BIT|8BITMIME] [SMTPUTF8]",
    ),
    ("RCPT", "RCPT TO:<address>"),
    (
        "DATA",
        "DATA, then the message, then a line with a single '.'",
    ),
    (
        "BDAT",
        "BDAT <size> [LAST], then exactly <size> octets of the message",
    ),
    ("RSET", "RSET (abandons the message being sent)"),
    ("NOOP", "NOOP (does nothing)"),
    ("QUIT", "QUIT (ends the session)"),
    ("VRFY", "VRFY <user> (is this a local user?)"),
    ("EXPN", "EXPN <list> (who is on this list?)"),
    ("HELP", "HELP [command]"),
    (
        "ETRN",
        "ETRN <domain> (deliver the mail queued for that domain now)",
    ),
    ("VERB", "VERB (verbose mode)"),
];

/// The syntax line for `verb` (upper case).
pub fn syntax(verb: &str) -> Option<&'static str> {
    SYNTAX.iter().find(|(v, _)| *v == verb).map(|(_, s)| *s)
}

fn syntax_error(verb: &str) -> Reply {
    Reply::new(
        501,
        Detail::InvalidArguments,
        format!("Syntax: {}", syntax(verb).unwrap_or(verb)),
    )
}

/// Parses one command line. A line that is not a command gets the reply that says why.
pub fn parse<'a>(line: &'a [u8]) -> Result<Command<'a>, Reply> {
    if line.contains(&0) {
        return Err(reply::NUL_IN_COMMAND);
    }
    let line = std::str::from_utf8(line).map_err(|_| reply::COMMAND_NOT_UTF8)?;
    let (verb, args) = match line.split_once(' ') {
        Some((verb, args)) => (verb, args.trim()),
        None => (line.trim_end(), ""),
    };
    let upper = verb.to_ascii_uppercase();
    let no_args = |command| {
        if args.is_empty() {
            Ok(command)
        } else {
            Err(syntax_error(&upper))
        }
    };
    let one_arg = |make: fn(&'a str) -> Command<'a>| {
        if args.is_empty() || args.contains(' ') {
            Err(syntax_error(&upper))
        } else {
            Ok(make(args))
        }
    };
    match upper.as_str() {
        "HELO" => one_arg(Command::Helo),
        "EHLO" => one_arg(Command::Ehlo),
        "MAIL" => mail(args),
        "RCPT" => rcpt(args),
        "DATA" => no_args(Command::Data),
        "BDAT" => bdat(args),
        "RSET" => no_args(Command::Rset),
        "NOOP" => Ok(Command::Noop),
        "QUIT" => no_args(Command::Quit),
        "VRFY" if !args.is_empty() => Ok(Command::Vrfy(args)),
        "EXPN" if !args.is_empty() => Ok(Command::Expn(args)),
        "VRFY" | "EXPN" => Err(syntax_error(&upper)),
        "HELP" => Ok(Command::Help(args)),
        "ETRN" => one_arg(Command::Etrn),
        "VERB" => Ok(Command::Verb),
        "TURN" => Ok(Command::Turn),
        "ATRN" => Ok(Command::Atrn),
        "SEND" => Ok(Command::TerminalDelivery("SEND")),
        "SOML" => Ok(Command::TerminalDelivery("SOML")),
        "SAML" => Ok(Command::TerminalDelivery("SAML")),
        "STARTTLS" => Ok(Command::NotOffered("STARTTLS")),
        "AUTH" => Ok(Command::NotOffered("AUTH")),
        "" => Err(reply::EMPTY_LINE),
        _ => Err(reply::UNKNOWN_COMMAND),
    }
}

/// Strips `keyword` ("FROM:" or "TO:") off the arguments, in any case, allowing spaces after the colon.
fn after_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| args[keyword.len()..].trim_start())
}

fn mail(args: &str) -> Result<Command<'_>, Reply> {
    let path = after_keyword(args, "FROM:").ok_or_else(|| syntax_error("MAIL"))?;
    let (from, rest) = address::parse_reverse_path(path, true)
        .map_err(|e| address_error(e, Detail::BadSenderSyntax, "sender"))?;
    let utf8 = !path[..path.len() - rest.len()].is_ascii();
    let mut params = MailParams::default();
    for (name, value) in parameters(rest)? {
        match (name.as_str(), value) {
            ("SIZE", Some(value)) if params.size.is_none() => {
                let size = value
                    .parse()
                    .ok()
                    .filter(|_| value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit()));
                params.size = Some(size.ok_or_else(|| {
                    Reply::new(
                        501,
                        Detail::InvalidArguments,
                        "Syntax: SIZE=<number of bytes>",
                    )
                })?);
            }
            ("BODY", Some(value)) if params.body.is_none() => {
                params.body = Some(match value.to_ascii_uppercase().as_str() {
                    "7BIT" => BodyType::SevenBit,
                    "8BITMIME" => BodyType::EightBitMime,
                    _ => {
                        return Err(Reply::new(
                            555,
                            Detail::InvalidArguments,
                            "Unsupported BODY type: 7BIT or 8BITMIME",
                        ));
                    }
                });
            }
            ("SMTPUTF8", None) if !params.smtputf8 => params.smtputf8 = true,
            ("SIZE" | "BODY" | "SMTPUTF8", _) => {
                return Err(Reply::new(
                    501,
                    Detail::InvalidArguments,
                    format!("Syntax: bad or repeated {name} parameter"),
                ));
            }
            _ => return Err(unknown_parameter(&name)),
        }
    }
    Ok(Command::Mail { from, params, utf8 })
}

fn rcpt(args: &str) -> Result<Command<'_>, Reply> {
    let path = after_keyword(args, "TO:").ok_or_else(|| syntax_error("RCPT"))?;
    let (to, rest) = address::parse_forward_path(path, true)
        .map_err(|e| address_error(e, Detail::BadDestinationSyntax, "recipient"))?;
    let utf8 = !path[..path.len() - rest.len()].is_ascii();
    if let Some((name, _)) = parameters(rest)?.first() {
        return Err(unknown_parameter(name));
    }
    Ok(Command::Rcpt { to, utf8 })
}

fn bdat(args: &str) -> Result<Command<'_>, Reply> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|s| s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok());
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(syntax_error("BDAT")),
    };
    match (size, words.next()) {
        (Some(size), None) => Ok(Command::Bdat { size, last }),
        _ => Err(syntax_error("BDAT")),
    }
}

/// `esmtp-param *(SP esmtp-param)`: keyword names upper-cased, values as given.
fn parameters(text: &str) -> Result<Vec<(String, Option<&str>)>, Reply> {
    if !text.is_empty() && !text.starts_with(' ') {
        return Err(Reply::new(
            501,
            Detail::InvalidArguments,
            "Syntax: a space must separate the address and its parameters",
        ));
    }
    text.split(' ')
        .filter(|p| !p.is_empty())
        .map(|param| {
            let (name, value) = match param.split_once('=') {
                Some((name, value)) => (name, Some(value)),
                None => (param, None),
            };
            let valid_name = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && value.is_none_or(|v| {
                    !v.is_empty() && v.bytes().all(|b| (33..=126).contains(&b) && b != b'=')
                });
            if !valid_name {
                return Err(Reply::new(
                    501,
                    Detail::InvalidArguments,
                    format!("Syntax: bad parameter '{param}'"),
                ));
            }
            Ok((name.to_ascii_uppercase(), value))
        })
        .collect()
}

fn unknown_parameter(name: &str) -> Reply {
    Reply::new(
        555,
        Detail::InvalidArguments,
        format!("Error: {name} is not supported here"),
    )
}

/// Addresses are parsed with UTF-8 allowed; whether the client may use it is the session's question.
fn address_error(error: AddressError, detail: Detail, role: &str) -> Reply {
    Reply::new(
        501,
        detail,
        format!("Error: bad {role} address: {}", error.describe()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::address::{Domain, Mailbox};

    fn code(line: &str) -> String {
        match parse(line.as_bytes()) {
            Ok(command) => format!("{command:?}"),
            Err(reply) => reply.to_string(),
        }
    }

    #[test]
    fn commands_are_case_insensitive_and_take_their_arguments() {
        let cases = [
            ("HELO client.example", Command::Helo("client.example")),
            ("ehlo [127.0.0.1]", Command::Ehlo("[127.0.0.1]")),
            ("data", Command::Data),
            ("DaTa", Command::Data),
            ("RSET", Command::Rset),
            ("NOOP anything at all", Command::Noop),
            ("quit", Command::Quit),
            ("VRFY alice", Command::Vrfy("alice")),
            ("EXPN staff list", Command::Expn("staff list")),
            ("HELP", Command::Help("")),
            ("HELP mail", Command::Help("mail")),
            ("ETRN example.org", Command::Etrn("example.org")),
            ("ETRN @example.org", Command::Etrn("@example.org")),
            ("VERB", Command::Verb),
            ("TURN", Command::Turn),
            ("ATRN example.org", Command::Atrn),
            ("SEND FROM:<a@b.c>", Command::TerminalDelivery("SEND")),
            ("SOML FROM:<a@b.c>", Command::TerminalDelivery("SOML")),
            ("saml FROM:<a@b.c>", Command::TerminalDelivery("SAML")),
            ("STARTTLS", Command::NotOffered("STARTTLS")),
            ("AUTH PLAIN", Command::NotOffered("AUTH")),
            (
                "BDAT 0 LAST",
                Command::Bdat {
                    size: 0,
                    last: true,
                },
            ),
            (
                "bdat 1000 last",
                Command::Bdat {
                    size: 1000,
                    last: true,
                },
            ),
            (
                "BDAT 1000",
                Command::Bdat {
                    size: 1000,
                    last: false,
                },
            ),
        ];
        for (line, expected) in cases {
            assert_eq!(parse(line.as_bytes()), Ok(expected), "{line}");
        }
    }

    #[test]
    fn mail_and_rcpt() {
        let alice = Mailbox {
            local: "alice".into(),
            domain: Domain::Name("example.org".into()),
        };
        assert_eq!(
            parse(b"MAIL FROM:<alice@example.org> SIZE=1000 BODY=8bitmime SMTPUTF8"),
            Ok(Command::Mail {
                from: ReversePath::Mailbox(alice.clone()),
                params: MailParams {
                    size: Some(1000),
                    body: Some(BodyType::EightBitMime),
                    smtputf8: true
                },
                utf8: false,
            })
        );
        assert_eq!(
            parse(b"mail from: <>"),
            Ok(Command::Mail {
                from: ReversePath::Null,
                params: MailParams::default(),
                utf8: false
            })
        );
        assert_eq!(
            parse(b"RCPT TO:<alice@example.org>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Mailbox(alice),
                utf8: false
            })
        );
        assert_eq!(
            parse(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt {
                to: ForwardPath::Postmaster,
                utf8: false
            })
        );
        assert!(matches!(
            parse("RCPT TO:<josé@example.org>".as_bytes()),
            Ok(Command::Rcpt { utf8: true, .. })
        ));
    }

    #[test]
    fn errors_get_the_right_reply() {
        let cases = [
            ("", "500 5.5.2"),
            ("XYZZY", "500 5.5.2 Error: command not recognized"),
            ("MAIL\0 FROM:<a@b>", "500 5.5.2 Error: NUL"),
            ("HELO", "501 5.5.4 Syntax: HELO"),
            ("EHLO two words", "501 5.5.4 Syntax: EHLO"),
            ("DATA now", "501 5.5.4 Syntax: DATA"),
            ("RSET x", "501 5.5.4"),
            ("QUIT now", "501 5.5.4"),
            ("VRFY", "501 5.5.4 Syntax: VRFY"),
            ("EXPN", "501 5.5.4 Syntax: EXPN"),
            ("ETRN", "501 5.5.4 Syntax: ETRN"),
            ("MAIL", "501 5.5.4 Syntax: MAIL FROM:<address>"),
            ("MAIL TO:<a@b.c>", "501 5.5.4 Syntax: MAIL"),
            (
                "MAIL FROM:a@b.c",
                "501 5.1.7 Error: bad sender address: an address must be in angle brackets",
            ),
            ("MAIL FROM:<a@b.c", "501 5.1.7"),
            (
                "MAIL FROM:<a@b.c> FOO=bar",
                "555 5.5.4 Error: FOO is not supported here",
            ),
            ("MAIL FROM:<a@b.c> SIZE=big", "501 5.5.4 Syntax: SIZE"),
            (
                "MAIL FROM:<a@b.c> SIZE=1 SIZE=2",
                "501 5.5.4 Syntax: bad or repeated SIZE",
            ),
            (
                "MAIL FROM:<a@b.c> BODY=BINARYMIME",
                "555 5.5.4 Unsupported BODY",
            ),
            ("MAIL FROM:<a@b.c> SMTPUTF8=yes", "501 5.5.4"),
            ("MAIL FROM:<a@b.c>SIZE=1", "501 5.5.4 Syntax: a space"),
            ("MAIL FROM:<a@b.c> =x", "501 5.5.4 Syntax: bad parameter"),
            ("RCPT", "501 5.5.4 Syntax: RCPT TO:<address>"),
            ("RCPT TO:<>", "501 5.1.3 Error: bad recipient address"),
            (
                "RCPT TO:<a@b.c> NOTIFY=NEVER",
                "555 5.5.4 Error: NOTIFY is not supported here",
            ),
            ("BDAT", "501 5.5.4 Syntax: BDAT"),
            ("BDAT x", "501 5.5.4"),
            ("BDAT -1", "501 5.5.4"),
            ("BDAT 10 FIRST", "501 5.5.4"),
            ("BDAT 10 LAST more", "501 5.5.4"),
            ("BDAT 999999999999999999999", "501 5.5.4"),
        ];
        for (line, expected) in cases {
            let got = code(line);
            assert!(
                got.starts_with(expected),
                "{line:?}: got {got:?}, expected {expected:?}"
            );
        }
        assert!(
            parse(b"MAIL FROM:<a@b.c> \xff")
                .unwrap_err()
                .to_string()
                .contains("UTF-8")
        );
    }
}
