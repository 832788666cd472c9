//! Runs one SMTP session over any byte stream: reads input, drives the protocol state machine, streams message
//! content into the spool, writes the replies, enforces the timeouts, and logs the connection.

use std::cell::RefCell;
use std::io::{self, ErrorKind, Read, Write};
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use log::{info, warn};

use rustls::ServerConfig;

use crate::config::Config;
use crate::delivery::local;
use crate::delivery::odmr::{Lease, Odmr};
use crate::delivery::scheduler::SchedulerHandle;
use crate::server::pace::{Limits, Pace};
use crate::server::policy::{Daemon, EtrnLimit, ServerPolicy, TurnSlot};
use crate::server::reload::Reloaded;
use crate::server::send;
use crate::server::submission::Fixup;
use crate::smtp::{Detail, Envelope, ForwardPath, Mode, Reply, Session, SessionParams, Step};
use crate::spool::{self, MessageWriter, Queued, Spool};
use crate::step;
use crate::tls::{self, TlsInfo};

/// A byte stream a session can run over: a TCP connection (plain or TLS), or stdin/stdout in inetd mode.
pub trait Transport: Read + Write {
    /// Bounds how long one read may wait; a read that waits longer fails with WouldBlock or TimedOut.
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()>;

    /// What TLS agreed on, when the stream is encrypted already (a connection turned with ATRN).
    fn tls(&self) -> Option<TlsInfo> {
        None
    }

    /// Whether [`Transport::start_tls`] can work on this stream.
    fn can_start_tls(&self) -> bool {
        false
    }

    /// Runs the server side of a TLS handshake, each read waiting at most `timeout`; Err says why it failed.
    fn start_tls(
        &mut self,
        _config: Arc<ServerConfig>,
        _timeout: Duration,
    ) -> Result<TlsInfo, String> {
        Err("this connection cannot carry TLS".into())
    }
}

impl Transport for tls::Stream {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.tcp().set_read_timeout(Some(timeout))
    }

    fn tls(&self) -> Option<TlsInfo> {
        tls::Stream::tls(self)
    }

    fn can_start_tls(&self) -> bool {
        self.tls().is_none()
    }

    fn start_tls(
        &mut self,
        config: Arc<ServerConfig>,
        timeout: Duration,
    ) -> Result<TlsInfo, String> {
        self.accept_tls(config, timeout)
    }
}

/// What every session of a server shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub spool: Arc<Spool>,
    /// The TLS certificate and the users who may authenticate, as last (re)loaded.
    pub reloaded: Reloaded,
    /// What happens to a message once it is queued.
    pub handoff: Handoff,
    /// Set when the server is shutting down: idle sessions say 421 and close.
    pub shutting_down: AtomicBool,
    /// When each client last ran ETRN.
    pub etrn_limit: Arc<EtrnLimit>,
    /// The daemon's ODMR service, when `odmr_listen` is set.
    pub odmr: Option<Arc<Odmr>>,
}

/// Where queued messages go next.
pub enum Handoff {
    /// To the daemon's scheduler, at once.
    Scheduler(SchedulerHandle),
    /// Kept for the program to hand on when the session is over (inetd mode, `sendmail -bs`).
    Collect(std::sync::Mutex<Vec<Queued>>),
    /// Left in the queue (`delivery_workers = 0`).
    Hold,
}

impl Handoff {
    fn take(&self, message: Queued) {
        match self {
            Handoff::Scheduler(scheduler) => scheduler.enqueue(message),
            Handoff::Collect(messages) => messages
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(message),
            Handoff::Hold => {}
        }
    }
}

/// Who is at the other end.
pub struct Client {
    /// The client's address, when known.
    pub ip: Option<IpAddr>,
    /// For logs: "127.0.0.1:40312", or "unknown".
    pub label: String,
    /// May relay: in trusted_networks, or a local program.
    pub trusted: bool,
    /// Which kind of port it came to.
    pub port: Port,
}

/// The kinds of port a client may connect to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Port {
    /// `listen`: mail from other servers and local programs.
    Smtp,
    /// `submission_listen` (RFC 6409): STARTTLS, AUTH before MAIL.
    Submission,
    /// `submissions_listen` (RFC 8314): the same, with TLS from the first byte.
    Submissions,
    /// `odmr_listen` (RFC 2645): ATRN for authenticated customers.
    Odmr,
}

