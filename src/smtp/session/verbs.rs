//! The verb table: everything the server knows about each SMTP command, one row per verb. The rows drive
//! command parsing, the 501 syntax replies, the states a command is allowed in, HELP, and the EHLO keyword
//! list, in the manner of Postfix's `smtpd_cmd_table[]`; the words of each row (help text and RFC
//! reference) are written for people, so anything that explains a command reads them from here (smtp
//! re-exports the table). It is part of the session: its rows name the session's handlers, and the session
//! dispatches through it.
//!
//! # Adding a verb
//!
//! 1. Add a row to [`VERBS`] (or replace the `NotOffered` row the verb already has): its syntax as a 501
//!    reply should show it, a plain-words `help` sentence, the RFC section that defines it, the [`State`]s
//!    that allow it, and its EHLO keyword if it has one (keywords are announced in table order).
//! 2. Pick the [`Handler`] variant for the shape of its arguments and write the handler it names: a
//!    `fn name_command(&mut self, ...) -> Answer` on `Session` (session.rs). The handler sees
//!    arguments that already fit and runs only in an allowed state; it returns the reply, or writes its
//!    replies itself and returns the [`Step`](super::Step) the caller must take. A new shape of arguments
//!    means a parser in command.rs and a variant here.
//! 3. Add at least one line for it to `EVERY_VERB` in verbs_tests.rs (the test fails until you do); the
//!    other table tests (HELP, syntax errors, states, EHLO) then cover it by themselves.
//!
//! Reply texts that never change are constants (`Reply::fixed`); status codes are [`Detail`](crate::smtp::Detail)s.

use std::borrow::Cow;

use super::{Answer, Session, SessionParams};
use crate::smtp::command::{Chunk, MailArgs, RcptArgs};
use crate::smtp::reply::Reply;

/// Where a session stands in the dialogue. A row names the states that allow its verb; in any other state
/// the verb is answered with the 503 that says what is missing (`out_of_order` in session.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Connected; no HELO or EHLO yet.
    Connected,
    /// HELO or EHLO given; no transaction open.
    Greeted,
    /// MAIL accepted; no recipient yet.
    Mail,
    /// MAIL and at least one recipient accepted: the message may follow.
    Rcpt,
    /// The message is being sent in BDAT chunks and the last has not come yet.
    Chunking,
}

impl State {
    /// The state in plain words.
    pub const fn describe(self) -> &'static str {
        match self {
            State::Connected => "connected, before HELO or EHLO",
            State::Greeted => "after HELO or EHLO, no message started",
            State::Mail => "after MAIL, before any accepted recipient",
            State::Rcpt => "after MAIL and at least one accepted RCPT",
            State::Chunking => "between BDAT chunks of one message",
        }
    }
}

const ANY_STATE: &[State] = &[
    State::Connected,
    State::Greeted,
    State::Mail,
    State::Rcpt,
    State::Chunking,
];
const OUTSIDE_TRANSACTION: &[State] = &[State::Connected, State::Greeted];
const IN_TRANSACTION: &[State] = &[State::Mail, State::Rcpt, State::Chunking];

/// One SMTP command.
pub struct Verb {
    /// The verb, upper case; clients may write it in any case.
    pub name: &'static str,
    /// How the command is written; a 501 reply shows it as `Syntax: ...`.
    pub syntax: &'static str,
    /// What the command does, in plain words (HELP shows it).
    pub help: &'static str,
    /// Where the command is defined, e.g. "RFC 5321 §4.1.1.2".
    pub reference: &'static str,
    /// The states in which the command is carried out.
    pub states: &'static [State],
    /// The keyword EHLO announces for it, if any.
    pub ehlo: Option<&'static str>,
    /// Whether EHLO announces the keyword in this session; None: always.
    pub(super) announce: Option<fn(&Session) -> bool>,
    /// Whether this session carries the command out, where a setting decides (HELP lists it only then); None:
    /// always, unless the handler is [`Handler::NotOffered`].
    pub(super) available: Option<fn(&Session) -> bool>,
    /// What the arguments must look like, and what carries the command out.
    pub(super) handler: Handler,
}

