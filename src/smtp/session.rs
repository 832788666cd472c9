//! The SMTP session as a state machine: input bytes in, replies and message events out. No sockets, files or
//! clocks: the caller reads and writes, stores the message, and tells the session what became of it.

use std::borrow::Cow;
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use log::trace;

use super::ReversePath;
use super::address::ForwardPath;
use super::command::{self, ArgError, Chunk, MailArgs, MailParams, RcptArgs};
use super::data::{BareLf, DataReceiver, DataStep};
use super::hostname::{HostNameRules, check_host_name};
use super::reply::{self, Echo, Escaped, Reply};
use super::sasl::{self, Credentials, SaslError, SaslStep};
use super::status::Detail;
use crate::events::{self, Capture, Event, Kind, Registration};
use crate::step;
use verbs::Handler;
pub use verbs::{EXTENSIONS, Extension, State, VERBS, Verb, find as find_verb};

mod fixed;
mod verbs;

/// The protocol settings of a session.
#[derive(Clone, Debug)]
pub struct SessionParams {
    /// Names the session in logs ("s42").
    pub id: String,
    /// This host's name, in the greeting and replies.
    pub hostname: String,
    pub max_message_size: u64,
    pub max_recipients: usize,
    /// Error replies before the session says 421 and closes.
    pub max_errors: u32,
    /// The longest command line, in octets with its line end.
    pub max_line_length: usize,
    pub bare_lf: BareLf,
    /// STARTTLS may be offered: a certificate is configured and the connection can carry TLS.
    pub tls_offered: bool,
    /// AUTH may be offered (inside TLS): some users may authenticate.
    pub auth_offered: bool,
    /// MAIL needs TLS first (`tls_required`).
    pub tls_required: bool,
    /// A submission port (RFC 6409): MAIL needs AUTH first, and the sender must be the user's.
    pub submission: bool,
    /// An On-Demand Mail Relay port (RFC 2645): ATRN is answered.
    pub odmr: bool,
}

/// What the session cannot decide by itself: who is a local user, who may relay, whose password is right.
pub trait Policy: Send {
    fn recipient(&self, to: &ForwardPath) -> RcptVerdict;
    fn vrfy(&self, query: &str) -> Reply;
    fn expn(&self, list: &str) -> Reply;
    /// ETRN for `domain`; `authenticated` says whether the client has logged in with AUTH.
    fn etrn(&self, domain: &str, authenticated: bool) -> Reply;
    /// ATRN from the authenticated `user` for `domains` (empty: all of theirs): Ok when the mail waiting for
    /// them is set aside for this connection, to be sent once the roles have turned; else the refusal.
    fn atrn(&self, user: &str, domains: &[String]) -> Result<(), Reply>;
    /// Whether `user` may log in with `password`.
    fn authenticate(&self, user: &str, password: &[u8]) -> bool;
    /// Whether the authenticated `user` may give `sender` as the envelope sender on a submission port.
    fn may_send_as(&self, user: &str, sender: &ReversePath) -> bool;
    /// Whether this client (`authenticated` or not) may have the server's steps narrated (VERB): None if not;
    /// else whether the narration may disclose who is behind an alias.
    fn narration(&self, authenticated: bool) -> Option<bool>;
    /// Whether the spool has room for a message of `size` bytes (0 when the client declared no SIZE) and still
    /// keeps its reserve for delivery records and bounces.
    fn spool_has_room(&self, size: u64) -> bool;
    /// Whether SEND, SOML and SAML are carried out (terminal delivery is on).
    fn terminal_delivery(&self) -> bool;
    /// Whether a recipient RCPT accepted can have a message written to a terminal: SEND, SOML and SAML are for
    /// local users only, and SEND (`terminal_only`) for one logged in who accepts messages.
    fn terminal_recipient(&self, to: &ForwardPath, terminal_only: bool) -> Result<(), Reply>;
}

/// Where the message goes: RFC 821's MAIL (the mailbox), SEND (the terminal), SOML (the terminal, else the
/// mailbox) and SAML (both).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    #[default]
    Mail,
    Send,
    SendOrMail,
    SendAndMail,
}

/// The policy's answer to RCPT.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RcptVerdict {
    Accept,
    /// A local domain, but no such user: 550 5.1.1.
    UnknownUser,
    /// A remote domain from a client that may not relay: 550 5.7.1.
    RelayDenied,
}

/// How a message came in: HELO gives SMTP, EHLO gives ESMTP; mail that came in by no SMTP session at all
/// (the sendmail command, notifications) is local. They go into the spool and the Received header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Smtp,
    Esmtp,
    /// ESMTP over TLS (RFC 3848).
    Esmtps,
    /// ESMTP with AUTH (RFC 3848).
    Esmtpa,
    /// ESMTP over TLS with AUTH (RFC 3848).
    Esmtpsa,
    Local,
}