impl Port {
    /// A submission port: AUTH before MAIL, the sender checked, Date and Message-ID added.
    pub fn is_submission(self) -> bool {
        matches!(self, Port::Submission | Port::Submissions)
    }
}

/// How long the reply to a narrated message (VERB) waits for the first delivery attempts.
const FIRST_ATTEMPT_WAIT: Duration = Duration::from_secs(3);

/// How often a waiting session looks at the shutdown flag.
const SHUTDOWN_CHECK: Duration = Duration::from_secs(1);

/// The smallest input buffer: big enough that a message body arrives in few reads.
const MIN_INPUT_BUFFER: usize = 16 * 1024;

/// The input buffer's size: room for the longest command line the configuration allows and as much again, and no
/// less than [`MIN_INPUT_BUFFER`]. Every thread of the pool keeps one, so it is not sized for the largest
/// `max_line_length` any configuration may set.
fn input_buffer_len(config: &Config) -> usize {
    (2 * config.max_line_length).max(MIN_INPUT_BUFFER)
}

thread_local! {
    /// The input buffer of the sessions this thread runs, one after another: allocated by the first, then
    /// handed from each to the next instead of allocated and zeroed per session.
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs one session to its end. I/O errors end the session; they are logged, never returned. When the roles
/// turned (ATRN), returns the mail to send: the caller then becomes the client on the same connection.
pub fn run(
    transport: &mut dyn Transport,
    client: &Client,
    session_id: &str,
    shared: &Shared,
) -> Option<Lease> {
    let started = Instant::now();
    let config = &shared.config;
    step!(session_id, Kind::Connect, "connect from {}", client.label);
    let tls = shared.reloaded.tls.get();
    let auth_users = shared.reloaded.auth_users.get();
    let mut params = session_params(config, session_id);
    params.tls_offered = tls.is_some() && transport.can_start_tls();
    params.auth_offered = !auth_users.is_empty();
    params.tls_required = config.tls_required && client.port == Port::Smtp;
    params.submission = client.port.is_submission();
    params.odmr = client.port == Port::Odmr;
    let turn = TurnSlot::default();
    let mut session = Session::new(
        params,
        Box::new(ServerPolicy::new(
            session_id,
            Arc::clone(config),
            shared.reloaded.aliases.get(),
            auth_users,
            client.trusted,
            client.ip,
            match &shared.handoff {
                Handoff::Scheduler(scheduler) => Some(Daemon {
                    scheduler: scheduler.clone(),
                    etrn_limit: Arc::clone(&shared.etrn_limit),
                    odmr: shared
                        .odmr
                        .as_ref()
                        .filter(|_| client.port == Port::Odmr)
                        .map(|odmr| (Arc::clone(odmr), Arc::clone(&turn))),
                }),
                Handoff::Collect(_) | Handoff::Hold => None,
            },
        )),
    );
    if let Some(info) = transport.tls() {
        session.tls_started(info.to_string());
    }
    if client.port == Port::Submissions {
        let Some(tls) = tls.as_ref() else {
            warn!("{session_id}: no TLS certificate for the implicit-TLS port; closing");
            return None;
        };
        match transport.start_tls(Arc::clone(&tls.config), config.command_timeout) {
            Ok(info) => session.tls_started(info.to_string()),
            Err(why) => {
                info!(
                    "{session_id}: TLS handshake with {} failed: {why}",
                    client.label
                );
                return None;
            }
        }
    }
    let mut input = INPUT.take();
    input.resize(input_buffer_len(config), 0);
    let mut driver = Driver {
        transport,
        client,
        shared,
        session_id,
        input,
        start: 0,
        end: 0,
        message: None,
        terminal_message: None,
        fixup: None,
        pace: Pace::new(
            Limits {
                command_timeout: config.command_timeout,
                data_timeout: config.data_timeout,
                min_data_rate: config.min_data_rate,
            },
            started,
        ),
    };
    session.greeting();
    let outcome = driver.drive(&mut session);
    let receiving = driver.message.take().is_some() || driver.terminal_message.take().is_some();
    INPUT.set(driver.input);
    if receiving || outcome.is_err() {
        session.input_closed();
    }
    let ended = match &outcome {
        Ok(Ended::Closed) => String::new(),
        Ok(Ended::Turned) => " (ATRN: the roles turn)".to_string(),
        Err(e) => format!(" ({e})"),
    };
    step!(session_id, Kind::Disconnect, "disconnect{ended}");
    info!(
        "{session_id}: disconnect from {} helo={} messages={} duration={:.3}s{ended}",
        client.label,
        session.helo().unwrap_or("-"),
        session.messages_accepted(),
        started.elapsed().as_secs_f64(),
    );
    let turned = turn.lock().unwrap_or_else(|p| p.into_inner()).take();
    turned.filter(|_| matches!(outcome, Ok(Ended::Turned)))
}

/// How a session that did not fail ended.
enum Ended {
    Closed,
    /// ATRN: the roles turn.
    Turned,
}

/// The session's protocol settings, from the configuration.
fn session_params(config: &Config, session_id: &str) -> SessionParams {
    SessionParams {
        id: session_id.to_string(),
        hostname: config.hostname.clone(),
        max_message_size: config.max_message_size,
        max_recipients: config.max_recipients,
        max_errors: config.max_errors,
        max_line_length: config.max_line_length,
        bare_lf: config.bare_lf,
        tls_offered: false,
        auth_offered: false,
        tls_required: false,
        submission: false,
        odmr: false,
    }
}

struct Driver<'a> {
    transport: &'a mut dyn Transport,
    client: &'a Client,
    shared: &'a Shared,
    session_id: &'a str,
    /// Bytes read but not yet consumed by the session: `input[start..end]`.
    input: Vec<u8>,
    start: usize,
    end: usize,
    /// The message being received, between StartMessage and its end.
    message: Option<MessageWriter>,
    /// The message being received for terminals (SEND, SOML, SAML), kept whole: see [`send`].
    terminal_message: Option<Vec<u8>>,
    /// On the submission ports: the Date and Message-ID the message may lack.
    fixup: Option<Fixup>,
    /// How slow the client has been.
    pace: Pace,
}