/// The kind of arguments a verb takes, each with the session method that gets them parsed. Arguments are
/// checked before the state: a malformed command gets its 501 wherever it comes.
#[derive(Clone, Copy)]
pub(super) enum Handler {
    /// No argument may follow the verb.
    NoArgument(fn(&mut Session) -> Answer),
    /// Whatever follows the verb is ignored.
    AnyArgument(fn(&mut Session) -> Answer),
    /// Exactly one word.
    Word(fn(&mut Session, &str) -> Answer),
    /// Some text, which must not be empty.
    Text(fn(&mut Session, &str) -> Answer),
    /// Some text, possibly empty.
    OptionalText(fn(&mut Session, &str) -> Answer),
    Mail(fn(&mut Session, MailArgs) -> Answer),
    Rcpt(fn(&mut Session, RcptArgs) -> Answer),
    /// A BDAT chunk follows the command line. It is read even when the command is refused (RFC 3030 §2), and
    /// the refusal given as the answer to the chunk.
    Chunk(fn(&mut Session, Chunk, Option<Reply>) -> Answer),
    /// The command is known but not offered: any arguments, answered 502 with this text.
    NotOffered(&'static str),
}

/// Every verb the server knows. EHLO announces the keywords in this order, after [`EXTENSIONS`].
pub const VERBS: &[Verb] = &[
    Verb {
        name: "HELO",
        syntax: "HELO <your host name>",
        help: "Says hello and gives the client's host name; starts a plain SMTP session.",
        reference: "RFC 5321 §4.1.1.1",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::Word(Session::helo_command),
    },
    Verb {
        name: "EHLO",
        syntax: "EHLO <your host name>",
        help: "Says hello and gives the client's host name; the answer lists the extensions this server offers.",
        reference: "RFC 5321 §4.1.1.1",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::Word(Session::ehlo_command),
    },
    Verb {
        name: "MAIL",
        syntax: "MAIL FROM:<address> [SIZE=<bytes>] [BODY=7BIT|8BITMIME] [SMTPUTF8]",
        help: "Starts a message and names its sender, the address that hears of it if delivery fails.",
        reference: "RFC 5321 §4.1.1.2",
        states: &[State::Greeted],
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::Mail(Session::mail_command),
    },
    Verb {
        name: "RCPT",
        syntax: "RCPT TO:<address>",
        help: "Names one recipient of the message; repeat it for each recipient.",
        reference: "RFC 5321 §4.1.1.3",
        states: IN_TRANSACTION,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::Rcpt(Session::rcpt_command),
    },
    Verb {
        name: "DATA",
        syntax: "DATA",
        help: "Sends the message itself: after the 354 reply, the message, then a line holding only '.'.",
        reference: "RFC 5321 §4.1.1.4",
        states: &[State::Rcpt],
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::NoArgument(Session::data_command),
    },
    Verb {
        name: "BDAT",
        syntax: "BDAT <size> [LAST], then exactly <size> octets of the message",
        help: "Sends the message in chunks of a stated size, with no end-of-data line; LAST marks the final chunk.",
        reference: "RFC 3030 §2",
        states: &[State::Rcpt, State::Chunking],
        ehlo: Some("CHUNKING"),
        announce: None,
        available: None,
        handler: Handler::Chunk(Session::bdat_command),
    },
    Verb {
        name: "RSET",
        syntax: "RSET",
        help: "Abandons the message being sent; the session stays open.",
        reference: "RFC 5321 §4.1.1.5",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::NoArgument(Session::rset_command),
    },
    Verb {
        name: "NOOP",
        syntax: "NOOP",
        help: "Does nothing but get an answer: shows the server is still there.",
        reference: "RFC 5321 §4.1.1.9",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::AnyArgument(Session::noop_command),
    },
    Verb {
        name: "QUIT",
        syntax: "QUIT",
        help: "Ends the session; the server answers and closes the connection.",
        reference: "RFC 5321 §4.1.1.10",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::NoArgument(Session::quit_command),
    },
    Verb {
        name: "VRFY",
        syntax: "VRFY <user>",
        help: "Asks whether a name is a user here.",
        reference: "RFC 5321 §4.1.1.6",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::Text(Session::vrfy_command),
    },
    Verb {
        name: "EXPN",
        syntax: "EXPN <list>",
        help: "Asks who is on a mailing list here.",
        reference: "RFC 5321 §4.1.1.7",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::Text(Session::expn_command),
    },
    Verb {
        name: "ETRN",
        syntax: "ETRN <domain>",
        help: "Asks the server to try now to deliver the mail it holds for a domain.",
        reference: "RFC 1985",
        states: OUTSIDE_TRANSACTION,
        ehlo: Some("ETRN"),
        announce: None,
        available: None,
        handler: Handler::Word(Session::etrn_command),
    },
    Verb {
        name: "HELP",
        syntax: "HELP [command]",
        help: "Lists the commands, or explains one of them.",
        reference: "RFC 5321 §4.1.1.8",
        states: ANY_STATE,
        ehlo: Some("HELP"),
        announce: None,
        available: None,
        handler: Handler::OptionalText(Session::help_command),
    },
    Verb {
        name: "VERB",
        syntax: "VERB [OFF]",
        help: "Asks the server to narrate its steps as extra lines of its replies (a Sendmail extension, for trusted clients); VERB OFF stops it.",
        reference: "Sendmail, no RFC",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::OptionalText(Session::verb_command),
    },
    Verb {
        name: "TURN",
        syntax: "TURN",
        help: "Asks the server to swap roles and send the client the mail it holds for it.",
        reference: "RFC 5321 Appendix F.1",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: None,
        handler: Handler::NotOffered(
            "Error: TURN is refused: it would hand mail queued here to an unauthenticated client",
        ),
    },
    Verb {
        name: "ATRN",
        syntax: "ATRN [domain[,domain...]]",
        help: "Like TURN, for an authenticated client: swap roles and receive the mail held for its domains.",
        reference: "RFC 2645",
        states: OUTSIDE_TRANSACTION,
        ehlo: Some("ATRN"),
        announce: Some(|session| session.params.odmr),
        available: Some(|session| session.params.odmr),
        handler: Handler::OptionalText(Session::atrn_command),
    },
    Verb {
        name: "SEND",
        syntax: "SEND FROM:<address>",
        help: "Starts a message to be shown on the recipients' terminals instead of stored in their mailboxes.",
        reference: "RFC 821 §3.5",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: Some(|session| session.policy.terminal_delivery()),
        handler: Handler::Mail(Session::send_command),
    },
    Verb {
        name: "SOML",
        syntax: "SOML FROM:<address>",
        help: "Starts a message to be shown on the recipients' terminals, or stored where they are not logged in.",
        reference: "RFC 821 §3.5",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: Some(|session| session.policy.terminal_delivery()),
        handler: Handler::Mail(Session::soml_command),
    },
    Verb {
        name: "SAML",
        syntax: "SAML FROM:<address>",
        help: "Starts a message to be both shown on the recipients' terminals and stored in their mailboxes.",
        reference: "RFC 821 §3.5",
        states: ANY_STATE,
        ehlo: None,
        announce: None,
        available: Some(|session| session.policy.terminal_delivery()),
        handler: Handler::Mail(Session::saml_command),
    },
    Verb {
        name: "STARTTLS",
        syntax: "STARTTLS",
        help: "Turns the connection into an encrypted one (TLS) before any mail is sent.",
        reference: "RFC 3207 §4",
        states: &[State::Greeted],
        ehlo: Some("STARTTLS"),
        announce: Some(|session| session.params.tls_offered && session.envelope.tls.is_none()),
        available: None,
        handler: Handler::NoArgument(Session::starttls_command),
    },
    Verb {
        name: "AUTH",
        syntax: "AUTH <mechanism> [initial-response]",
        help: "Logs the client in with a user name and password (SASL).",
        reference: "RFC 4954 §4",
        states: &[State::Greeted],
        ehlo: Some("AUTH PLAIN LOGIN"),
        // Only inside TLS, and not once the client has logged in (RFC 4954 4).
        announce: Some(|session| {
            session.params.auth_offered
                && session.envelope.tls.is_some()
                && session.envelope.user.is_none()
        }),
        available: None,
        handler: Handler::Text(Session::auth_command),
    },
];

/// A service extension EHLO announces that is no one verb's: it changes how other commands behave.
pub struct Extension {
    pub keyword: &'static str,
    /// What the extension does, in plain words.
    pub help: &'static str,
    pub reference: &'static str,
    /// The keyword's parameter, from the session's settings: the host name and `max_message_size` only, for which
    /// the EHLO reply is built once (see `fixed.rs`).
    parameter: Option<fn(&SessionParams) -> String>,
}

/// The extensions EHLO announces before the verbs' keywords.
pub const EXTENSIONS: &[Extension] = &[
    Extension {
        keyword: "PIPELINING",
        help: "The client may send several commands without waiting for each reply.",
        reference: "RFC 2920",
        parameter: None,
    },
    Extension {
        keyword: "SIZE",
        help: "MAIL may announce the message size (SIZE=); the number is the largest message accepted.",
        reference: "RFC 1870",
        parameter: Some(|params| params.max_message_size.to_string()),
    },
    Extension {
        keyword: "8BITMIME",
        help: "Messages may hold 8-bit text (MAIL ... BODY=8BITMIME).",
        reference: "RFC 6152",
        parameter: None,
    },
    Extension {
        keyword: "SMTPUTF8",
        help: "Addresses and headers may be UTF-8 (MAIL ... SMTPUTF8).",
        reference: "RFC 6531",
        parameter: None,
    },
    Extension {
        keyword: "ENHANCEDSTATUSCODES",
        help: "Replies carry a status code such as 2.1.5 that says precisely what happened.",
        reference: "RFC 2034",
        parameter: None,
    },
];

/// The verb named `name`, in any case.
pub fn find(name: &str) -> Option<&'static Verb> {
    VERBS
        .iter()
        .find(|verb| verb.name.eq_ignore_ascii_case(name))
}