impl Protocol {
    const ALL: [Protocol; 6] = [
        Protocol::Smtp,
        Protocol::Esmtp,
        Protocol::Esmtps,
        Protocol::Esmtpa,
        Protocol::Esmtpsa,
        Protocol::Local,
    ];

    /// The name the spool and the Received header use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Esmtp => "ESMTP",
            Protocol::Esmtps => "ESMTPS",
            Protocol::Esmtpa => "ESMTPA",
            Protocol::Esmtpsa => "ESMTPSA",
            Protocol::Local => "local",
        }
    }

    /// The protocol [`Protocol::as_str`] names.
    pub fn from_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

/// The transaction: who said hello, who sends, to whom, with which parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub helo: String,
    pub protocol: Protocol,
    /// What TLS agreed on ("TLSv1.3 with cipher ..."), when the session is encrypted.
    pub tls: Option<String>,
    /// The user the client authenticated as.
    pub user: Option<String>,
    pub sender: ReversePath,
    pub recipients: Vec<ForwardPath>,
    pub params: MailParams,
    pub mode: Mode,
}

impl Envelope {
    /// The protocol as the Received header's `with` names it (RFC 3848): ESMTP, and S for TLS, A for AUTH.
    pub fn with_keyword(&self) -> Protocol {
        match (self.protocol, self.tls.is_some(), self.user.is_some()) {
            (Protocol::Esmtp, true, false) => Protocol::Esmtps,
            (Protocol::Esmtp, false, true) => Protocol::Esmtpa,
            (Protocol::Esmtp, true, true) => Protocol::Esmtpsa,
            (protocol, ..) => protocol,
        }
    }
}

/// What the caller must do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Write the output, then read more input.
    NeedInput,
    /// A message begins: open a place to store it (the envelope is complete).
    StartMessage,
    /// Message content to store, exactly as given.
    Data(&'a [u8]),
    /// The message is complete: make it durable, then call [`Session::message_queued`].
    EndMessage,
    /// The message is refused (the reply is already written): throw away what was stored.
    AbortMessage,
    /// Write the output and close the connection.
    Close,
    /// Write the output (the 220), throw away any input already read (it came before the handshake and must
    /// never be taken as commands: CVE-2011-0411), run the TLS handshake, then call [`Session::tls_started`];
    /// if the handshake fails, close.
    StartTls,
    /// An authentication failed: log it with the client's address, and wait `delay` before writing the
    /// output, so that guessing passwords is slow.
    AuthFailed { user: String, delay: Duration },
    /// ATRN was accepted (RFC 2645): write the output (the 250), then become the client on this connection
    /// and send the mail the policy set aside. The session is over.
    Turn,
}

enum Phase {
    Commands,
    /// The rest of an over-long command line is being thrown away.
    LongLine,
    Data(DataReceiver),
    /// A BDAT chunk; `refusal` is the reply owed once a chunk that is not accepted has been drained.
    Chunk {
        size: u64,
        remaining: u64,
        last: bool,
        refusal: Option<Reply>,
    },
    Closed,
}

pub struct Session {
    params: SessionParams,
    policy: Box<dyn Policy>,
    phase: Phase,
    /// Where the dialogue stands: what the verb table's rows are checked against.
    state: State,
    envelope: Envelope,
    message_size: u64,
    too_big: bool,
    errors: u32,
    messages: u32,
    output: Vec<u8>,
    /// An AUTH exchange waiting for the client's next response line.
    sasl: Option<sasl::Exchange>,
    auth_failures: u32,
    /// VERB: the session's steps, captured to go into its replies.
    narration: Option<(Arc<Capture>, Registration)>,
}

/// The longest wait before answering a failed authentication.
const MAX_TARPIT: Duration = Duration::from_secs(16);

impl Session {
    pub fn new(params: SessionParams, policy: Box<dyn Policy>) -> Session {
        Session {
            params,
            policy,
            phase: Phase::Commands,
            state: State::Connected,
            envelope: Envelope::default(),
            message_size: 0,
            too_big: false,
            errors: 0,
            messages: 0,
            output: Vec::with_capacity(512),
            sasl: None,
            auth_failures: 0,
            narration: None,
        }
    }

    /// The TLS handshake after [`Step::StartTls`] (or on an implicit-TLS port, before the greeting) is done:
    /// `description` says what it agreed on. Everything the client said before is forgotten (RFC 3207 4.2):
    /// it must say EHLO again.
    pub fn tls_started(&mut self, description: String) {
        self.set_state(State::Connected);
        self.envelope = Envelope {
            tls: Some(description),
            ..Envelope::default()
        };
        self.sasl = None;
    }

