//! A message's envelope (who sent it, to whom, how it arrived) and its text form in a record.

use std::iter::Peekable;
use std::net::IpAddr;
use std::str::Split;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};

use super::format;
use super::headers::HeaderSummary;
use super::id::QueueId;
use crate::smtp::{BodyType, Protocol};

/// What the spool keeps about a message besides its content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// The queue id; leave it unassigned (the default) for [`Spool::new_message`](super::Spool::new_message),
    /// which assigns it.
    pub id: QueueId,
    /// When the message arrived (kept to the microsecond).
    pub arrival: DateTime<Utc>,
    /// The client's IP address; None when there is none (local submission, a client on a pipe).
    pub client: Option<IpAddr>,
    /// The name the client gave in HELO or EHLO.
    pub helo: String,
    /// SMTP, ESMTP, ESMTPS, ESMTPA or ESMTPSA (RFC 3848: with TLS, AUTH), or local.
    pub protocol: Protocol,
    /// What TLS agreed on ("TLSv1.3 with cipher ..."), for an encrypted session.
    pub tls: Option<String>,
    /// The user the client authenticated as, kept only with `received_auth_user = true`.
    pub auth: Option<String>,
    /// The bare reverse-path address; empty for the null sender.
    pub sender: String,
    /// The bare forward-path addresses ("bob@localhost", "postmaster"), in the client's order.
    pub recipients: Vec<String>,
    /// What the client gave with BODY=.
    pub body: Option<BodyType>,
    /// Whether the client asked for SMTPUTF8.
    pub smtputf8: bool,
    /// The size the client declared with SIZE=.
    pub declared_size: Option<u64>,
    /// The bytes the body takes in an mbox file (LF line ends, mboxrd quoting, a last line ended), counted as it
    /// arrived, so that a delivery knows the length of its append without reading the body for it. Set by the
    /// spool when it keeps the whole body in memory (up to 128 KiB); None for a larger one, whose envelope is
    /// written before its body, and for records of format versions before 3.
    pub mbox_size: Option<u64>,
    /// The header section's length and trace field counts, noted as it arrived, so that a delivery checks for a
    /// loop without reading the message. Set by the spool when the header section ends within the first 128 KiB;
    /// None for a longer one and for records of format versions before 4.
    pub headers: Option<HeaderSummary>,
}

impl Envelope {
    /// A message from `sender` (empty for the null sender) to `recipients`, arrived at `arrival`, as a local
    /// program submits it: no client, no HELO name, protocol local, no TLS, AUTH or MAIL parameters, and no
    /// queue id until [`Spool::new_message`](super::Spool::new_message) assigns one. Mail that came another
    /// way sets the fields it has with struct update syntax (`Envelope { helo, ..Envelope::new(...) }`), so
    /// that a new field needs a change only where it is known.
    pub fn new(sender: String, recipients: Vec<String>, arrival: DateTime<Utc>) -> Envelope {
        Envelope {
            id: QueueId::default(),
            arrival,
            client: None,
            helo: String::new(),
            protocol: Protocol::Local,
            tls: None,
            auth: None,
            sender,
            recipients,
            body: None,
            smtputf8: false,
            declared_size: None,
            mbox_size: None,
            headers: None,
        }
    }

    /// The envelope as it will read back from disk: every control character in a value replaced
    /// with '?', and the arrival time cut to whole microseconds.
    pub(crate) fn sanitized(mut self) -> Envelope {
        self.arrival = self.arrival.trunc_subsecs(6);
        [&mut self.helo, &mut self.sender]
            .into_iter()
            .chain(&mut self.recipients)
            .chain(&mut self.tls)
            .chain(&mut self.auth)
            .for_each(replace_controls);
        self
    }

