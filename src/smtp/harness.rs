//! A session driven the way the connection driver drives it, with a small fixed policy: what the unit tests
//! of the protocol and the session fuzz target feed their input through. The driver checks what must hold
//! for any input: messages start and end one at a time, every step makes progress, and the output is
//! reply lines only.

use crate::smtp::{
    BareLf, Detail, Domain, ForwardPath, Mailbox, Policy, RcptVerdict, Reply, ReversePath, Session,
    SessionParams, Step,
};

/// alice and bob live at localhost; other domains are remote, and only a trusted client may relay.
#[derive(Default)]
pub struct TestPolicy {
    pub trusted: bool,
    /// SEND, SOML and SAML are carried out (`terminal_delivery`).
    pub terminals: bool,
    /// The spool is below its reserve: every MAIL is refused for want of room.
    pub spool_full: bool,
}

impl Policy for TestPolicy {
    fn recipient(&self, to: &ForwardPath) -> RcptVerdict {
        match to {
            ForwardPath::Postmaster => RcptVerdict::Accept,
            ForwardPath::Mailbox(Mailbox {
                local,
                domain: Domain::Name(domain),
            }) if domain == "localhost" => {
                if ["alice", "bob", "postmaster"].contains(&local.to_lowercase().as_str()) {
                    RcptVerdict::Accept
                } else {
                    RcptVerdict::UnknownUser
                }
            }
            _ if self.trusted => RcptVerdict::Accept,
            _ => RcptVerdict::RelayDenied,
        }
    }

    /// The policy answers echo what they were asked.
    fn vrfy(&self, query: &str) -> Reply {
        Reply::new(252, Detail::DestinationValid, format!("maybe {query}"))
    }

    fn expn(&self, list: &str) -> Reply {
        Reply::new(
            550,
            Detail::BadDestinationMailbox,
            format!("no such list {list}"),
        )
    }

    /// alice's password is "secret".
    fn authenticate(&self, user: &str, password: &[u8]) -> bool {
        user == "alice" && password == b"secret"
    }

    /// Users send as themselves at localhost.
    fn may_send_as(&self, user: &str, sender: &ReversePath) -> bool {
        sender.to_string() == format!("{user}@localhost")
    }

    fn etrn(&self, domain: &str, _authenticated: bool) -> Reply {
        Reply::new(
            458,
            Detail::OtherMailSystem,
            format!("not now for {domain}"),
        )
    }

    /// alice holds mail for example.org and none for quiet.test; nobody else may have anything.
    fn atrn(&self, user: &str, domains: &[String]) -> Result<(), Reply> {
        let theirs = user == "alice"
            && domains
                .iter()
                .all(|d| d == "example.org" || d == "quiet.test");
        if !theirs {
            return Err(Reply::new(530, Detail::NotAuthorized, "not yours"));
        }
        if !domains.is_empty() && domains.iter().all(|d| d == "quiet.test") {
            return Err(Reply::new(453, Detail::Undefined, "You have no mail"));
        }
        Ok(())
    }

    /// A trusted client may have its session narrated, aliases included.
    fn narration(&self, authenticated: bool) -> Option<bool> {
        (self.trusted || authenticated).then_some(true)
    }

    fn spool_has_room(&self, _size: u64) -> bool {
        !self.spool_full
    }

    fn terminal_delivery(&self) -> bool {
        self.terminals
    }

    fn terminal_recipient(&self, _: &ForwardPath, _: bool) -> Result<(), Reply> {
        Ok(())
    }
}

pub fn params() -> SessionParams {
    SessionParams {
        id: "t1".into(),
        hostname: "mx.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 20,
        max_line_length: 512,
        bare_lf: BareLf::Normalize,
        tls_offered: true,
        auth_offered: true,
        tls_required: false,
        submission: false,
        odmr: false,
    }
}

/// What a session did with some input.
#[derive(Debug, Default)]
pub struct Run {
    /// "code status" of each reply (its last line).
    pub replies: Vec<String>,
    /// The whole last line of each reply.
    pub lines: Vec<String>,
    /// The messages that reached EndMessage, and their recipients.
    pub messages: Vec<(Vec<u8>, Vec<String>)>,
    pub aborted: usize,
    pub closed: bool,
    /// Every byte the session wrote.
    pub output: Vec<u8>,
    /// The octets thrown away at each STARTTLS (read before the handshake).
    pub discarded: Vec<usize>,
    /// The tarpit delay of each failed authentication.
    pub delays: Vec<std::time::Duration>,
    /// The session ended with the roles turned (ATRN).
    pub turned: bool,
    /// The envelope of the last message that reached EndMessage.
    pub envelope: Option<crate::smtp::Envelope>,
}

impl Run {
    pub fn codes(&self) -> Vec<&str> {
        self.replies.iter().map(|r| &r[..3]).collect()
    }
}

/// A step without the content it may borrow.
enum Event {
    NeedInput,
    Start,
    End,
    Abort,
    Close,
    StartTls,
    AuthFailed(std::time::Duration),
    Turn,
}

