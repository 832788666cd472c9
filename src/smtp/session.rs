//! The SMTP session as a state machine: input bytes in, replies and message events out. No sockets, files or
//! clocks: the caller reads and writes, stores the message, and tells the session what became of it.

use std::borrow::Cow;
use std::mem;

use log::{debug, trace};

use super::ReversePath;
use super::address::ForwardPath;
use super::command::{self, Command, MailParams};
use super::data::{BareLf, DataReceiver, DataStep};
use super::reply::{self, Reply};
use super::status::Detail;

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
}

/// What the session cannot decide by itself: who is a local user, who may relay.
pub trait Policy: Send {
    fn recipient(&self, to: &ForwardPath) -> RcptVerdict;
    fn vrfy(&self, query: &str) -> Reply;
    fn expn(&self, list: &str) -> Reply;
    fn etrn(&self, domain: &str) -> Reply;
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

/// HELO gives SMTP, EHLO gives ESMTP (they go into the Received header).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Smtp,
    Esmtp,
}

impl Protocol {
    /// The name the spool and the Received header use.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Smtp => "SMTP",
            Protocol::Esmtp => "ESMTP",
        }
    }
}

/// The transaction: who said hello, who sends, to whom, with which parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Envelope {
    pub helo: String,
    pub protocol: Protocol,
    pub sender: ReversePath,
    pub recipients: Vec<ForwardPath>,
    pub params: MailParams,
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
    /// HELO or EHLO was given.
    greeted: bool,
    /// MAIL was accepted: a transaction is open.
    in_transaction: bool,
    /// The transaction's message is being sent with BDAT.
    chunking: bool,
    envelope: Envelope,
    message_size: u64,
    too_big: bool,
    errors: u32,
    messages: u32,
    output: Vec<u8>,
}

impl Session {
    pub fn new(params: SessionParams, policy: Box<dyn Policy>) -> Session {
        Session {
            params,
            policy,
            phase: Phase::Commands,
            greeted: false,
            in_transaction: false,
            chunking: false,
            envelope: Envelope::default(),
            message_size: 0,
            too_big: false,
            errors: 0,
            messages: 0,
            output: Vec::with_capacity(512),
        }
    }

    /// Writes the 220 greeting.
    pub fn greeting(&mut self) {
        let text = format!("{} ESMTP Postel", self.params.hostname);
        self.reply(Reply::plain(220, text));
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
        self.greeted.then_some(self.envelope.helo.as_str())
    }