    /// The text form: the format's version line, then one `key value` line per field, in the
    /// documented order.
    pub(crate) fn encode(&self) -> String {
        let mut text = String::with_capacity(256);
        text.push_str(format::LINE);
        let mut line = |key: &str, value: &str| {
            text.push_str(key);
            text.push(' ');
            text.push_str(value);
            text.push('\n');
        };
        line("id", self.id.as_str());
        line(
            "arrival",
            &self.arrival.to_rfc3339_opts(SecondsFormat::Micros, true),
        );
        match self.client {
            Some(ip) => line("client", &ip.to_string()),
            None => line("client", UNKNOWN_CLIENT),
        }
        line("helo", &self.helo);
        line("protocol", self.protocol.as_str());
        if let Some(tls) = &self.tls {
            line("tls", tls);
        }
        if let Some(user) = &self.auth {
            line("auth", user);
        }
        line("sender", &format!("<{}>", self.sender));
        if let Some(body) = self.body {
            line("body", body.as_str());
        }
        if self.smtputf8 {
            line("smtputf8", "yes");
        }
        if let Some(size) = self.declared_size {
            line("size", &size.to_string());
        }
        if let Some(size) = self.mbox_size {
            line("mbox_size", &size.to_string());
        }
        if let Some(headers) = self.headers {
            let HeaderSummary {
                len,
                received,
                delivered_to,
            } = headers;
            line(
                "headers",
                &format!("{len} received {received} delivered_to {delivered_to}"),
            );
        }
        for recipient in &self.recipients {
            line("rcpt", &format!("<{recipient}>"));
        }
        text
    }

    /// Parses the text form; the error says what is wrong with it.
    pub(crate) fn parse(bytes: &[u8]) -> Result<Envelope, String> {
        let text = std::str::from_utf8(bytes).map_err(|_| "the envelope is not UTF-8")?;
        let text = text
            .strip_suffix('\n')
            .ok_or("the envelope does not end with a newline")?;
        let mut fields = Fields(text.split('\n').peekable());
        if let Some(line) = fields.0.peek() {
            match format::parse_line(line) {
                Some(Ok(version)) if format::readable(version) => {}
                Some(Ok(version)) => return Err(format!("spool format version {version}")),
                Some(Err(what)) => return Err(what),
                None => {}
            }
            fields.optional("version");
        }
        let envelope = Envelope {
            id: fields
                .required("id")?
                .parse()
                .map_err(|e| format!("bad id: {e}"))?,
            arrival: DateTime::parse_from_rfc3339(fields.required("arrival")?)
                .map_err(|e| format!("bad arrival: {e}"))?
                .with_timezone(&Utc),
            client: match fields.required("client")? {
                UNKNOWN_CLIENT => None,
                ip => Some(ip.parse().map_err(|_| format!("bad client {ip:?}"))?),
            },
            helo: fields.required("helo")?.to_string(),
            protocol: {
                let name = fields.required("protocol")?;
                Protocol::from_name(name).ok_or_else(|| format!("bad protocol {name:?}"))?
            },
            tls: fields.optional("tls").map(str::to_string),
            auth: fields.optional("auth").map(str::to_string),
            sender: angle_addr(fields.required("sender")?)?,
            body: match fields.optional("body") {
                None => None,
                Some(name) => {
                    Some(BodyType::from_name(name).ok_or_else(|| format!("bad body {name:?}"))?)
                }
            },
            smtputf8: match fields.optional("smtputf8") {
                None => false,
                Some("yes") => true,
                Some(other) => return Err(format!("bad smtputf8 value {other:?}")),
            },
            declared_size: match fields.optional("size") {
                None => None,
                Some(size) => Some(size.parse().map_err(|_| format!("bad size {size:?}"))?),
            },
            mbox_size: match fields.optional("mbox_size") {
                None => None,
                Some(size) => Some(
                    size.parse()
                        .map_err(|_| format!("bad mbox_size {size:?}"))?,
                ),
            },
            headers: match fields.optional("headers") {
                None => None,
                Some(value) => {
                    Some(header_summary(value).ok_or_else(|| format!("bad headers {value:?}"))?)
                }
            },
            recipients: std::iter::from_fn(|| fields.optional("rcpt"))
                .map(angle_addr)
                .collect::<Result<_, _>>()?,
        };
        if envelope.recipients.is_empty() {
            return Err("no rcpt line".to_string());
        }
        match fields.0.next() {
            Some(line) => Err(format!("unexpected line {line:?}")),
            None => Ok(envelope),
        }
    }
}