impl Driver<'_> {
    /// Feeds input to the session until it closes or turns; Err when the connection failed or timed out.
    fn drive(&mut self, session: &mut Session) -> io::Result<Ended> {
        self.transport.set_read_timeout(SHUTDOWN_CHECK)?;
        loop {
            loop {
                let (used, step) = session.step(&self.input[self.start..self.end]);
                self.start += used;
                match step {
                    Step::NeedInput => break,
                    Step::StartMessage if session.envelope().mode != Mode::Mail => {
                        self.terminal_message = Some(Vec::new());
                        self.pace.content_begins(Instant::now());
                    }
                    Step::StartMessage => {
                        let writer = self.begin_message(session.envelope());
                        self.fixup = self.client.port.is_submission().then(|| {
                            let id = format!("{}@{}", writer.id(), self.shared.config.hostname);
                            Fixup::new(Utc::now().to_rfc2822(), id)
                        });
                        self.message = Some(writer);
                        self.pace.content_begins(Instant::now());
                    }
                    Step::Data(content) => {
                        if let Some(writer) = &mut self.message {
                            match &mut self.fixup {
                                Some(fixup) => fixup.feed(content, &mut |b| writer.write(b)),
                                None => writer.write(content),
                            }
                        } else if let Some(text) = &mut self.terminal_message {
                            text.extend_from_slice(content);
                        }
                    }
                    Step::EndMessage => {
                        if let (Some(fixup), Some(writer)) = (self.fixup.take(), &mut self.message)
                        {
                            let mut fixup = fixup;
                            fixup.finish(&mut |b| writer.write(b));
                        }
                        match self.terminal_message.take() {
                            Some(text) => {
                                let reply = self.deliver_to_terminals(session.envelope(), &text);
                                session.message_done(reply);
                            }
                            None => self.end_message(session),
                        }
                        self.content_ended();
                    }
                    Step::AbortMessage => {
                        self.message = None;
                        self.terminal_message = None;
                        self.fixup = None;
                        self.content_ended();
                    }
                    Step::Close => return self.flush(session).map(|()| Ended::Closed),
                    Step::Turn => return self.flush(session).map(|()| Ended::Turned),
                    Step::StartTls => self.start_tls(session)?,
                    Step::AuthFailed { user, delay } => {
                        warn!(
                            "{}: authentication failed: user={user}, client={}",
                            self.session_id, self.client.label
                        );
                        std::thread::sleep(delay);
                    }
                }
            }
            self.flush(session)?;
            self.compact_input();
            if !self.fill_input(session)? {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "client closed the connection",
                ));
            }
        }
    }

    /// After the 220 to STARTTLS: the handshake, with whatever the client sent after STARTTLS thrown away.
    fn start_tls(&mut self, session: &mut Session) -> io::Result<()> {
        self.flush(session)?;
        if self.start != self.end {
            step!(
                self.session_id,
                "{} octets the client sent after STARTTLS, before the handshake, are thrown away unread",
                self.end - self.start
            );
        }
        (self.start, self.end) = (0, 0);
        let Some(tls) = self
            .shared
            .reloaded
            .tls
            .get()
            .as_ref()
            .as_ref()
            .map(|t| Arc::clone(&t.config))
        else {
            return Err(io::Error::other("the TLS certificate is gone"));
        };
        let timeout = self.shared.config.command_timeout;
        match self.transport.start_tls(tls, timeout) {
            Ok(info) => {
                step!(
                    self.session_id,
                    "TLS is up: {info}; the session starts over"
                );
                session.tls_started(info.to_string());
                self.transport.set_read_timeout(SHUTDOWN_CHECK)
            }
            Err(why) => Err(io::Error::other(format!("TLS handshake failed: {why}"))),
        }
    }

    /// Back to commands: a line may already have begun in the input read with the end of the message.
    fn content_ended(&mut self) {
        let pending = &self.input[self.start..self.end];
        let partial_line = pending.last().is_some_and(|&b| b != b'\n');
        self.pace.content_ends(partial_line, Instant::now());
    }

    fn begin_message(&self, envelope: &Envelope) -> MessageWriter {
        let writer = self.shared.spool.new_message(spool_envelope(
            envelope,
            self.client,
            self.shared.config.received_auth_user,
        ));
        let id = writer.id().as_str();
        step!(
            self.session_id,
            Kind::Message { id },
            "the message gets queue id {id}"
        );
        writer
    }

    fn end_message(&mut self, session: &mut Session) {
        let Some(writer) = self.message.take() else {
            session.message_queued(Err("Error: message lost by the server; please try again"));
            return;
        };
        match self.shared.spool.commit(writer) {
            Ok(queued) => {
                self.log_queued(&queued);
                let id = queued.envelope.id.clone();
                let narration = session.narration().cloned();
                let local = narration
                    .as_ref()
                    .map(|_| self.local_recipients(session.envelope()));
                self.shared.handoff.take(queued);
                // VERB: the reply tells how the first delivery to each local recipient went.
                if let (Some(capture), Some(local), Handoff::Scheduler(_)) =
                    (narration, local, &self.shared.handoff)
                {
                    capture.wait_attempts(&local, FIRST_ATTEMPT_WAIT);
                }
                session.message_queued(Ok(id.as_str()));
            }
            Err(e) => {
                warn!("{}: message not queued: {e}", self.session_id);
                session.message_queued(Err(
                    "Error: cannot write the message to the queue; please try again later",
                ));
            }
        }
    }

    /// The one log line of an accepted message, written once it is on disk.
    fn log_queued(&self, queued: &Queued) {
        let envelope = &queued.envelope;
        info!(
            "{}: from=<{}>, size={}, nrcpt={}, client={}, session={} (queued)",
            envelope.id,
            envelope.sender,
            queued.len,
            envelope.recipients.len(),
            self.client.label,
            self.session_id,
        );
    }

    /// SEND, SOML or SAML at the end of data: the terminals first, then the spool for those who get the
    /// message in their mailbox.
    fn deliver_to_terminals(&self, envelope: &Envelope, text: &[u8]) -> Reply {
        let shared = self.shared;
        let mut queue = |recipients: Vec<String>| {
            let mut record =
                spool_envelope(envelope, self.client, shared.config.received_auth_user);
            record.recipients = recipients;
            let mut writer = shared.spool.new_message(record);
            writer.write(text);
            // The reason goes to the log, as for MAIL; the client hears only that the queue failed.
            let queued = shared.spool.commit(writer).map_err(|e| {
                warn!("{}: message not queued: {e}", self.session_id);
                "the queue cannot take it now".to_string()
            })?;
            self.log_queued(&queued);
            let id = queued.envelope.id.to_string();
            shared.handoff.take(queued);
            Ok(id)
        };
        send::deliver(self.session_id, envelope, text, &shared.config, &mut queue)
    }

    /// The recipients delivered here, as the spool names them.
    fn local_recipients(&self, envelope: &Envelope) -> Vec<String> {
        envelope
            .recipients
            .iter()
            .filter(|to| match to {
                ForwardPath::Postmaster => true,
                ForwardPath::Mailbox(mailbox) => {
                    local::is_local(&self.shared.config, &mailbox.domain)
                }
            })
            .map(|to| to.to_string())
            .collect()
    }

    fn flush(&mut self, session: &mut Session) -> io::Result<()> {
        if !session.output().is_empty() {
            self.transport.write_all(session.output())?;
            self.transport.flush()?;
            session.clear_output();
        }
        Ok(())
    }

    fn compact_input(&mut self) {
        if self.start == self.end {
            (self.start, self.end) = (0, 0);
        } else if self.end == self.input.len() {
            self.input.copy_within(self.start..self.end, 0);
            (self.start, self.end) = (0, self.end - self.start);
        }
    }

    /// Reads more input; Ok(false) at end of input. Says 421 and fails when the client is slower than the
    /// limits allow (see [`Pace`]), and stops waiting for an idle client when the server shuts down.
    fn fill_input(&mut self, session: &mut Session) -> io::Result<bool> {
        if self.end == self.input.len() {
            return Err(io::Error::other(
                "the session left a full input buffer unconsumed",
            ));
        }
        loop {
            let read = self.transport.read(&mut self.input[self.end..]);
            let now = Instant::now();
            match read {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.pace.received(&self.input[self.end..self.end + n], now);
                    self.end += n;
                    self.check_pace(session, now)?;
                    return Ok(true);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    let shutting_down = self.shared.shutting_down.load(Ordering::Relaxed);
                    if shutting_down && self.message.is_none() && self.start == self.end {
                        session.shutdown(Reply::new(
                            421,
                            Detail::NotAcceptingMessages,
                            format!(
                                "{} Service shutting down, closing connection",
                                self.shared.config.hostname
                            ),
                        ));
                        self.flush(session)?;
                        return Err(io::Error::other("server shutting down"));
                    }
                    self.check_pace(session, now)?;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Says `421 4.4.2` and fails when the client went past a time limit.
    fn check_pace(&mut self, session: &mut Session, now: Instant) -> io::Result<()> {
        let Err(overdue) = self.pace.check(now) else {
            return Ok(());
        };
        session.shutdown(Reply::new(
            421,
            Detail::BadConnection,
            format!(
                "{} Error: {}",
                self.shared.config.hostname,
                overdue.reason()
            ),
        ));
        self.flush(session)?;
        Err(io::Error::new(ErrorKind::TimedOut, overdue.reason()))
    }
}

/// The spool's record of a transaction, from the protocol's envelope and what the server knows of the client.
fn spool_envelope(envelope: &Envelope, client: &Client, show_user: bool) -> spool::Envelope {
    let sender = envelope.sender.to_address();
    let recipients = envelope
        .recipients
        .iter()
        .map(ForwardPath::to_address)
        .collect();
    spool::Envelope {
        client: client.ip,
        helo: envelope.helo.clone(),
        protocol: envelope.with_keyword(),
        tls: envelope.tls.clone(),
        auth: envelope.user.clone().filter(|_| show_user),
        body: envelope.params.body,
        smtputf8: envelope.params.smtputf8,
        declared_size: envelope.params.size,
        ..spool::Envelope::new(sender, recipients, Utc::now())
    }
}

/// Answers a connection that will not get a session with one 421 line and leaves it to be closed. Best effort:
/// the client may already be gone.
pub fn refuse(stream: &mut impl Write, detail: Detail, text: &str, hostname: &str) {
    let mut reply = Vec::with_capacity(96);
    Reply::new(421, detail, format!("{hostname} {text}")).write_to(&mut reply);
    let _ = stream.write_all(&reply);
}