    pub fn messages_accepted(&self) -> u32 {
        self.messages
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
            debug!(
                "{}: connection lost in the middle of a message; nothing kept",
                self.params.id
            );
        }
        self.set_phase(Phase::Closed);
    }

    /// After [`Step::EndMessage`]: the message was stored under `Ok(queue id)`, or not, with `Err(reason)`.
    pub fn message_queued(&mut self, result: Result<&str, &str>) {
        match result {
            Ok(id) => {
                self.messages += 1;
                self.reply(Reply::new(
                    250,
                    Detail::Undefined,
                    format!("Ok: queued as {id}"),
                ));
            }
            Err(why) => self.reply(Reply::new(452, Detail::MailSystemFull, why.to_string())),
        }
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

    fn reset_transaction(&mut self) {
        self.in_transaction = false;
        self.chunking = false;
        self.envelope.sender = ReversePath::Null;
        self.envelope.recipients.clear();
        self.envelope.params = MailParams::default();
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
        debug!("{}: S: {reply}", self.params.id);
        reply.write_to(&mut self.output);
        if reply.is_error()
            && reply != reply::TOO_MANY_RECIPIENTS
            && !matches!(self.phase, Phase::Closed)
        {
            self.errors += 1;
            if self.errors >= self.params.max_errors {
                let text = format!(
                    "{} Error: too many errors; closing the connection",
                    self.params.hostname
                );
                let goodbye = Reply::new(421, Detail::OtherSecurity, text);
                debug!("{}: S: {goodbye}", self.params.id);
                goodbye.write_to(&mut self.output);
                self.set_phase(Phase::Closed);
            }
        }
    }

    /// Carries out one command line; returns the step the caller must take, if any.
    fn command(&mut self, line: &[u8]) -> Option<Step<'static>> {
        debug!("{}: C: {}", self.params.id, String::from_utf8_lossy(line));
        let command = match command::parse(line) {
            Ok(command) => command,
            Err(reply) => {
                self.reply(reply);
                return self.closed_step();
            }
        };
        let reply = match command {
            Command::Helo(name) => self.hello(name, Protocol::Smtp),
            Command::Ehlo(name) => self.hello(name, Protocol::Esmtp),
            Command::Mail { from, params, utf8 } => self.mail(from, params, utf8),
            Command::Rcpt { to, utf8 } => self.rcpt(to, utf8),
            Command::Data => return self.data(),
            Command::Bdat { size, last } => return self.bdat(size, last),
            Command::Rset => {
                self.reset_transaction();
                reply::OK
            }
            Command::Noop => reply::OK,
            Command::Quit => {
                self.reply(reply::BYE);
                self.set_phase(Phase::Closed);
                return Some(Step::Close);
            }
            Command::Vrfy(query) => self.policy.vrfy(query),
            Command::Expn(list) => self.policy.expn(list),
            Command::Help(topic) => help(topic),
            Command::Etrn(_) if self.in_transaction => Reply::new(
                503,
                Detail::InvalidCommand,
                "Error: ETRN is not allowed during a mail transaction",
            ),
            Command::Etrn(domain) => self.policy.etrn(domain),
            Command::Verb => {
                debug!(
                    "{}: VERB: this dialogue is already logged at debug level; nothing else changes",
                    self.params.id
                );
                Reply::new(
                    250,
                    Detail::Undefined,
                    "Ok: verbose mode changes nothing here; the server logs the dialogue at debug level",
                )
            }
            Command::Turn => Reply::new(
                502,
                Detail::InvalidCommand,
                "Error: TURN is refused: it would hand mail queued here to an unauthenticated client",
            ),
            Command::Atrn => Reply::new(
                502,
                Detail::InvalidCommand,
                "Error: ATRN needs authentication (RFC 2645), which this server does not offer",
            ),
            Command::TerminalDelivery(verb) => Reply::new(
                502,
                Detail::InvalidCommand,
                format!("Error: {verb} (delivery to a user's terminal) is not offered; use MAIL"),
            ),
            Command::NotOffered(verb) => Reply::new(
                502,
                Detail::InvalidCommand,
                format!("Error: {verb} is not offered by this server"),
            ),
        };
        self.reply(reply);
        self.closed_step()
    }

    fn closed_step(&self) -> Option<Step<'static>> {
        matches!(self.phase, Phase::Closed).then_some(Step::Close)
    }

    fn hello(&mut self, name: &str, protocol: Protocol) -> Reply {
        self.reset_transaction();
        self.greeted = true;
        self.envelope.helo = name.to_string();
        self.envelope.protocol = protocol;
        let hostname = self.params.hostname.clone();
        if protocol == Protocol::Smtp {
            return Reply::plain(250, hostname);
        }
        let lines = vec![
            hostname.into(),
            "PIPELINING".into(),
            format!("SIZE {}", self.params.max_message_size).into(),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
            "CHUNKING".into(),
            "ETRN".into(),
            "HELP".into(),
        ];
        Reply::lines(250, None, lines)
    }

    fn mail(&mut self, from: ReversePath, params: MailParams, utf8: bool) -> Reply {
        if !self.greeted {
            return reply::NEED_HELO;
        }
        if self.in_transaction {
            return reply::NESTED_MAIL;
        }
        if self.envelope.protocol == Protocol::Smtp && params != MailParams::default() {
            return reply::MAIL_PARAMETERS_NEED_EHLO;
        }
        if utf8 && !params.smtputf8 {
            return reply::SENDER_NEEDS_SMTPUTF8;
        }
        if params
            .size
            .is_some_and(|size| size > self.params.max_message_size)
        {
            return self.too_big_reply();
        }
        self.in_transaction = true;
        self.envelope.sender = from;
        self.envelope.params = params;
        reply::SENDER_OK
    }

    fn rcpt(&mut self, to: ForwardPath, utf8: bool) -> Reply {
        if !self.in_transaction {
            return reply::NEED_MAIL;
        }
        if utf8 && !self.envelope.params.smtputf8 {
            return reply::RECIPIENT_NEEDS_SMTPUTF8;
        }
        if self.envelope.recipients.len() >= self.params.max_recipients {
            return reply::TOO_MANY_RECIPIENTS;
        }
        match self.policy.recipient(&to) {
            RcptVerdict::Accept => {
                if !self.envelope.recipients.contains(&to) {
                    self.envelope.recipients.push(to);
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
        }
    }

    /// Why a message cannot start now, if it cannot.
    fn transaction_refusal(&self) -> Option<Reply> {
        if !self.in_transaction {
            Some(reply::NEED_MAIL)
        } else if self.envelope.recipients.is_empty() {
            Some(reply::NO_VALID_RECIPIENTS)
        } else {
            None
        }
    }

    fn data(&mut self) -> Option<Step<'static>> {
        let refusal = match self.transaction_refusal() {
            None if self.chunking => Some(reply::DATA_AFTER_BDAT),
            refusal => refusal,
        };
        if let Some(reply) = refusal {
            self.reply(reply);
            return self.closed_step();
        }
        self.reply(reply::START_DATA);
        self.start_message();
        self.set_phase(Phase::Data(DataReceiver::new(self.params.bare_lf)));
        Some(Step::StartMessage)
    }

    fn bdat(&mut self, size: u64, last: bool) -> Option<Step<'static>> {
        let refusal = self.transaction_refusal();
        let first = refusal.is_none() && !self.chunking;
        self.set_phase(Phase::Chunk {
            size,
            remaining: size,
            last,
            refusal,
        });
        if first {
            self.chunking = true;
            self.start_message();
            return Some(Step::StartMessage);
        }
        None
    }

    fn start_message(&mut self) {
        self.message_size = 0;
        self.too_big = false;
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

fn help(topic: &str) -> Reply {
    if topic.is_empty() {
        let lines = [
            "Postel, an SMTP server (RFC 5321). Commands:",
            "  HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN HELP ETRN VERB",
            "To send a message: EHLO <your name>, MAIL FROM:<you>, RCPT TO:<them>, DATA,",
            "  then the message, then a line holding only a '.'",
            "HELP <command> shows how a command is written",
        ];
        return Reply::lines(
            214,
            Some(Detail::Undefined),
            Vec::from(lines.map(Cow::Borrowed)),
        );
    }
    match command::syntax(&topic.to_ascii_uppercase()) {
        Some(syntax) => Reply::new(214, Detail::Undefined, syntax),
        None => Reply::new(
            504,
            Detail::InvalidCommand,
            format!("HELP: no such command '{topic}'"),
        ),
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