/// The format version of an envelope's text form: the one its first line names, 1 if it has no
/// version line, None if that line does not parse.
pub(super) fn version(bytes: &[u8]) -> Option<u32> {
    let first = bytes.split(|&b| b == b'\n').next()?;
    match std::str::from_utf8(first).ok().and_then(format::parse_line) {
        None => Some(1),
        Some(parsed) => parsed.ok(),
    }
}

/// The client line of a message that came from no IP address.
const UNKNOWN_CLIENT: &str = "unknown";

/// The lines of an envelope, taken in order.
struct Fields<'a>(Peekable<Split<'a, char>>);

impl<'a> Fields<'a> {
    /// The value of the next line if that line has this key.
    fn optional(&mut self, key: &str) -> Option<&'a str> {
        let value = self.0.peek()?.strip_prefix(key)?.strip_prefix(' ')?;
        self.0.next();
        Some(value)
    }

    /// The value of the next line, which must have this key.
    fn required(&mut self, key: &str) -> Result<&'a str, String> {
        self.optional(key)
            .ok_or_else(|| format!("no {key} line where one belongs"))
    }
}

/// A `headers` value: `LEN received N delivered_to M`.
fn header_summary(value: &str) -> Option<HeaderSummary> {
    let mut words = value.split(' ');
    let len = words.next()?.parse().ok()?;
    let mut count = |key: &str| {
        (words.next()? == key)
            .then(|| words.next()?.parse().ok())
            .flatten()
    };
    let summary = HeaderSummary {
        len,
        received: count("received")?,
        delivered_to: count("delivered_to")?,
    };
    words.next().is_none().then_some(summary)
}

/// The address inside `<...>`.
fn angle_addr(value: &str) -> Result<String, String> {
    value
        .strip_prefix('<')
        .and_then(|v| v.strip_suffix('>'))
        .map(str::to_string)
        .ok_or_else(|| format!("address {value:?} is not in angle brackets"))
}

