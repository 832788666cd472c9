//! Outbound SMTP: one connection to a remote server that relays queued messages (RFC 5321,
//! pipelining per RFC 2920), with STARTTLS (RFC 3207) or implicit TLS (RFC 8314) and AUTH PLAIN or
//! LOGIN (RFC 4954) when asked for.

use std::fmt::{self, Write as _};
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use log::debug;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;

use crate::auth::Credentials;
use crate::tls::{Stream, TlsInfo};

use crate::copy::{Copier, CopyError, Format};

/// Longest reply line accepted, in octets with its line end (RFC 5321 says 512; some send more).
const MAX_REPLY_LINE: usize = 4096;
/// Most lines in one reply (an EHLO reply has one per extension).
const MAX_REPLY_LINES: usize = 100;
/// Size of the write buffer: pipelined commands and the message go out in writes this large.
const WRITE_BUFFER: usize = 64 * 1024;
/// Longest wait for the reply to QUIT: by then everything is said.
const QUIT_WAIT: Duration = Duration::from_secs(10);
/// Size of the read buffer: a whole EHLO reply fits.
const READ_BUFFER: usize = 8 * 1024;

/// A reply from the remote server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteReply {
    /// The three-digit reply code, 200 to 599.
    pub code: u16,
    /// The text of every line, without the codes, joined with " / ".
    pub text: String,
}

impl RemoteReply {
    fn new(code: u16, lines: &[String]) -> RemoteReply {
        RemoteReply {
            code,
            text: lines.join(" / "),
        }
    }

    /// A 5xx reply: the server will not take this, now or later.
    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The RFC 3463 enhanced status code the text starts with ("5.1.1"), if it starts with one.
    pub fn enhanced_status(&self) -> Option<String> {
        let status = self.text.split(' ').next()?;
        let parts: Vec<&str> = status.split('.').collect();
        let number =
            |part: &str| (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
        let valid = parts.len() == 3
            && matches!(parts[0], "2" | "4" | "5")
            && number(parts[1])
            && number(parts[2]);
        valid.then(|| status.to_string())
    }
}

impl fmt::Display for RemoteReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.text.is_empty() {
            write!(f, "{}", self.code)
        } else {
            write!(f, "{} {}", self.code, self.text)
        }
    }
}

/// Why a step failed.
#[derive(Debug)]
pub enum ClientError {
    /// No connection (refused, unreachable, timeout while connecting), or it broke: temporary, try
    /// the next host. The connection is closed; drop it.
    Connection(String),
    /// The server answered with an error at a step that concerns the whole connection or message
    /// (greeting, EHLO, HELO, MAIL, DATA, end of data, RSET). A 421 at any step lands here too: the
    /// server is closing the connection.
    Rejected {
        /// "greeting", "EHLO", "HELO", "MAIL", "RCPT" (only 421), "DATA", "end of data", "RSET".
        step: &'static str,
        /// What the server said.
        reply: RemoteReply,
    },
    /// The message cannot be sent to this server at all (larger than the server's SIZE, 8-bit
    /// content to a server without 8BITMIME, SMTPUTF8 needed and not offered): permanent, with a
    /// reason.
    Unsendable(String),
    /// TLS or authentication, as required, could not be had (no STARTTLS offered, a failed
    /// handshake, an unverifiable certificate, refused credentials): temporary, since the fix is
    /// on one side or the other of the connection, and nothing was sent. The connection is closed.
    Security(String),
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Connection(reason)
            | ClientError::Unsendable(reason)
            | ClientError::Security(reason) => f.write_str(reason),
            ClientError::Rejected { step, reply } => write!(f, "{step} rejected: {reply}"),
        }
    }
}

impl std::error::Error for ClientError {}

/// How long to wait at each step (RFC 5321 section 4.5.3.2); the relay takes them from the remote_*_timeout
/// keys of the configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing the TCP connection.
    pub connect: Duration,
    /// The 220 greeting.
    pub greeting: Duration,
    /// The reply to each command (EHLO, MAIL, RCPT, DATA, RSET, QUIT).
    pub command: Duration,
    /// Each write of the message to the server.
    pub data_block: Duration,
    /// The reply after the final ".".
    pub end_of_data: Duration,
}

/// What the server said about each recipient of one transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// One entry per recipient, in order. Ok: accepted at RCPT and the message was accepted at end
    /// of data (delivered). Err: the RCPT refusal (`is_permanent` tells bounce from retry).
    pub recipients: Vec<Result<(), RemoteReply>>,
    /// The end-of-data reply, or the last refusal when no recipient was accepted (then no message
    /// was sent).
    pub final_reply: RemoteReply,
}

/// What the server offered in its EHLO reply.
#[derive(Debug, Default)]
struct Extensions {
    pipelining: bool,
    /// SIZE was offered, with its limit in octets (0: no limit).
    size: Option<u64>,
    eight_bit_mime: bool,
    smtputf8: bool,
    starttls: bool,
    /// The AUTH mechanisms offered, upper case.
    auth: Vec<String>,
}

impl Extensions {
    /// Reads the EHLO reply's lines after the first: one keyword and its parameters each.
    fn parse(lines: &[String]) -> Extensions {
        let mut offered = Extensions::default();
        for line in lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            match words.next().unwrap_or("").to_ascii_uppercase().as_str() {
                "PIPELINING" => offered.pipelining = true,
                "SIZE" => {
                    offered.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0))
                }
                "8BITMIME" => offered.eight_bit_mime = true,
                "SMTPUTF8" => offered.smtputf8 = true,
                "STARTTLS" => offered.starttls = true,
                "AUTH" => offered.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        offered
    }
}

/// When a connection uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Never.
    Off,
    /// STARTTLS when the server offers it, plaintext otherwise.
    Opportunistic,
    /// STARTTLS, or no mail.
    Required,
    /// TLS from the first byte (RFC 8314).
    Implicit,
}

/// How a connection protects itself: TLS, with which configuration (it decides whether the
/// certificate is verified) and for which name, and whether to authenticate (only ever over TLS).
#[derive(Clone, Debug)]
pub struct Security {
    pub mode: TlsMode,
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
    pub credentials: Option<Credentials>,
}

/// An open SMTP connection, greeted and past EHLO (or HELO), ready for transactions.
pub struct Connection {
    peer: SocketAddr,
    /// The stream, written through a buffer; reads go around the buffer, after a flush.
    writer: BufWriter<Stream>,
    /// Bytes read but not yet consumed: `input[start..end]`.
    input: Box<[u8]>,
    start: usize,
    end: usize,
    server_name: String,
    extensions: Extensions,
    timeouts: Timeouts,
    /// No transaction is open: the last one ended with the 250 after its content, or with RSET, so the
    /// server expects MAIL next (RFC 5321 4.1.1.4).
    clean: bool,
}