    /// Writes the 220 greeting.
    pub fn greeting(&mut self) {
        self.reply(fixed::greeting(&self.params));
    }

    /// Replies waiting to be written.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    pub fn clear_output(&mut self) {
        self.output.clear();
    }

    /// The name the client gave in HELO or EHLO.
    pub fn helo(&self) -> Option<&str> {
        (self.state != State::Connected).then_some(self.envelope.helo.as_str())
    }

    pub fn messages_accepted(&self) -> u32 {
        self.messages
    }

    /// The capture of the session's steps while VERB is on.
    pub fn narration(&self) -> Option<&Arc<Capture>> {
        self.narration.as_ref().map(|(capture, _)| capture)
    }

    /// The transaction's envelope; complete from [`Step::StartMessage`] on.
    pub fn envelope(&self) -> &Envelope {
        &self.envelope
    }

    /// The server ends the session (shutdown, timeout) with `reply`.
    pub fn shutdown(&mut self, reply: Reply) {
        self.reply(reply);
        self.set_phase(Phase::Closed);
    }

    /// The connection is gone; a message in progress is lost.
    pub fn input_closed(&mut self) {
        if matches!(self.phase, Phase::Data(_) | Phase::Chunk { .. }) {
            step!(
                &self.params.id,
                "connection lost in the middle of a message; nothing kept"
            );
        }
        self.set_phase(Phase::Closed);
    }

    /// After [`Step::EndMessage`]: the message was stored under `Ok(queue id)`, or not, with `Err(reason)`.
    pub fn message_queued(&mut self, result: Result<&str, &str>) {
        self.message_done(match result {
            Ok(id) => Reply::new(250, Detail::Undefined, format!("Ok: queued as {id}")),
            Err(why) => Reply::new(452, Detail::MailSystemFull, why.to_string()),
        });
    }

    /// After [`Step::EndMessage`]: the message has been dealt with (SEND, SOML, SAML), and `reply` says how.
    pub fn message_done(&mut self, reply: Reply) {
        if !reply.is_error() {
            self.messages += 1;
        }
        self.reply(reply);
        self.reset_transaction();
    }

    /// Consumes a prefix of `input`; returns its length and what the caller must do. Call again with the rest
    /// of the input until it returns [`Step::NeedInput`] or [`Step::Close`].
    pub fn step<'a>(&mut self, input: &'a [u8]) -> (usize, Step<'a>) {
        let mut used = 0;
        loop {
            let rest = &input[used..];
            match &mut self.phase {
                Phase::Closed => return (used, Step::Close),
                Phase::Data(receiver) => {
                    let (n, data_step) = receiver.step(rest);
                    used += n;
                    match data_step {
                        DataStep::NeedInput => return (used, Step::NeedInput),
                        DataStep::Content(content) => {
                            if let Some(content) = self.count(content) {
                                return (used, Step::Data(content));
                            }
                        }
                        DataStep::End => return (used, self.end_of_data()),
                    }
                }
                Phase::Chunk { remaining: 0, .. } => {
                    if let Some(step) = self.end_of_chunk() {
                        return (used, step);
                    }
                }
                Phase::Chunk {
                    remaining, refusal, ..
                } => {
                    if rest.is_empty() {
                        return (used, Step::NeedInput);
                    }
                    let n = rest
                        .len()
                        .min(usize::try_from(*remaining).unwrap_or(usize::MAX));
                    *remaining -= n as u64;
                    used += n;
                    if refusal.is_none()
                        && let Some(content) = self.count(&rest[..n])
                    {
                        return (used, Step::Data(content));
                    }
                }
                Phase::LongLine => match memchr::memchr(b'\n', rest) {
                    None => return (input.len(), Step::NeedInput),
                    Some(lf) => {
                        used += lf + 1;
                        self.set_phase(Phase::Commands);
                        self.line_too_long();
                    }
                },
                Phase::Commands => {
                    let Some(lf) = memchr::memchr(b'\n', rest) else {
                        if rest.len() < self.params.max_line_length {
                            return (used, Step::NeedInput);
                        }
                        self.set_phase(Phase::LongLine);
                        return (input.len(), Step::NeedInput);
                    };
                    used += lf + 1;
                    if lf + 1 > self.params.max_line_length {
                        self.line_too_long();
                        continue;
                    }
                    let line = rest[..lf].strip_suffix(b"\r").unwrap_or(&rest[..lf]);
                    if events::enabled() {
                        // Credentials never reach the event stream: an AUTH line's initial response and the
                        // responses that follow are shown as what they are, not as what they say.
                        // The client's bytes are shown escaped, as replies show them.
                        let secret = self.secret_shown_as(line);
                        let (shown, raw) = match &secret {
                            Some(secret) => (secret.as_bytes(), secret.as_bytes()),
                            None => (line, &rest[..=lf]),
                        };
                        events::emit(&Event {
                            target: module_path!(),
                            scope: &self.params.id,
                            kind: Kind::Command(raw),
                            text: format_args!("{}", Escaped(shown)),
                        });
                    }
                    if let Some(step) = self.command(line) {
                        return (used, step);
                    }
                }
            }
        }
    }

    fn line_too_long(&mut self) {
        let limit = self.params.max_line_length;
        self.reply(Reply::new(
            500,
            Detail::SyntaxError,
            format!("Error: line too long (the limit is {limit} octets)"),
        ));
    }

    /// Counts message content against the size limit; None when there is nothing to store.
    fn count<'a>(&mut self, content: &'a [u8]) -> Option<&'a [u8]> {
        self.message_size += content.len() as u64;
        if self.message_size > self.params.max_message_size {
            self.too_big = true;
        }
        (!content.is_empty() && !self.too_big).then_some(content)
    }

    fn end_of_data(&mut self) -> Step<'static> {
        let Phase::Data(receiver) = mem::replace(&mut self.phase, Phase::Commands) else {
            unreachable!("end of data outside DATA");
        };
        if self.too_big {
            return self.refuse_message(self.too_big_reply());
        }
        if receiver.saw_bare_lf {
            return self.refuse_message(reply::BARE_LF);
        }
        Step::EndMessage
    }

    fn end_of_chunk(&mut self) -> Option<Step<'static>> {
        let Phase::Chunk {
            size,
            last,
            refusal,
            ..
        } = mem::replace(&mut self.phase, Phase::Commands)
        else {
            unreachable!("end of chunk outside BDAT");
        };
        if let Some(refusal) = refusal {
            self.reply(refusal);
            return None;
        }
        if self.too_big {
            return Some(self.refuse_message(self.too_big_reply()));
        }
        if last {
            return Some(Step::EndMessage);
        }
        self.reply(Reply::new(
            250,
            Detail::Undefined,
            format!("Ok: {size} octets received"),
        ));
        None
    }

    /// The refusal of a message over the size limit, whether MAIL announced it (SIZE=) or the data showed it.
    fn too_big_reply(&self) -> Reply {
        let limit = self.params.max_message_size;
        Reply::new(
            552,
            Detail::MessageTooBig,
            format!("Error: message too big: the limit is {limit} bytes"),
        )
    }

    fn refuse_message(&mut self, reply: Reply) -> Step<'static> {
        self.reply(reply);
        self.reset_transaction();
        Step::AbortMessage
    }

    /// Ends the transaction, if one is open; a session that has not said hello stays where it is.
    fn reset_transaction(&mut self) {
        if self.state != State::Connected {
            self.set_state(State::Greeted);
        }
        self.envelope.sender = ReversePath::Null;
        self.envelope.recipients.clear();
        self.envelope.params = MailParams::default();
        self.envelope.mode = Mode::Mail;
    }

    fn set_state(&mut self, state: State) {
        if state != self.state {
            trace!("{}: {:?} -> {state:?}", self.params.id, self.state);
            self.state = state;
        }
    }

    fn set_phase(&mut self, phase: Phase) {
        trace!(
            "{}: {} -> {}",
            self.params.id,
            self.phase.name(),
            phase.name()
        );
        self.phase = phase;
    }

    /// Writes a reply; error replies count, and too many of them end the session.
    fn reply(&mut self, reply: Reply) {
        let reply = match self.narration() {
            Some(capture) => match capture.take_lines() {
                lines if lines.is_empty() => reply,
                lines => reply.after_lines(lines),
            },
            None => reply,
        };
        self.send(&reply);
        if reply.is_error()
            && reply.status() != reply::TOO_MANY_RECIPIENTS.status()
            && !matches!(self.phase, Phase::Closed)
        {
            self.errors += 1;
            if self.errors >= self.params.max_errors {
                let text = format!(
                    "{} Error: too many errors; closing the connection",
                    self.params.hostname
                );
                self.send(&Reply::new(421, Detail::OtherSecurity, text));
                self.set_phase(Phase::Closed);
            }
        }
    }

    /// Writes a reply to the output, and tells the event stream.
    fn send(&mut self, reply: &Reply) {
        if events::enabled() {
            events::emit(&Event {
                target: module_path!(),
                scope: &self.params.id,
                kind: Kind::Reply(reply.code()),
                text: format_args!("{reply}"),
            });
        }
        reply.write_to(&mut self.output);
    }

    /// Carries out one command line; returns the step the caller must take, if any.
    fn command(&mut self, line: &[u8]) -> Option<Step<'static>> {
        if let Some(exchange) = self.sasl.take() {
            let answer = self.sasl_response(exchange, line);
            return self.finish(answer);
        }
        let answer = match command::split(line) {
            Err(reply) => Answer::Reply(reply),
            Ok((name, args)) => match verbs::find(name) {
                None => Answer::Reply(reply::UNKNOWN_COMMAND),
                Some(verb) => self.carry_out(verb, args).unwrap_or_else(Answer::Reply),
            },
        };
        self.finish(answer)
    }

    /// What the event stream shows instead of `line` when the line holds a secret.
    fn secret_shown_as(&self, line: &[u8]) -> Option<String> {
        if self.sasl.is_some() {
            return Some("<authentication response>".into());
        }
        let text = String::from_utf8_lossy(line);
        let mut words = text.split(' ').filter(|w| !w.is_empty());
        let verb = words.next()?;
        let mechanism = words.next()?;
        (verb.eq_ignore_ascii_case("AUTH") && words.next().is_some())
            .then(|| format!("AUTH {mechanism} <credentials>"))
    }

    /// Writes the answer's reply, or passes on its step.
    fn finish(&mut self, answer: Answer) -> Option<Step<'static>> {
        match answer {
            Answer::Reply(reply) => {
                self.reply(reply);
                self.closed_step()
            }
            Answer::Step(step) => step.or_else(|| self.closed_step()),
        }
    }

    /// Parses the arguments as the verb's row says, checks the state, and calls the row's handler.
    fn carry_out(&mut self, verb: &'static Verb, args: &str) -> Result<Answer, Reply> {
        let syntax = |error: ArgError| match error {
            ArgError::Syntax => Reply::new(
                501,
                Detail::InvalidArguments,
                format!("Syntax: {}", verb.syntax),
            ),
            ArgError::Reply(reply) => reply,
        };
        Ok(match verb.handler {
            Handler::NoArgument(handler) => {
                command::no_argument(args).map_err(syntax)?;
                self.allow(verb)?;
                handler(self)
            }
            Handler::AnyArgument(handler) => {
                self.allow(verb)?;
                handler(self)
            }
            Handler::Word(handler) => {
                let word = command::one_word(args).map_err(syntax)?;
                self.allow(verb)?;
                handler(self, word)
            }
            Handler::Text(handler) => {
                let text = command::some_text(args).map_err(syntax)?;
                self.allow(verb)?;
                handler(self, text)
            }
            Handler::OptionalText(handler) => {
                self.allow(verb)?;
                handler(self, args)
            }
            Handler::Mail(handler) => {
                let mail = command::mail(args).map_err(syntax)?;
                self.allow(verb)?;
                handler(self, mail)
            }
            Handler::Rcpt(handler) => {
                let rcpt = command::rcpt(args).map_err(syntax)?;
                self.allow(verb)?;
                handler(self, rcpt)
            }
            Handler::Chunk(handler) => {
                let chunk = command::chunk(args).map_err(syntax)?;
                let refusal = self.allow(verb).err();
                handler(self, chunk, refusal)
            }
            Handler::NotOffered(text) => {
                Answer::Reply(Reply::new(502, Detail::InvalidCommand, text))
            }
        })
    }

    /// Whether the verb may be given now; if not, the reply that says what is missing.
    fn allow(&self, verb: &Verb) -> Result<(), Reply> {
        if verb.allowed_in(self.state) {
            Ok(())
        } else {
            Err(out_of_order(verb, self.state))
        }
    }

    fn closed_step(&self) -> Option<Step<'static>> {
        matches!(self.phase, Phase::Closed).then_some(Step::Close)
    }

    fn helo_command(&mut self, name: &str) -> Answer {
        let before = self.state;
        self.hello(name, Protocol::Smtp);
        self.after_reset(before, fixed::helo(&self.params))
    }

    fn ehlo_command(&mut self, name: &str) -> Answer {
        let before = self.state;
        self.hello(name, Protocol::Esmtp);
        self.after_reset(before, fixed::ehlo(self))
    }

    /// The answer to a command that reset the transaction: a message whose BDAT chunks had begun is
    /// abandoned, so the caller throws away what it stored of it.
    fn after_reset(&mut self, before: State, reply: Reply) -> Answer {
        if before != State::Chunking {
            return Answer::Reply(reply);
        }
        self.reply(reply);
        Answer::Step(Some(Step::AbortMessage))
    }

    fn hello(&mut self, name: &str, protocol: Protocol) {
        self.set_state(State::Greeted);
        self.reset_transaction();
        self.envelope.helo = name.to_string();
        self.envelope.protocol = protocol;
    }

    fn mail_command(&mut self, mail: MailArgs) -> Answer {
        self.open_transaction(mail, Mode::Mail)
    }

    fn send_command(&mut self, mail: MailArgs) -> Answer {
        self.terminal_transaction(mail, Mode::Send, "SEND")
    }

    fn soml_command(&mut self, mail: MailArgs) -> Answer {
        self.terminal_transaction(mail, Mode::SendOrMail, "SOML")
    }

    fn saml_command(&mut self, mail: MailArgs) -> Answer {
        self.terminal_transaction(mail, Mode::SendAndMail, "SAML")
    }

    /// SEND, SOML or SAML: refused while terminal delivery is off, else MAIL with another destination.
    fn terminal_transaction(&mut self, mail: MailArgs, mode: Mode, name: &str) -> Answer {
        if !self.policy.terminal_delivery() {
            return Answer::Reply(Reply::new(
                502,
                Detail::InvalidCommand,
                format!("Error: {name} (delivery to a user's terminal) is not offered; use MAIL"),
            ));
        }
        if self.state != State::Greeted {
            let mail_verb = verbs::find("MAIL").expect("MAIL is in the table");
            return Answer::Reply(out_of_order(mail_verb, self.state));
        }
        self.open_transaction(mail, mode)
    }

    fn open_transaction(&mut self, mail: MailArgs, mode: Mode) -> Answer {
        let MailArgs { from, params, utf8 } = mail;
        if self.params.tls_required && self.envelope.tls.is_none() {
            return Answer::Reply(reply::NEED_STARTTLS);
        }
        if self.params.submission {
            let Some(user) = &self.envelope.user else {
                return Answer::Reply(reply::NEED_AUTH);
            };
            if !self.policy.may_send_as(user, &from) {
                return Answer::Reply(Reply::new(
                    550,
                    Detail::NotAuthorized,
                    format!("<{from}>: Sender address rejected: not an address of user {user}"),
                ));
            }
        }
        if self.envelope.protocol == Protocol::Smtp && params != MailParams::default() {
            return Answer::Reply(reply::MAIL_PARAMETERS_NEED_EHLO);
        }
        if utf8 && !params.smtputf8 {
            return Answer::Reply(reply::SENDER_NEEDS_SMTPUTF8);
        }
        if params
            .size
            .is_some_and(|size| size > self.params.max_message_size)
        {
            return Answer::Reply(self.too_big_reply());
        }
        if !self.policy.spool_has_room(params.size.unwrap_or(0)) {
            return Answer::Reply(reply::INSUFFICIENT_STORAGE);
        }
        self.set_state(State::Mail);
        self.envelope.sender = from;
        self.envelope.params = params;
        self.envelope.mode = mode;
        Answer::Reply(reply::SENDER_OK)
    }

    fn rcpt_command(&mut self, rcpt: RcptArgs) -> Answer {
        let RcptArgs { to, utf8 } = rcpt;
        if utf8 && !self.envelope.params.smtputf8 {
            return Answer::Reply(reply::RECIPIENT_NEEDS_SMTPUTF8);
        }
        if self.envelope.recipients.len() >= self.params.max_recipients {
            return Answer::Reply(reply::TOO_MANY_RECIPIENTS);
        }
        let verdict = match self.policy.recipient(&to) {
            // An authenticated client may send anywhere.
            RcptVerdict::RelayDenied if self.envelope.user.is_some() => RcptVerdict::Accept,
            verdict => verdict,
        };
        Answer::Reply(match verdict {
            RcptVerdict::Accept => {
                if self.envelope.mode != Mode::Mail
                    && let Err(refusal) = self
                        .policy
                        .terminal_recipient(&to, self.envelope.mode == Mode::Send)
                {
                    return Answer::Reply(refusal);
                }
                if !self.envelope.recipients.contains(&to) {
                    self.envelope.recipients.push(to);
                }
                if self.state == State::Mail {
                    self.set_state(State::Rcpt);
                }
                reply::RECIPIENT_OK
            }
            RcptVerdict::UnknownUser => Reply::new(
                550,
                Detail::BadDestinationMailbox,
                format!("<{to}>: Recipient address rejected: no such user here"),
            ),
            RcptVerdict::RelayDenied => Reply::new(
                550,
                Detail::NotAuthorized,
                format!("<{to}>: Relay access denied: this server does not forward mail for you"),
            ),
        })
    }

    fn data_command(&mut self) -> Answer {
        self.reply(reply::START_DATA);
        self.start_message();
        self.set_phase(Phase::Data(DataReceiver::new(self.params.bare_lf)));
        Answer::Step(Some(Step::StartMessage))
    }

    fn bdat_command(&mut self, chunk: Chunk, refusal: Option<Reply>) -> Answer {
        let first = refusal.is_none() && self.state == State::Rcpt;
        self.set_phase(Phase::Chunk {
            size: chunk.size,
            remaining: chunk.size,
            last: chunk.last,
            refusal,
        });
        if first {
            self.set_state(State::Chunking);
            self.start_message();
            return Answer::Step(Some(Step::StartMessage));
        }
        Answer::Step(None)
    }

    fn rset_command(&mut self) -> Answer {
        let before = self.state;
        self.reset_transaction();
        self.after_reset(before, reply::OK)
    }

    fn noop_command(&mut self) -> Answer {
        Answer::Reply(reply::OK)
    }

    fn quit_command(&mut self) -> Answer {
        self.reply(reply::BYE);
        self.set_phase(Phase::Closed);
        Answer::Step(Some(Step::Close))
    }

    fn vrfy_command(&mut self, query: &str) -> Answer {
        Answer::Reply(self.policy.vrfy(query))
    }

    fn expn_command(&mut self, list: &str) -> Answer {
        Answer::Reply(self.policy.expn(list))
    }

    fn etrn_command(&mut self, domain: &str) -> Answer {
        Answer::Reply(self.policy.etrn(domain, self.envelope.user.is_some()))
    }

    /// ATRN (RFC 2645): only on an ODMR port, only for an authenticated client (which has said EHLO since
    /// TLS began), for a comma-separated list of domains or none.
    fn atrn_command(&mut self, args: &str) -> Answer {
        if !self.params.odmr {
            return Answer::Reply(reply::ATRN_NOT_HERE);
        }
        let Some(user) = self.envelope.user.clone() else {
            return Answer::Reply(reply::ATRN_NEEDS_AUTH);
        };
        let domains = match atrn_domains(args) {
            Some(domains) => domains,
            None => return Answer::Reply(reply::ATRN_SYNTAX),
        };
        match self.policy.atrn(&user, &domains) {
            Ok(()) => {
                self.reply(reply::TURNING);
                self.set_phase(Phase::Closed);
                Answer::Step(Some(Step::Turn))
            }
            Err(refusal) => Answer::Reply(refusal),
        }
    }

    fn help_command(&mut self, topic: &str) -> Answer {
        Answer::Reply(help(self, topic))
    }

    fn verb_command(&mut self, mode: &str) -> Answer {
        let on = match mode.trim() {
            "" => true,
            mode if mode.eq_ignore_ascii_case("ON") => true,
            mode if mode.eq_ignore_ascii_case("OFF") => false,
            _ => {
                return Answer::Reply(Reply::new(
                    501,
                    Detail::InvalidArguments,
                    "Syntax: VERB [OFF]",
                ));
            }
        };
        if !on {
            self.narration = None;
            return Answer::Reply(reply::NARRATION_OFF);
        }
        match self.policy.narration(self.envelope.user.is_some()) {
            None => Answer::Reply(reply::NARRATION_REFUSED),
            Some(disclose) => {
                if self.narration.is_none() {
                    self.narration = Some(Capture::start(&self.params.id, disclose));
                }
                Answer::Reply(reply::NARRATION_ON)
            }
        }
    }

    fn starttls_command(&mut self) -> Answer {
        if self.envelope.tls.is_some() {
            return Answer::Reply(reply::TLS_ALREADY_ACTIVE);
        }
        if !self.params.tls_offered {
            return Answer::Reply(reply::TLS_NOT_AVAILABLE);
        }
        self.reply(reply::READY_FOR_TLS);
        Answer::Step(Some(Step::StartTls))
    }

    fn auth_command(&mut self, args: &str) -> Answer {
        if !self.params.auth_offered {
            return Answer::Reply(reply::AUTH_NOT_OFFERED);
        }
        if self.envelope.tls.is_none() {
            return Answer::Reply(reply::AUTH_NEEDS_TLS);
        }
        if self.envelope.user.is_some() {
            return Answer::Reply(reply::ALREADY_AUTHENTICATED);
        }
        let (mechanism, initial) = match args.split_once(' ') {
            Some((mechanism, initial)) => (mechanism, Some(initial.trim())),
            None => (args, None),
        };
        let (exchange, step) = sasl::Exchange::start(mechanism, initial);
        self.sasl_step(exchange, step)
    }

    fn sasl_response(&mut self, mut exchange: sasl::Exchange, line: &[u8]) -> Answer {
        let step = match std::str::from_utf8(line) {
            Ok(line) => exchange.respond(line),
            Err(_) => SaslStep::Failed(SaslError::BadBase64),
        };
        self.sasl_step(exchange, step)
    }

    fn sasl_step(&mut self, exchange: sasl::Exchange, step: SaslStep) -> Answer {
        match step {
            SaslStep::Challenge(challenge) => {
                self.sasl = Some(exchange);
                Answer::Reply(Reply::plain(334, challenge))
            }
            SaslStep::Done(credentials) => self.check_credentials(credentials),
            SaslStep::Failed(SaslError::Cancelled) => Answer::Reply(reply::AUTH_CANCELLED),
            SaslStep::Failed(SaslError::BadBase64) => Answer::Reply(reply::AUTH_BAD_BASE64),
            SaslStep::Failed(SaslError::Malformed(why)) => Answer::Reply(Reply::new(
                501,
                Detail::SyntaxError,
                format!("Error: malformed authentication response: {why}"),
            )),
            SaslStep::Failed(SaslError::UnknownMechanism) => Answer::Reply(Reply::new(
                504,
                Detail::InvalidArguments,
                format!(
                    "Error: unknown authentication mechanism; offered: {}",
                    sasl::MECHANISMS
                ),
            )),
        }
    }

    /// Checks the credentials an exchange produced; a failure is answered after the tarpit's delay.
    fn check_credentials(&mut self, credentials: Credentials) -> Answer {
        let Credentials {
            authzid,
            user,
            password,
        } = credentials;
        // Acting as someone else (a PLAIN authorization identity) is not offered.
        let as_self = authzid.as_deref().is_none_or(|authzid| authzid == user);
        if as_self && self.policy.authenticate(&user, &password) {
            self.envelope.user = Some(user);
            return Answer::Reply(reply::AUTH_OK);
        }
        self.auth_failures += 1;
        let delay = Duration::from_secs(1 << (self.auth_failures - 1).min(4)).min(MAX_TARPIT);
        self.reply(reply::AUTH_FAILED);
        Answer::Step(Some(Step::AuthFailed { user, delay }))
    }

    fn start_message(&mut self) {
        self.message_size = 0;
        self.too_big = false;
    }
}