/// What HELP says about a verb or an extension keyword (in any case): how it is written or announced, what
/// it does, and where it is defined.
pub(super) fn help_lines(topic: &str) -> Option<Vec<Cow<'static, str>>> {
    let (first, help, reference) = match find(topic) {
        Some(verb) => (verb.syntax, verb.help, verb.reference),
        None => {
            let extension = EXTENSIONS
                .iter()
                .find(|extension| extension.keyword.eq_ignore_ascii_case(topic))?;
            (extension.keyword, extension.help, extension.reference)
        }
    };
    // Reply text is ASCII.
    let reference = reference.replace('§', "section ");
    Some(vec![
        Cow::Borrowed(first),
        Cow::Borrowed(help),
        Cow::Owned(format!("See {reference}")),
    ])
}

impl Verb {
    /// Whether the command is carried out in `state`.
    pub fn allowed_in(&self, state: State) -> bool {
        self.states.contains(&state)
    }

    /// Whether `session` carries the command out at all, in some state.
    pub(super) fn offered(&self, session: &Session) -> bool {
        !matches!(self.handler, Handler::NotOffered(_))
            && self.available.is_none_or(|available| available(session))
    }
}

/// Which of the verbs that EHLO announces only at times it announces to `session` now, one bit each in table
/// order: with the host name and SIZE, what decides the EHLO reply.
pub(super) fn announced_now(session: &Session) -> u32 {
    VERBS
        .iter()
        .filter_map(|verb| verb.announce)
        .enumerate()
        .fold(0, |bits, (n, announce)| {
            bits | u32::from(announce(session)) << n
        })
}

/// The lines of the EHLO reply after the host name: the extensions, then the keywords of the verbs the
/// session offers now.
pub(super) fn ehlo_keywords(session: &Session) -> impl Iterator<Item = Cow<'static, str>> + '_ {
    let extensions = EXTENSIONS
        .iter()
        .map(|extension| match extension.parameter {
            None => Cow::Borrowed(extension.keyword),
            Some(parameter) => Cow::Owned(format!(
                "{} {}",
                extension.keyword,
                parameter(&session.params)
            )),
        });
    let verbs = VERBS
        .iter()
        .filter(|verb| verb.announce.is_none_or(|announce| announce(session)));
    extensions.chain(verbs.filter_map(|verb| verb.ehlo.map(Cow::Borrowed)))
}

/// The verbs `session` carries out, as HELP lists them.
pub(super) fn offered_names(session: &Session) -> String {
    let names: Vec<&str> = VERBS
        .iter()
        .filter(|verb| verb.offered(session))
        .map(|verb| verb.name)
        .collect();
    names.join(" ")
}

#[cfg(test)]
#[path = "verbs_tests.rs"]
mod tests;