impl Connection {
    /// Connects, reads the greeting, says EHLO `helo` (falls back to HELO if EHLO gets 5xx), then
    /// sets up TLS and authenticates as `security` says.
    pub fn open(
        addr: SocketAddr,
        helo: &str,
        timeouts: &Timeouts,
        security: &Security,
    ) -> Result<Connection, ClientError> {
        let cannot =
            |e: io::Error| ClientError::Connection(format!("cannot connect to {addr}: {e}"));
        let stream = TcpStream::connect_timeout(&addr, timeouts.connect).map_err(cannot)?;
        stream.set_nodelay(true).map_err(cannot)?;
        stream
            .set_write_timeout(Some(timeouts.command))
            .map_err(cannot)?;
        debug!("{addr} connected");
        let mut stream = Stream::Plain(stream);
        if security.mode == TlsMode::Implicit {
            let config = Arc::clone(&security.config);
            if let Err(why) = stream.connect_tls(config, security.name.clone(), timeouts.greeting) {
                stream.close();
                return Err(ClientError::Security(format!(
                    "TLS handshake with {addr} failed: {why}"
                )));
            }
        }
        let mut connection = Connection::over(stream, addr, timeouts);
        match connection
            .handshake(helo)
            .and_then(|()| connection.secure(helo, security))
        {
            Ok(()) => Ok(connection),
            Err(error) => {
                if let ClientError::Rejected { .. } = error {
                    connection.quit();
                }
                Err(error)
            }
        }
    }

    /// The client side of a connection whose roles were turned (ATRN, RFC 2645): the other end, until now
    /// our client, greets us as a server does, and we say EHLO `helo`. TLS, if any, stays as it is.
    pub fn turned(
        stream: Stream,
        peer: SocketAddr,
        helo: &str,
        timeouts: &Timeouts,
    ) -> Result<Connection, ClientError> {
        let mut connection = Connection::over(stream, peer, timeouts);
        connection.handshake(helo)?;
        Ok(connection)
    }

    fn over(stream: Stream, peer: SocketAddr, timeouts: &Timeouts) -> Connection {
        Connection {
            peer,
            writer: BufWriter::with_capacity(WRITE_BUFFER, stream),
            input: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
            server_name: peer.to_string(),
            extensions: Extensions::default(),
            timeouts: *timeouts,
            clean: true,
        }
    }

    /// ATRN (RFC 2645) for `domains` ("example.org,example.net"; empty: all of ours): after its 250 the roles
    /// turn, and the stream is returned for this side to serve as an SMTP server. Err: the refusal, or why the
    /// connection failed.
    pub fn atrn(mut self, domains: &str) -> Result<Stream, ClientError> {
        let line = match domains {
            "" => "ATRN".to_string(),
            domains => format!("ATRN {domains}"),
        };
        let reply = self.exchange("ATRN", &line)?;
        if let Err(error) = expect("ATRN", reply, 2) {
            self.quit();
            return Err(error);
        }
        if self.start != self.end {
            return Err(self.broken(
                "the server wrote more after its 250 to ATRN, before our greeting".to_string(),
            ));
        }
        self.writer
            .into_inner()
            .map_err(|e| ClientError::Connection(format!("after ATRN: {}", e.error())))
    }

    /// The address of the other end.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The server's name from its greeting (its address if the greeting has none), for logs.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// What TLS agreed on, if the connection is encrypted.
    pub fn tls(&self) -> Option<TlsInfo> {
        self.writer.get_ref().tls()
    }

    /// One transaction: MAIL FROM:<sender> [SIZE=size] [BODY=8BITMIME] [SMTPUTF8], RCPT TO for each
    /// recipient, DATA, the message and the end-of-data reply.
    ///
    /// The message is read from `body` and streamed out with CRLF line ends, dot-stuffed, ending
    /// with CRLF.CRLF (a CRLF is added if the body does not end with one). With PIPELINING offered,
    /// MAIL, all RCPTs and DATA go in one write (RFC 2920). If every recipient is refused, no
    /// message is sent and the transaction ends with RSET. After a transaction that failed, RSET
    /// comes first (see [`Connection::ready`]); a Connection error has closed the connection.
    pub fn send(
        &mut self,
        sender: &str,
        recipients: &[String],
        body: &mut dyn BufRead,
        size: u64,
        eight_bit: bool,
        smtputf8: bool,
    ) -> Result<Sent, ClientError> {
        self.check_sendable(sender, recipients, size, eight_bit, smtputf8)?;
        self.ready()?;
        self.clean = false;
        let mut mail = format!("MAIL FROM:<{sender}>");
        if self.extensions.size.is_some() {
            let _ = write!(mail, " SIZE={size}"); // writing to a String cannot fail
        }
        if eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        if self.extensions.pipelining {
            self.send_pipelined(&mail, recipients, body)
        } else {
            self.send_serial(&mail, recipients, body)
        }
    }

    /// Makes the connection ready for another message: nothing to do after a transaction that ended
    /// cleanly, RSET after one that failed; Err if the server is gone or refuses RSET.
    pub fn ready(&mut self) -> Result<(), ClientError> {
        if self.clean {
            return Ok(());
        }
        expect("RSET", self.exchange("RSET", "RSET")?, 2)?;
        self.clean = true;
        Ok(())
    }

    /// QUIT and close (best effort, waiting at most 10 s for the reply).
    pub fn quit(mut self) {
        self.timeouts.command = self.timeouts.command.min(QUIT_WAIT);
        let _ = self.exchange("QUIT", "QUIT");
        self.writer.get_mut().close();
    }

    /// STARTTLS (then EHLO again) and AUTH, as `security` asks.
    fn secure(&mut self, helo: &str, security: &Security) -> Result<(), ClientError> {
        let wants_starttls = match security.mode {
            TlsMode::Off | TlsMode::Implicit => false,
            TlsMode::Opportunistic => self.extensions.starttls,
            TlsMode::Required => true,
        };
        if wants_starttls {
            self.start_tls(helo, security)?;
        }
        match &security.credentials {
            Some(credentials) => self.authenticate(credentials),
            None => Ok(()),
        }
    }