/// What a command handler leaves for the session to do.
enum Answer {
    /// Write this reply.
    Reply(Reply),
    /// The handler wrote what it had to; the caller takes this step, if any.
    Step(Option<Step<'static>>),
}

/// ATRN's argument: domains separated by commas (RFC 2645), none when empty; None when one is not a
/// domain name.
fn atrn_domains(args: &str) -> Option<Vec<String>> {
    let args = args.trim();
    if args.is_empty() {
        return Some(Vec::new());
    }
    args.split(',')
        .map(|domain| {
            let domain = domain.trim();
            check_host_name(domain, HostNameRules::MAIL_DOMAIN)
                .ok()
                .map(|()| domain.to_ascii_lowercase())
        })
        .collect()
}

/// The 503 (or 554) for a verb given in a state its row does not allow: it names what must come first, or
/// what stands in the way.
fn out_of_order(verb: &Verb, state: State) -> Reply {
    match state {
        State::Connected if verb.allowed_in(State::Greeted) => reply::NEED_HELO,
        State::Connected | State::Greeted => reply::NEED_MAIL,
        State::Mail if verb.allowed_in(State::Rcpt) => reply::NO_VALID_RECIPIENTS,
        State::Chunking if verb.allowed_in(State::Rcpt) => Reply::new(
            503,
            Detail::InvalidCommand,
            format!("Error: {} cannot follow BDAT", verb.name),
        ),
        // Only the verb that opens a transaction is allowed after HELO but not before it.
        _ if !verb.allowed_in(State::Connected) => Reply::new(
            503,
            Detail::InvalidCommand,
            format!("Error: nested {} command", verb.name),
        ),
        _ => Reply::new(
            503,
            Detail::InvalidCommand,
            format!(
                "Error: {} is not allowed during a mail transaction",
                verb.name
            ),
        ),
    }
}

fn help(session: &Session, topic: &str) -> Reply {
    if topic.is_empty() {
        let lines = vec![
            Cow::Borrowed("Postel, an SMTP server (RFC 5321). Commands:"),
            Cow::Owned(format!("  {}", verbs::offered_names(session))),
            Cow::Borrowed(
                "To send a message: EHLO <your name>, MAIL FROM:<you>, RCPT TO:<them>, DATA,",
            ),
            Cow::Borrowed("  then the message, then a line holding only a '.'"),
            Cow::Borrowed("HELP <command> explains a command, HELP <EHLO keyword> an extension"),
        ];
        return Reply::lines(214, Some(Detail::Undefined), lines);
    }
    match verbs::help_lines(topic) {
        Some(lines) => Reply::lines(214, Some(Detail::Undefined), lines),
        None => Reply::new(
            504,
            Detail::InvalidCommand,
            format!("HELP: no such command '{}'", Echo(topic)),
        ),
    }
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Commands => "commands",
            Phase::LongLine => "long-line",
            Phase::Data(_) => "data",
            Phase::Chunk { .. } => "chunk",
            Phase::Closed => "closed",
        }
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "session/security_tests.rs"]
mod security_tests;