pub fn run(input: &[u8]) -> Run {
    run_with(params(), false, input, input.len().max(1))
}

/// Feeds `input` in pieces of `piece` bytes, as a reader would; a message that ends is queued as "Q1", "Q2"...
pub fn run_with(params: SessionParams, trusted: bool, input: &[u8], piece: usize) -> Run {
    let mut session = Session::new(
        params,
        Box::new(TestPolicy {
            trusted,
            ..TestPolicy::default()
        }),
    );
    let mut result = Run::default();
    let (mut buffer, mut fed, mut message) = (Vec::new(), 0, None::<Vec<u8>>);
    session.greeting();
    'feed: for _ in 0..1_000_000 {
        // Steps in a row that consumed nothing: more than a few means the session is stuck.
        let mut idle = 0;
        loop {
            let (used, step) = session.step(&buffer);
            idle = if used == 0 { idle + 1 } else { 0 };
            assert!(idle < 4, "the session makes no progress on {buffer:?}");
            let event = match step {
                Step::Data(content) => {
                    message
                        .as_mut()
                        .expect("data inside a message")
                        .extend_from_slice(content);
                    None
                }
                Step::NeedInput => Some(Event::NeedInput),
                Step::StartMessage => Some(Event::Start),
                Step::EndMessage => Some(Event::End),
                Step::AbortMessage => Some(Event::Abort),
                Step::Close => Some(Event::Close),
                Step::StartTls => Some(Event::StartTls),
                Step::AuthFailed { delay, .. } => Some(Event::AuthFailed(delay)),
                Step::Turn => Some(Event::Turn),
            };
            buffer.drain(..used);
            match event {
                None => {}
                Some(Event::NeedInput) => break,
                Some(Event::Start) => {
                    assert!(message.is_none(), "a message started inside another");
                    message = Some(Vec::new());
                }
                Some(Event::End) => {
                    let recipients = session
                        .envelope()
                        .recipients
                        .iter()
                        .map(|r| r.to_string())
                        .collect();
                    result.envelope = Some(session.envelope().clone());
                    result
                        .messages
                        .push((message.take().expect("a message"), recipients));
                    session.message_queued(Ok(&format!("Q{}", result.messages.len())));
                }
                // A handshake that always works; what was read before it is thrown away, as the driver does.
                Some(Event::StartTls) => {
                    result.discarded.push(buffer.len());
                    buffer.clear();
                    session.tls_started("TLSv1.3 with cipher TEST".into());
                }
                Some(Event::AuthFailed(delay)) => result.delays.push(delay),
                Some(Event::Abort) => {
                    assert!(message.take().is_some(), "an abort outside a message");
                    result.aborted += 1;
                }
                Some(Event::Close) => {
                    result.closed = true;
                    break 'feed;
                }
                Some(Event::Turn) => {
                    result.turned = true;
                    break 'feed;
                }
            }
        }
        if fed == input.len() {
            break;
        }
        let more = piece.min(input.len() - fed);
        buffer.extend_from_slice(&input[fed..fed + more]);
        fed += more;
    }
    result.output = session.output().to_vec();
    assert_printable_replies(&result.output);
    let output = String::from_utf8(result.output.clone()).unwrap();
    result.lines = output
        .split("\r\n")
        .filter(|line| line.len() > 3 && line.as_bytes()[3] == b' ')
        .map(str::to_string)
        .collect();
    result.replies = result
        .lines
        .iter()
        .map(|line| line.split(' ').take(2).collect::<Vec<_>>().join(" "))
        .collect();
    result
}

/// Every line of the output is a reply line of printable ASCII, ended by CRLF: no CR or LF anywhere else.
pub fn assert_printable_replies(output: &[u8]) {
    let text = String::from_utf8_lossy(output);
    let body = output
        .strip_suffix(b"\n")
        .unwrap_or_else(|| panic!("output does not end with CRLF: {text:?}"));
    for line in body.split(|&b| b == b'\n') {
        let line = line
            .strip_suffix(b"\r")
            .unwrap_or_else(|| panic!("a bare LF in the output: {text:?}"));
        assert!(
            line.len() >= 4
                && line[..3].iter().all(u8::is_ascii_digit)
                && matches!(line[3], b' ' | b'-'),
            "not a reply line: {:?}",
            String::from_utf8_lossy(line)
        );
        assert!(
            line.iter().all(|b| (0x20..=0x7e).contains(b)),
            "a byte outside 0x20-0x7E (a bare CR?) in {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

pub const STATES: [(&str, &str); 6] = [
    ("fresh", ""),
    ("ehlo", "EHLO client.test\r\n"),
    ("helo", "HELO client.test\r\n"),
    ("mail", "EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\n"),
    (
        "rcpt",
        "EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@localhost>\r\n",
    ),
    (
        "chunking",
        "EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@localhost>\r\nBDAT 1\r\nx",
    ),
];