    fn start_tls(&mut self, helo: &str, security: &Security) -> Result<(), ClientError> {
        if !self.extensions.starttls {
            return Err(self.insecure(format!(
                "{} does not offer STARTTLS, and TLS is required",
                self.peer
            )));
        }
        let reply = self.exchange("STARTTLS", "STARTTLS")?;
        if reply.code != 220 {
            return Err(self.insecure(format!("STARTTLS refused: {reply}")));
        }
        // Whatever the server sent after its 220 came before the handshake: never read it as a reply.
        (self.start, self.end) = (0, 0);
        let config = Arc::clone(&security.config);
        let name = security.name.clone();
        let timeout = self.timeouts.command;
        if let Err(why) = self.writer.get_mut().connect_tls(config, name, timeout) {
            return Err(self.insecure(format!("TLS handshake with {} failed: {why}", self.peer)));
        }
        debug!(
            "{} TLS: {}",
            self.peer,
            self.tls().map_or(String::new(), |t| t.to_string())
        );
        self.extensions = Extensions::default();
        self.ehlo(helo)
    }

    /// AUTH PLAIN, or LOGIN when that is all the server offers; only over TLS.
    fn authenticate(&mut self, credentials: &Credentials) -> Result<(), ClientError> {
        if self.tls().is_none() {
            return Err(self.insecure("credentials are only ever sent over TLS".to_string()));
        }
        let offered = |m: &str| self.extensions.auth.iter().any(|a| a == m);
        let reply = if offered("PLAIN") {
            let message = format!("\0{}\0{}", credentials.user, credentials.password);
            let line = format!("AUTH PLAIN {}", STANDARD.encode(message));
            self.exchange_secret("AUTH", &line, "AUTH PLAIN <credentials>")?
        } else if offered("LOGIN") {
            let reply = self.exchange("AUTH", "AUTH LOGIN")?;
            if reply.code != 334 {
                return Err(self.insecure(format!("AUTH LOGIN refused: {reply}")));
            }
            let user = STANDARD.encode(&credentials.user);
            let reply = self.exchange_secret("AUTH", &user, "<user name>")?;
            if reply.code != 334 {
                return Err(self.insecure(format!("AUTH LOGIN refused: {reply}")));
            }
            let password = STANDARD.encode(&credentials.password);
            self.exchange_secret("AUTH", &password, "<password>")?
        } else {
            return Err(self.insecure(format!(
                "{} offers no AUTH PLAIN or LOGIN, and credentials are configured",
                self.peer
            )));
        };
        if reply.code != 235 {
            return Err(self.insecure(format!(
                "authentication as {} failed: {reply}",
                credentials.user
            )));
        }
        Ok(())
    }

    /// Gives up a connection that cannot be made as safe as asked.
    fn insecure(&mut self, reason: String) -> ClientError {
        debug!("{} {reason}", self.peer);
        self.writer.get_mut().close();
        ClientError::Security(reason)
    }

    /// Reads the greeting and introduces ourselves.
    fn handshake(&mut self, helo: &str) -> Result<(), ClientError> {
        let (code, lines) = self.read_lines("greeting", self.timeouts.greeting)?;
        if let Some(name) = lines[0].split_ascii_whitespace().next() {
            self.server_name = name.to_string();
        }
        expect("greeting", RemoteReply::new(code, &lines), 2)?;
        self.ehlo(helo)
    }

    /// EHLO, falling back to HELO when the server does not know EHLO.
    fn ehlo(&mut self, helo: &str) -> Result<(), ClientError> {
        self.queue(format_args!("EHLO {helo}"))?;
        self.flush("EHLO")?;
        let (code, lines) = self.read_lines("EHLO", self.timeouts.command)?;
        if (200..300).contains(&code) {
            self.extensions = Extensions::parse(&lines);
            return Ok(());
        }
        let reply = RemoteReply::new(code, &lines);
        if !reply.is_permanent() {
            return Err(ClientError::Rejected {
                step: "EHLO",
                reply,
            });
        }
        expect("HELO", self.exchange("HELO", &format!("HELO {helo}"))?, 2)?;
        Ok(())
    }

    /// Refuses, before anything is sent, a message this server cannot take.
    fn check_sendable(
        &self,
        sender: &str,
        recipients: &[String],
        size: u64,
        eight_bit: bool,
        smtputf8: bool,
    ) -> Result<(), ClientError> {
        let offered = &self.extensions;
        let mut addresses = std::iter::once(sender).chain(recipients.iter().map(String::as_str));
        let problem = if recipients.is_empty() {
            "no recipients".to_string()
        } else if let Some(address) = addresses.find(|a| a.contains(['\r', '\n'])) {
            format!("address {address:?} contains a line break")
        } else if let Some(limit) = offered.size.filter(|&limit| limit > 0 && size > limit) {
            format!("message is {size} bytes, the server accepts at most {limit}")
        } else if eight_bit && !offered.eight_bit_mime {
            "8-bit message and the server does not offer 8BITMIME".to_string()
        } else if smtputf8 && !offered.smtputf8 {
            "message needs SMTPUTF8 and the server does not offer it".to_string()
        } else {
            return Ok(());
        };
        Err(ClientError::Unsendable(problem))
    }