fn replace_controls(value: &mut String) {
    if value.chars().any(char::is_control) {
        *value = value
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn example() -> Envelope {
        let arrival = Utc.with_ymd_and_hms(2026, 11, 24, 5, 3, 1).unwrap()
            + chrono::Duration::microseconds(123_456);
        let recipients = vec!["bob@localhost".to_string(), "postmaster".to_string()];
        Envelope {
            id: "19AB5D7C5E3F1001A3F2".parse().unwrap(),
            client: Some("127.0.0.1".parse().unwrap()),
            helo: "client.example".to_string(),
            protocol: Protocol::Esmtp,
            body: Some(BodyType::EightBitMime),
            smtputf8: true,
            declared_size: Some(1234),
            mbox_size: Some(1300),
            headers: Some(HeaderSummary {
                len: 412,
                received: 2,
                delivered_to: 0,
            }),
            ..Envelope::new("alice@example.org".to_string(), recipients, arrival)
        }
    }

    #[test]
    fn the_text_form_is_the_documented_one_and_parses_back() {
        let envelope = example();
        let text = envelope.encode();
        assert_eq!(
            text,
            "version 4\nid 19AB5D7C5E3F1001A3F2\narrival 2026-11-24T05:03:01.123456Z\nclient 127.0.0.1\n\
             helo client.example\nprotocol ESMTP\nsender <alice@example.org>\nbody 8BITMIME\n\
             smtputf8 yes\nsize 1234\nmbox_size 1300\nheaders 412 received 2 delivered_to 0\nrcpt <bob@localhost>\nrcpt <postmaster>\n"
        );
        assert_eq!(Envelope::parse(text.as_bytes()), Ok(envelope));
    }

    #[test]
    fn an_envelope_without_a_version_line_is_version_1() {
        let envelope = example();
        let text = envelope.encode();
        let unversioned = text.strip_prefix(format::LINE).unwrap();
        assert_eq!(version(text.as_bytes()), Some(format::VERSION));
        assert_eq!(version(unversioned.as_bytes()), Some(1));
        assert_eq!(Envelope::parse(unversioned.as_bytes()), Ok(envelope));
    }

    #[test]
    fn an_envelope_in_a_version_this_postel_does_not_read_is_refused() {
        let newer = example().encode().replace("version 4\n", "version 5\n");
        assert_eq!(version(newer.as_bytes()), Some(5));
        let error = Envelope::parse(newer.as_bytes()).unwrap_err();
        assert!(error.contains("spool format version 5"), "{error}");
        assert_eq!(version(b"version x\nid 1\n"), None);
    }

    #[test]
    fn optional_fields_and_the_null_sender_round_trip() {
        let envelope = Envelope {
            id: example().id,
            client: example().client,
            protocol: Protocol::Esmtp,
            ..Envelope::new(String::new(), example().recipients, example().arrival)
        };
        let text = envelope.encode();
        assert!(text.contains("sender <>\n") && !text.contains("size"));
        assert_eq!(Envelope::parse(text.as_bytes()), Ok(envelope));
        let local = Envelope {
            client: None,
            protocol: Protocol::Local,
            ..example()
        };
        let text = local.encode();
        assert!(text.contains("client unknown\n") && text.contains("protocol local\n"));
        assert_eq!(Envelope::parse(text.as_bytes()), Ok(local));
        let v6 = Envelope {
            client: Some("::1".parse().unwrap()),
            protocol: Protocol::Smtp,
            body: Some(BodyType::SevenBit),
            ..example()
        };
        let text = v6.encode();
        assert!(text.contains("client ::1\n") && text.contains("body 7BIT\n"));
        assert_eq!(Envelope::parse(text.as_bytes()), Ok(v6));
    }

    #[test]
    fn control_characters_become_question_marks() {
        let envelope = Envelope {
            helo: "evil\r\nrcpt <x@y>".to_string(),
            recipients: vec!["a\u{0}b@c\u{85}".to_string()],
            arrival: example().arrival + chrono::Duration::nanoseconds(999),
            ..example()
        }
        .sanitized();
        assert_eq!(envelope.helo, "evil??rcpt <x@y>");
        assert_eq!(envelope.recipients, ["a?b@c?"]);
        assert_eq!(envelope.arrival, example().arrival);
        assert_eq!(Envelope::parse(envelope.encode().as_bytes()), Ok(envelope));
    }

    #[test]
    fn bad_envelopes_say_what_is_wrong() {
        let good = example().encode();
        let cases = [
            (
                good.replace("rcpt <bob@localhost>\nrcpt <postmaster>\n", ""),
                "no rcpt line",
            ),
            (good.replace("helo", "hello"), "no helo line"),
            (good.replace("size 1234", "size lots"), "bad size"),
            (
                good.replace("<alice@example.org>", "alice@example.org"),
                "angle brackets",
            ),
            (format!("{good}extra line\n"), "unexpected line"),
            (good.trim_end().to_string(), "newline"),
            (good.replace("19AB5D7C5E3F1001A3F2", "1"), "bad id"),
            (
                good.replace("client 127.0.0.1", "client 127.1"),
                "bad client",
            ),
            (
                good.replace("protocol ESMTP", "protocol esmtp"),
                "bad protocol",
            ),
            (good.replace("body 8BITMIME", "body BINARYMIME"), "bad body"),
            (good.replace("received 2", "received two"), "bad headers"),
            (
                good.replace("delivered_to 0", "delivered_to 0 more"),
                "bad headers",
            ),
            (good.replace(" received 2", ""), "bad headers"),
        ];
        for (text, what) in cases {
            let error = Envelope::parse(text.as_bytes()).unwrap_err();
            assert!(error.contains(what), "{error:?} should mention {what:?}");
        }
    }
}