    /// A transaction one command at a time, waiting for each reply.
    fn send_serial(
        &mut self,
        mail: &str,
        recipients: &[String],
        body: &mut dyn BufRead,
    ) -> Result<Sent, ClientError> {
        expect("MAIL", self.exchange("MAIL", mail)?, 2)?;
        let mut results = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            let reply = self.exchange("RCPT", &format!("RCPT TO:<{recipient}>"))?;
            results.push(verdict(reply));
        }
        if let Some(final_reply) = nobody_accepted(&results) {
            return self.abandon(results, final_reply);
        }
        expect("DATA", self.exchange("DATA", "DATA")?, 3)?;
        self.transmit(body, results)
    }

    /// A pipelined transaction (RFC 2920): MAIL, every RCPT and DATA in one write, then all
    /// their replies.
    fn send_pipelined(
        &mut self,
        mail: &str,
        recipients: &[String],
        body: &mut dyn BufRead,
    ) -> Result<Sent, ClientError> {
        self.queue(format_args!("{mail}"))?;
        for recipient in recipients {
            self.queue(format_args!("RCPT TO:<{recipient}>"))?;
        }
        self.queue(format_args!("DATA"))?;
        self.flush("MAIL, RCPT and DATA")?;
        let command = self.timeouts.command;
        let mail_reply = self.read_reply("MAIL", command)?;
        let mut results = Vec::with_capacity(recipients.len());
        for _ in recipients {
            results.push(verdict(self.read_reply("RCPT", command)?));
        }
        let data_reply = self.read_reply("DATA", command)?;
        let refusal = nobody_accepted(&results);
        if data_reply.code / 100 == 3 && (!mail_reply.is_positive() || refusal.is_some()) {
            // RFC 2920 section 3.1: DATA went through with nothing to send; end it at once.
            self.queue(format_args!("."))?;
            self.flush("end of data")?;
            self.read_reply("end of data", self.timeouts.end_of_data)?;
        }
        expect("MAIL", mail_reply, 2)?;
        if let Some(final_reply) = refusal {
            return self.abandon(results, final_reply);
        }
        expect("DATA", data_reply, 3)?;
        self.transmit(body, results)
    }

    /// Ends a transaction in which no recipient was accepted.
    fn abandon(
        &mut self,
        recipients: Vec<Result<(), RemoteReply>>,
        final_reply: RemoteReply,
    ) -> Result<Sent, ClientError> {
        self.ready()?;
        Ok(Sent {
            recipients,
            final_reply,
        })
    }

    /// After the 354: streams the message and reads the end-of-data reply.
    fn transmit(
        &mut self,
        body: &mut dyn BufRead,
        recipients: Vec<Result<(), RemoteReply>>,
    ) -> Result<Sent, ClientError> {
        self.set_write_timeout(self.timeouts.data_block)?;
        let octets = match write_message(body, &mut self.writer) {
            Ok(octets) => octets,
            Err(CopyError::Read(e)) => {
                return Err(self.broken(format!("cannot read the message: {e}")));
            }
            Err(CopyError::Write(e)) => return Err(self.io_failure("message", e)),
        };
        debug!("{} C: <message, {octets} octets>", self.peer);
        debug!("{} C: .", self.peer);
        self.set_write_timeout(self.timeouts.command)?;
        let reply = self.read_reply("end of data", self.timeouts.end_of_data)?;
        let final_reply = expect("end of data", reply, 2)?;
        self.clean = true;
        Ok(Sent {
            recipients,
            final_reply,
        })
    }

    /// Sends one command and reads its reply.
    fn exchange(&mut self, step: &'static str, line: &str) -> Result<RemoteReply, ClientError> {
        self.queue(format_args!("{line}"))?;
        self.flush(step)?;
        self.read_reply(step, self.timeouts.command)
    }

    /// Sends a line that holds a secret, logged as `shown`, and reads the reply.
    fn exchange_secret(
        &mut self,
        step: &'static str,
        line: &str,
        shown: &str,
    ) -> Result<RemoteReply, ClientError> {
        debug!("{} C: {shown}", self.peer);
        self.write_line(format_args!("{line}"))?;
        self.flush(step)?;
        self.read_reply(step, self.timeouts.command)
    }

    /// Adds a command line to the write buffer, formatted straight into it.
    fn queue(&mut self, line: fmt::Arguments<'_>) -> Result<(), ClientError> {
        debug!("{} C: {line}", self.peer);
        self.write_line(line)
    }

    fn write_line(&mut self, line: fmt::Arguments<'_>) -> Result<(), ClientError> {
        let written = self
            .writer
            .write_fmt(line)
            .and_then(|()| self.writer.write_all(b"\r\n"));
        written.map_err(|e| self.io_failure("commands", e))
    }

    /// Sends what is in the write buffer.
    fn flush(&mut self, step: &str) -> Result<(), ClientError> {
        let flushed = self.writer.flush();
        flushed.map_err(|e| self.io_failure(step, e))
    }

    /// Sets how long each write may take from now on.
    fn set_write_timeout(&self, timeout: Duration) -> Result<(), ClientError> {
        let set = self.writer.get_ref().tcp().set_write_timeout(Some(timeout));
        set.map_err(|e| self.io_failure("setting a timeout", e))
    }

    /// Reads one reply within `timeout`.
    fn read_reply(
        &mut self,
        step: &'static str,
        timeout: Duration,
    ) -> Result<RemoteReply, ClientError> {
        let (code, lines) = self.read_lines(step, timeout)?;
        Ok(RemoteReply::new(code, &lines))
    }

    /// Reads one reply, all its lines within `timeout`: its code and the text of each line.
    /// A 421 is an error here, whatever the step: the server is closing the connection.
    fn read_lines(
        &mut self,
        step: &'static str,
        timeout: Duration,
    ) -> Result<(u16, Vec<String>), ClientError> {
        let deadline = Instant::now() + timeout;
        let mut code = 0;
        let mut lines = Vec::new();
        loop {
            let line = self.read_line(step, deadline)?;
            debug!("{} S: {line}", self.peer);
            let Some((line_code, last, text)) = parse_reply_line(&line) else {
                return Err(self.broken(format!("malformed reply line {line:?} (at {step})")));
            };
            if lines.is_empty() {
                code = line_code;
            } else if line_code != code {
                return Err(self.broken(format!("reply lines with different codes (at {step})")));
            }
            lines.push(text.to_string());
            if last {
                break;
            }
            if lines.len() == MAX_REPLY_LINES {
                return Err(self.broken(format!(
                    "reply has more than {MAX_REPLY_LINES} lines (at {step})"
                )));
            }
        }
        if code == 421 {
            self.writer.get_mut().close();
            return Err(ClientError::Rejected {
                step,
                reply: RemoteReply::new(code, &lines),
            });
        }
        Ok((code, lines))
    }

    /// Reads one line, without its line end, before `deadline`.
    fn read_line(&mut self, step: &str, deadline: Instant) -> Result<String, ClientError> {
        let mut line = Vec::new();
        loop {
            if self.start == self.end {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(self.broken(format!("timed out (at {step})")));
                }
                let set = self.writer.get_ref().tcp().set_read_timeout(Some(left));
                set.map_err(|e| self.io_failure(step, e))?;
                let read = self.writer.get_mut().read(&mut self.input);
                match read {
                    Ok(0) => {
                        return Err(
                            self.broken(format!("connection closed by the server (at {step})"))
                        );
                    }
                    Ok(n) => (self.start, self.end) = (0, n),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.io_failure(step, e)),
                }
            }
            let available = &self.input[self.start..self.end];
            let end = memchr::memchr(b'\n', available);
            let piece = &available[..end.map_or(available.len(), |i| i + 1)];
            if line.len() + piece.len() > MAX_REPLY_LINE {
                return Err(self.broken(format!("reply line too long (at {step})")));
            }
            line.extend_from_slice(piece);
            self.start += piece.len();
            if end.is_some() {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return Ok(String::from_utf8_lossy(&line).into_owned());
            }
        }
    }

    /// The connection failed while doing `step`: close it and say why.
    fn io_failure(&self, step: &str, error: io::Error) -> ClientError {
        let reason = match error.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => "timed out".to_string(),
            _ => error.to_string(),
        };
        self.broken(format!("{reason} (at {step})"))
    }

    /// Closes a connection that can no longer be trusted to be in step with the server.
    fn broken(&self, reason: String) -> ClientError {
        debug!("{} connection lost: {reason}", self.peer);
        let _ = self
            .writer
            .get_ref()
            .tcp()
            .shutdown(std::net::Shutdown::Both);
        ClientError::Connection(reason)
    }
}

/// The reply if it is of the expected class (2 for 2xx, 3 for 3xx), else a rejection at `step`.
fn expect(step: &'static str, reply: RemoteReply, class: u16) -> Result<RemoteReply, ClientError> {
    if reply.code / 100 == class {
        Ok(reply)
    } else {
        Err(ClientError::Rejected { step, reply })
    }
}

/// A recipient's fate from its RCPT reply.
fn verdict(reply: RemoteReply) -> Result<(), RemoteReply> {
    if reply.is_positive() {
        Ok(())
    } else {
        Err(reply)
    }
}

/// When no recipient was accepted, the last refusal: the transaction ends there.
fn nobody_accepted(results: &[Result<(), RemoteReply>]) -> Option<RemoteReply> {
    if results.iter().any(Result::is_ok) {
        return None;
    }
    results.last()?.clone().err()
}

/// Splits one reply line (without its line end) into its code, whether it is the last line, and its
/// text.
fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let bytes = line.as_bytes();
    let valid_code = bytes.len() >= 3
        && (b'2'..=b'5').contains(&bytes[0])
        && bytes[1..3].iter().all(u8::is_ascii_digit);
    if !valid_code {
        return None;
    }
    let code = line[..3].parse().ok()?;
    match bytes.get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

/// Writes a message as DATA content and flushes it: in SMTP form (CRLF line ends, dot-stuffed, a CRLF added
/// if the last line lacks one), then the final ".". Returns the octets read.
fn write_message(body: &mut dyn BufRead, out: &mut impl Write) -> Result<u64, CopyError> {
    let mut copier = Copier::new(&mut *out, Format::SMTP);
    let octets = copier.copy_from(body)?;
    copier.finish().map_err(CopyError::Write)?;
    out.write_all(b".\r\n")
        .and_then(|()| out.flush())
        .map_err(CopyError::Write)?;
    Ok(octets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufReader, Read};
    use std::net::{Shutdown, TcpListener};
    use std::thread::{self, JoinHandle};

    /// One step of a scripted fake server.
    enum Step {
        /// Send these bytes (whole reply lines with CRLF).
        Say(&'static str),
        /// Read this many lines from the client.
        Read(usize),
        /// Read a message up to and including its final CRLF.CRLF.
        Data,
        /// Close the sending side.
        Hangup,
    }
    use Step::{Data, Hangup, Read as Lines, Say};

    /// A fake server on 127.0.0.1 for one connection: it follows the script, then answers QUIT with
    /// 221 and reads until the client closes. The handle returns everything the client sent.
    fn fake_server(script: Vec<Step>) -> (SocketAddr, JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut received = Vec::new();
            let mut read_line =
                |received: &mut Vec<u8>| reader.read_until(b'\n', received).unwrap_or(0) > 0;
            for step in script {
                match step {
                    Say(text) => stream.write_all(text.as_bytes()).unwrap(),
                    Lines(count) => {
                        for _ in 0..count {
                            read_line(&mut received);
                        }
                    }
                    Data => while !received.ends_with(b"\r\n.\r\n") && read_line(&mut received) {},
                    Hangup => drop(stream.shutdown(Shutdown::Write)),
                }
            }
            while read_line(&mut received) {
                if received.ends_with(b"QUIT\r\n") {
                    let _ = stream.write_all(b"221 2.0.0 Bye\r\n");
                }
            }
            String::from_utf8(received).unwrap()
        });
        (addr, server)
    }

    /// The greeting and an EHLO reply with these extension lines.
    fn opening(ehlo_reply: &'static str) -> Vec<Step> {
        vec![
            Say("220 fake.test ESMTP ready\r\n"),
            Lines(1),
            Say(ehlo_reply),
        ]
    }

    /// A server without PIPELINING: reads one command for each reply and answers it.
    fn answer(replies: &[&'static str]) -> Vec<Step> {
        replies
            .iter()
            .flat_map(|&reply| [Lines(1), Say(reply)])
            .collect()
    }

    /// Lines as the client sends them, each ending in CRLF.
    fn lines(lines: &[&str]) -> String {
        lines.iter().map(|line| format!("{line}\r\n")).collect()
    }

    fn timeouts(each: Duration) -> Timeouts {
        Timeouts {
            connect: each,
            greeting: each,
            command: each,
            data_block: each,
            end_of_data: each,
        }
    }

    fn security(mode: TlsMode, credentials: Option<Credentials>) -> Security {
        Security {
            mode,
            config: crate::tls::client::unverified(),
            name: ServerName::try_from("fake.test").unwrap(),
            credentials,
        }
    }

    fn open(addr: SocketAddr) -> Result<Connection, ClientError> {
        let plaintext = security(TlsMode::Off, None);
        Connection::open(
            addr,
            "client.test",
            &timeouts(Duration::from_secs(5)),
            &plaintext,
        )
    }

    #[test]
    fn required_tls_without_starttls_sends_nothing() {
        let (addr, server) = fake_server(vec![
            Say("220 fake.test\r\n"),
            Lines(1),
            Say("250-fake.test\r\n250 PIPELINING\r\n"),
        ]);
        let required = security(TlsMode::Required, None);
        match Connection::open(
            addr,
            "client.test",
            &timeouts(Duration::from_secs(5)),
            &required,
        ) {
            Err(ClientError::Security(why)) => assert!(
                why.ends_with("does not offer STARTTLS, and TLS is required"),
                "{why}"
            ),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("opened"),
        }
        assert_eq!(server.join().unwrap(), "EHLO client.test\r\n");
    }

    #[test]
    fn opportunistic_tls_without_starttls_goes_on_in_plaintext() {
        let (addr, _server) = fake_server(vec![
            Say("220 fake.test\r\n"),
            Lines(1),
            Say("250-fake.test\r\n250 8BITMIME\r\n"),
        ]);
        let opportunistic = security(TlsMode::Opportunistic, None);
        let connection = Connection::open(
            addr,
            "client.test",
            &timeouts(Duration::from_secs(5)),
            &opportunistic,
        );
        assert!(connection.unwrap().tls().is_none());
    }

    #[test]
    fn credentials_never_go_out_in_plaintext() {
        let (addr, server) = fake_server(vec![
            Say("220 fake.test\r\n"),
            Lines(1),
            Say("250-fake.test\r\n250 AUTH PLAIN LOGIN\r\n"),
        ]);
        let credentials = Credentials {
            user: "relay".into(),
            password: "secret".into(),
        };
        let plaintext = security(TlsMode::Off, Some(credentials));
        match Connection::open(
            addr,
            "client.test",
            &timeouts(Duration::from_secs(5)),
            &plaintext,
        ) {
            Err(ClientError::Security(why)) => {
                assert_eq!(why, "credentials are only ever sent over TLS")
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("opened"),
        }
        assert!(!server.join().unwrap().contains("AUTH"));
    }

    fn rcpts(addresses: &[&str]) -> Vec<String> {
        addresses.iter().map(|a| a.to_string()).collect()
    }

    fn send(connection: &mut Connection, to: &[&str], body: &str) -> Result<Sent, ClientError> {
        let size = body.len() as u64;
        connection.send(
            "alice@client.test",
            &rcpts(to),
            &mut body.as_bytes(),
            size,
            false,
            false,
        )
    }

    fn reply(code: u16, text: &str) -> RemoteReply {
        RemoteReply {
            code,
            text: text.to_string(),
        }
    }

    const BODY: &str = "Subject: hi\r\n\r\n.hidden\r\n..two\r\nno line end";
    const STUFFED: &str = "Subject: hi\r\n\r\n..hidden\r\n...two\r\nno line end\r\n.\r\n";

    #[test]
    fn sends_one_command_at_a_time_without_pipelining() {
        let mut script = opening("250-fake.test\r\n250-SIZE 1000000\r\n250 8BITMIME\r\n");
        script.extend(answer(&[
            "250 2.1.0 Ok\r\n",
            "250 2.1.5 Ok\r\n",
            "354 Go ahead\r\n",
        ]));
        script.extend([Data, Say("250 2.0.0 Ok: queued as 1\r\n")]);
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        assert_eq!(connection.server_name(), "fake.test");
        let sent = send(&mut connection, &["bob@fake.test"], BODY).unwrap();
        assert_eq!(sent.recipients, vec![Ok(())]);
        assert_eq!(sent.final_reply, reply(250, "2.0.0 Ok: queued as 1"));
        connection.quit();
        let expected = lines(&[
            "EHLO client.test",
            "MAIL FROM:<alice@client.test> SIZE=42",
            "RCPT TO:<bob@fake.test>",
            "DATA",
        ]);
        assert_eq!(server.join().unwrap(), expected + STUFFED + "QUIT\r\n");
    }

    #[test]
    fn pipelines_mail_rcpt_and_data_in_one_group() {
        let mut script =
            opening("250-fake.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n");
        script.extend([
            Lines(4),
            Say("250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n354 Go ahead\r\n"),
            Data,
            Say("250 2.0.0 Ok: queued as 2\r\n"),
        ]);
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        let mut body = "Subject: \u{e9}\r\n\r\n.\r\n".as_bytes();
        let to = rcpts(&["bob@fake.test", "carol@fake.test"]);
        let sent = connection.send("", &to, &mut body, 20, true, true).unwrap();
        assert_eq!(sent.recipients, vec![Ok(()), Ok(())]);
        connection.quit();
        let expected = lines(&[
            "EHLO client.test",
            "MAIL FROM:<> BODY=8BITMIME SMTPUTF8",
            "RCPT TO:<bob@fake.test>",
            "RCPT TO:<carol@fake.test>",
            "DATA",
            "Subject: \u{e9}",
            "",
            "..",
            ".",
            "QUIT",
        ]);
        assert_eq!(server.join().unwrap(), expected);
    }

    #[test]
    fn falls_back_to_helo_when_ehlo_is_not_implemented() {
        let mut script = vec![Say("220 old.test\r\n")];
        script.extend(answer(&[
            "502 5.5.1 Command not implemented\r\n",
            "250 old.test\r\n",
            "250 Ok\r\n",
            "250 Ok\r\n",
            "354 Go ahead\r\n",
        ]));
        script.extend([Data, Say("250 Ok\r\n")]);
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        send(&mut connection, &["bob@old.test"], "hi\r\n").unwrap();
        connection.quit();
        let expected = lines(&[
            "EHLO client.test",
            "HELO client.test",
            "MAIL FROM:<alice@client.test>",
            "RCPT TO:<bob@old.test>",
            "DATA",
            "hi",
            ".",
            "QUIT",
        ]);
        assert_eq!(server.join().unwrap(), expected);
    }

    #[test]
    fn one_refused_recipient_does_not_stop_the_others() {
        let mut script = opening("250-fake.test\r\n250 PIPELINING\r\n");
        script.extend([
            Lines(5),
            Say(concat!(
                "250 Ok\r\n250 Ok\r\n550-5.1.1 No such user\r\n",
                "550 5.1.1 Really\r\n250 Ok\r\n354 Go ahead\r\n",
            )),
            Data,
            Say("250 2.0.0 Ok\r\n"),
        ]);
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        let sent = send(
            &mut connection,
            &["a@fake.test", "nobody@fake.test", "c@fake.test"],
            "hi\r\n",
        )
        .unwrap();
        let refusal = reply(550, "5.1.1 No such user / 5.1.1 Really");
        assert_eq!(refusal.enhanced_status().as_deref(), Some("5.1.1"));
        assert!(refusal.is_permanent());
        assert_eq!(sent.recipients, vec![Ok(()), Err(refusal), Ok(())]);
        connection.quit();
        assert!(server.join().unwrap().contains("DATA\r\nhi\r\n.\r\n"));
    }

    #[test]
    fn all_recipients_refused_sends_rset_and_no_data() {
        let mut script = opening("250 fake.test\r\n");
        script.extend(answer(&[
            "250 Ok\r\n",
            "550 5.1.1 No such user\r\n",
            "450 4.2.1 Try later\r\n",
            "250 Ok\r\n",
        ]));
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        let sent = send(&mut connection, &["a@fake.test", "b@fake.test"], "hi\r\n").unwrap();
        let last = reply(450, "4.2.1 Try later");
        assert_eq!(
            sent.recipients,
            vec![Err(reply(550, "5.1.1 No such user")), Err(last.clone())]
        );
        assert_eq!(sent.final_reply, last);
        connection.quit();
        let expected = lines(&[
            "EHLO client.test",
            "MAIL FROM:<alice@client.test>",
            "RCPT TO:<a@fake.test>",
            "RCPT TO:<b@fake.test>",
            "RSET",
            "QUIT",
        ]);
        assert_eq!(server.join().unwrap(), expected);
    }

    #[test]
    fn all_recipients_refused_when_pipelining_sends_rset_after_data_fails() {
        let mut script = opening("250-fake.test\r\n250 PIPELINING\r\n");
        script.extend([
            Lines(3),
            Say("250 Ok\r\n550 5.1.1 No such user\r\n554 5.5.1 No valid recipients\r\n"),
            Lines(1),
            Say("250 Ok\r\n"),
        ]);
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        let sent = send(&mut connection, &["a@fake.test"], "hi\r\n").unwrap();
        assert_eq!(sent.final_reply, reply(550, "5.1.1 No such user"));
        connection.quit();
        let received = server.join().unwrap();
        assert!(
            received.ends_with("DATA\r\nRSET\r\nQUIT\r\n"),
            "{received:?}"
        );
    }

    #[test]
    fn failure_at_end_of_data_is_rejected() {
        let mut script = opening("250 fake.test\r\n");
        script.extend(answer(&["250 Ok\r\n", "250 Ok\r\n", "354 Go ahead\r\n"]));
        script.extend([Data, Say("452 4.3.1 Insufficient system storage\r\n")]);
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        match send(&mut connection, &["bob@fake.test"], "hi\r\n") {
            Err(
                error @ ClientError::Rejected {
                    step: "end of data",
                    ..
                },
            ) => {
                assert!(
                    matches!(&error, ClientError::Rejected { reply, .. } if !reply.is_permanent())
                );
                assert_eq!(
                    error.to_string(),
                    "end of data rejected: 452 4.3.1 Insufficient system storage"
                );
            }
            other => panic!("{other:?}"),
        }
        connection.quit();
        server.join().unwrap();
    }

    #[test]
    fn a_message_larger_than_size_is_unsendable_before_mail() {
        let (addr, server) = fake_server(opening("250-fake.test\r\n250 SIZE 10\r\n"));
        let mut connection = open(addr).unwrap();
        match send(&mut connection, &["bob@fake.test"], "eleven bytes") {
            Err(ClientError::Unsendable(reason)) => {
                assert_eq!(reason, "message is 12 bytes, the server accepts at most 10")
            }
            other => panic!("{other:?}"),
        }
        connection.quit();
        assert_eq!(server.join().unwrap(), lines(&["EHLO client.test", "QUIT"]));
    }

    #[test]
    fn eight_bit_or_smtputf8_without_the_extension_is_unsendable() {
        let (addr, server) = fake_server(opening("250-fake.test\r\n250 PIPELINING\r\n"));
        let mut connection = open(addr).unwrap();
        let to = rcpts(&["bob@fake.test"]);
        for (eight_bit, smtputf8, expected) in [
            (
                true,
                false,
                "8-bit message and the server does not offer 8BITMIME",
            ),
            (
                false,
                true,
                "message needs SMTPUTF8 and the server does not offer it",
            ),
        ] {
            let result =
                connection.send("a@b.test", &to, &mut &b"hi\r\n"[..], 4, eight_bit, smtputf8);
            match result {
                Err(error @ ClientError::Unsendable(_)) => {
                    assert_eq!(error.to_string(), expected);
                }
                other => panic!("{other:?}"),
            }
        }
        connection.quit();
        assert_eq!(server.join().unwrap(), lines(&["EHLO client.test", "QUIT"]));
    }

    #[test]
    fn a_421_greeting_is_rejected() {
        let (addr, server) = fake_server(vec![Say("421 4.3.2 busy.test Too busy\r\n")]);
        match open(addr) {
            Err(ClientError::Rejected {
                step: "greeting",
                reply: r,
            }) => {
                assert_eq!(r, reply(421, "4.3.2 busy.test Too busy"))
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("opened"),
        }
        assert_eq!(server.join().unwrap(), "");
    }

    #[test]
    fn a_port_without_a_listener_is_a_connection_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        match open(addr) {
            Err(ClientError::Connection(reason)) => {
                assert!(reason.starts_with(&format!("cannot connect to {addr}")))
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("opened"),
        }
    }

    #[test]
    fn a_silent_server_times_out() {
        let (addr, server) = fake_server(vec![Say("220 fake.test\r\n"), Lines(1)]);
        let started = Instant::now();
        let plaintext = security(TlsMode::Off, None);
        match Connection::open(
            addr,
            "client.test",
            &timeouts(Duration::from_millis(200)),
            &plaintext,
        ) {
            Err(ClientError::Connection(reason)) => assert_eq!(reason, "timed out (at EHLO)"),
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("opened"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(server.join().unwrap(), "EHLO client.test\r\n");
    }

    #[test]
    fn after_a_clean_transaction_the_next_one_needs_no_rset() {
        let mut script = opening("250-fake.test\r\n250 PIPELINING\r\n");
        for _ in 0..2 {
            script.extend([
                Lines(3),
                Say("250 Ok\r\n250 Ok\r\n354 Go ahead\r\n"),
                Data,
                Say("250 Ok\r\n"),
            ]);
        }
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        for body in ["first\r\n", "second\r\n"] {
            send(&mut connection, &["bob@fake.test"], body).unwrap();
            connection.ready().unwrap();
        }
        connection.quit();
        let expected = lines(&["EHLO client.test"])
            + &transaction("first")
            + &transaction("second")
            + "QUIT\r\n";
        assert_eq!(server.join().unwrap(), expected);
    }

    #[test]
    fn after_a_failed_transaction_rset_comes_first() {
        let mut script = opening("250 fake.test\r\n");
        script.extend(answer(&["250 Ok\r\n", "250 Ok\r\n", "354 Go ahead\r\n"]));
        script.extend([Data, Say("451 4.3.0 Try again later\r\n")]);
        script.extend(answer(&[
            "250 2.0.0 Reset\r\n",
            "452 4.3.1 Full\r\n",
            "250 2.0.0 Reset\r\n",
            "250 Ok\r\n",
            "250 Ok\r\n",
            "354 Go ahead\r\n",
        ]));
        script.extend([Data, Say("250 Ok\r\n")]);
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        let failed = send(&mut connection, &["bob@fake.test"], "first\r\n");
        assert!(matches!(
            failed,
            Err(ClientError::Rejected {
                step: "end of data",
                ..
            })
        ));
        connection.ready().unwrap();
        let failed = send(&mut connection, &["bob@fake.test"], "second\r\n");
        assert!(matches!(
            failed,
            Err(ClientError::Rejected { step: "MAIL", .. })
        ));
        send(&mut connection, &["bob@fake.test"], "third\r\n").unwrap();
        connection.quit();
        let expected = lines(&["EHLO client.test"])
            + &transaction("first")
            + &lines(&["RSET", "MAIL FROM:<alice@client.test>", "RSET"])
            + &transaction("third")
            + "QUIT\r\n";
        assert_eq!(server.join().unwrap(), expected);
    }

    /// What the client sends for one message to bob@fake.test.
    fn transaction(body: &str) -> String {
        lines(&[
            "MAIL FROM:<alice@client.test>",
            "RCPT TO:<bob@fake.test>",
            "DATA",
            body,
            ".",
        ])
    }

    #[test]
    fn a_421_in_the_middle_closes_the_connection() {
        let mut script = opening("250 fake.test\r\n");
        script.extend(answer(&["250 Ok\r\n", "421 4.4.2 Timeout\r\n"]));
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        match send(&mut connection, &["bob@fake.test"], "hi\r\n") {
            Err(ClientError::Rejected {
                step: "RCPT",
                reply: r,
            }) => assert_eq!(r.code, 421),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            connection.ready(),
            Err(ClientError::Connection(_))
        ));
        drop(connection);
        server.join().unwrap();
    }

    #[test]
    fn malformed_replies_break_the_connection() {
        let long = Box::leak(format!("220 {}\r\n", "x".repeat(MAX_REPLY_LINE)).into_boxed_str());
        let many = Box::leak("220-x\r\n".repeat(MAX_REPLY_LINES + 1).into_boxed_str());
        for (reply, expected) in [
            (
                "220-fake.test\r\n250 mixed\r\n",
                "reply lines with different codes (at greeting)",
            ),
            (
                "2x0 fake.test\r\n",
                "malformed reply line \"2x0 fake.test\" (at greeting)",
            ),
            (
                "120 fake.test\r\n",
                "malformed reply line \"120 fake.test\" (at greeting)",
            ),
            (
                "220_fake.test\r\n",
                "malformed reply line \"220_fake.test\" (at greeting)",
            ),
            (long, "reply line too long (at greeting)"),
            (many, "reply has more than 100 lines (at greeting)"),
            (
                "220 fake.test",
                "connection closed by the server (at greeting)",
            ),
        ] {
            let (addr, server) = fake_server(vec![Say(reply), Hangup]);
            match open(addr) {
                Err(ClientError::Connection(reason)) => assert_eq!(reason, expected),
                Err(other) => panic!("{other:?}"),
                Ok(_) => panic!("opened with {reply:?}"),
            }
            server.join().unwrap();
        }
    }

    #[test]
    fn reply_lines_parse() {
        assert_eq!(
            parse_reply_line("250-PIPELINING"),
            Some((250, false, "PIPELINING"))
        );
        assert_eq!(parse_reply_line("250 Ok"), Some((250, true, "Ok")));
        assert_eq!(parse_reply_line("250"), Some((250, true, "")));
        assert_eq!(parse_reply_line("599 x"), Some((599, true, "x")));
        for bad in ["", "25", "650 x", "099 x", "25a x", "250x"] {
            assert_eq!(parse_reply_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn enhanced_status_codes_are_recognised() {
        assert_eq!(
            reply(250, "2.1.0 Ok").enhanced_status().as_deref(),
            Some("2.1.0")
        );
        assert_eq!(
            reply(550, "5.7.1").enhanced_status().as_deref(),
            Some("5.7.1")
        );
        assert_eq!(
            reply(452, "4.123.456 x").enhanced_status().as_deref(),
            Some("4.123.456")
        );
        for text in [
            "Ok",
            "3.1.0 x",
            "5.1 x",
            "5.1.1.1 x",
            "5.1234.1 x",
            "5..1 x",
            "",
        ] {
            assert_eq!(reply(550, text).enhanced_status(), None, "{text:?}");
        }
    }

    /// Streams `body` through `write_message`, reading it a few octets at a time.
    fn stuffed(body: &str, chunk: usize) -> String {
        let mut reader = BufReader::with_capacity(chunk, body.as_bytes());
        let mut out = Vec::new();
        let octets = write_message(&mut reader, &mut out).ok().unwrap();
        assert_eq!(octets, body.len() as u64);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn messages_are_dot_stuffed_with_crlf_line_ends() {
        for chunk in [1, 2, 3, 64 * 1024] {
            assert_eq!(stuffed(BODY, chunk), STUFFED);
            assert_eq!(stuffed("", chunk), ".\r\n");
            assert_eq!(
                stuffed("a\nb\r\n.c\n\r\n", chunk),
                "a\r\nb\r\n..c\r\n\r\n.\r\n"
            );
            assert_eq!(stuffed("x.\r\n.", chunk), "x.\r\n..\r\n.\r\n");
            assert_eq!(stuffed("bare\rcr\r", chunk), "bare\rcr\r\r\n.\r\n");
        }
    }

    #[test]
    fn an_unreadable_message_closes_the_connection() {
        struct Unreadable;
        impl Read for Unreadable {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(io::Error::other("disk on fire"))
            }
        }
        let mut script = opening("250-fake.test\r\n250 PIPELINING\r\n");
        script.extend([Lines(3), Say("250 Ok\r\n250 Ok\r\n354 Go ahead\r\n")]);
        let (addr, server) = fake_server(script);
        let mut connection = open(addr).unwrap();
        let to = rcpts(&["bob@fake.test"]);
        match connection.send(
            "a@b.test",
            &to,
            &mut BufReader::new(Unreadable),
            1,
            false,
            false,
        ) {
            Err(ClientError::Connection(reason)) => {
                assert_eq!(reason, "cannot read the message: disk on fire")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            connection.ready(),
            Err(ClientError::Connection(_))
        ));
        drop(connection);
        assert!(server.join().unwrap().ends_with("DATA\r\n"));
    }

    /// A process killed and reaped when the test ends, however it ends.
    struct Reaped(std::process::Child);

    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Three messages on one connection to Postfix's smtp-sink.
    #[test]
    fn relays_three_messages_to_smtp_sink() {
        use std::os::unix::fs::MetadataExt;
        let sink = crate::testing::tool("/usr/sbin/smtp-sink", "postfix");
        let dump = std::env::temp_dir().join(format!("postel-client-sink-{}", std::process::id()));
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = std::process::Command::new(&sink);
        if std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0) {
            command.args(["-u", "root"]);
        }
        command
            .arg("-D")
            .arg(&dump)
            .args([&format!("127.0.0.1:{port}"), "10"]);
        let _sink = Reaped(command.stdin(std::process::Stdio::null()).spawn().unwrap());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let started = Instant::now();
        let mut connection = loop {
            match open(addr) {
                Ok(connection) => break connection,
                Err(error) if started.elapsed() > Duration::from_secs(5) => panic!("{error}"),
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        };
        for n in 1..=3 {
            let body = format!("Subject: test {n}\r\n\r\nmessage number {n}\r\n.dot line\r\n");
            let sent = send(
                &mut connection,
                &["bob@sink.test", "carol@sink.test"],
                &body,
            )
            .unwrap();
            assert_eq!(sent.recipients, vec![Ok(()), Ok(())]);
            assert_eq!(sent.final_reply.code, 250);
        }
        connection.quit();
        let dumped = std::fs::read_to_string(&dump).unwrap_or_default();
        let _ = std::fs::remove_file(&dump);
        for n in 1..=3 {
            assert!(
                dumped.contains(&format!("message number {n}\n.dot line\n")),
                "{dumped}"
            );
        }
    }
}
