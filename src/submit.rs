//! Local submission: turning what a program pipes into `sendmail` into a message for the spool. Reads the header
//! section, takes recipients from To/Cc/Bcc with `-t` (dropping Bcc), adds the From, Date and Message-ID a
//! message lacks (RFC 5322 3.6), and turns LF line ends into CRLF.

use std::io::{self, BufRead};

use chrono::{DateTime, Utc};

use crate::copy::{Copier, Format};

/// What the sendmail options say about one message.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `-t`: recipients from the To, Cc and Bcc headers.
    pub recipients_from_headers: bool,
    /// `-i` / `-oi`: a line holding only "." does not end the message.
    pub ignore_dots: bool,
    /// `-F name`: the full name for a From header we add.
    pub full_name: Option<String>,
}

/// The longest header section read before the rest counts as body (a program that sends no headers at all).
const MAX_HEADER_SECTION: usize = 1024 * 1024;

/// A message read from standard input: its header section (CRLF, as it will be stored) and what follows.
pub struct Prepared {
    pub headers: Vec<u8>,
    /// Addresses found in To/Cc/Bcc (only with `-t`).
    pub header_recipients: Vec<String>,
    /// The input ended with a line holding only "." (without `-i`): there is no body left to read.
    pub ended: bool,
}

/// Reads the header section of `input` and completes it. `sender` goes into an added From header.
pub fn prepare(
    input: &mut dyn BufRead,
    options: &Options,
    sender: &str,
    message_id: &str,
    now: DateTime<Utc>,
) -> io::Result<Prepared> {
    let mut read = read_header_section(input, options.ignore_dots)?;
    let mut header_recipients = Vec::new();
    if options.recipients_from_headers {
        header_recipients = recipients_of(&read.fields);
        read.fields
            .retain(|field| !field_name(field).eq_ignore_ascii_case("bcc"));
    }
    let added = missing_fields(&read.fields, options, sender, message_id, now);
    Ok(Prepared {
        headers: assemble(&added, &read),
        header_recipients,
        ended: read.ended,
    })
}

/// The header section as read: fields with their continuation lines joined by CRLF, without line ends.
struct HeaderSection {
    fields: Vec<Vec<u8>>,
    /// The first line of the body when the section ended without an empty line (a line that is no header).
    body_start: Option<Vec<u8>>,
    /// Its length as read, in bytes.
    size: usize,
    /// The input ended with a line holding only "." (unless dots are ignored).
    ended: bool,
}

/// Reads header lines up to the empty line that ends them, the first line that is no header, a lone "." (unless
/// `ignore_dots`), the end of the input, or [`MAX_HEADER_SECTION`] bytes.
fn read_header_section(input: &mut dyn BufRead, ignore_dots: bool) -> io::Result<HeaderSection> {
    let mut section = HeaderSection {
        fields: Vec::new(),
        body_start: None,
        size: 0,
        ended: false,
    };
    loop {
        let mut line = Vec::new();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(section);
        }
        let text = trim_line_end(&line);
        if !ignore_dots && text == b"." {
            section.ended = true;
            return Ok(section);
        }
        section.size += line.len();
        let continues =
            text.first().is_some_and(|&b| b == b' ' || b == b'\t') && !section.fields.is_empty();
        let is_header = continues || is_field(text);
        if text.is_empty() || !is_header || section.size > MAX_HEADER_SECTION {
            // The first line that is no header: without an empty line before it, it starts the body.
            section.body_start = (!text.is_empty()).then_some(line);
            return Ok(section);
        }
        match section.fields.last_mut() {
            Some(last) if continues => {
                last.extend_from_slice(b"\r\n");
                last.extend_from_slice(text);
            }
            _ => section.fields.push(text.to_vec()),
        }
    }
}

/// The addresses in the To, Cc and Bcc fields (for `-t`).
fn recipients_of(fields: &[Vec<u8>]) -> Vec<String> {
    fields
        .iter()
        .filter(|field| {
            ["to", "cc", "bcc"].contains(&field_name(field).to_ascii_lowercase().as_str())
        })
        .flat_map(|field| addresses(&String::from_utf8_lossy(field_value(field))))
        .collect()
}

/// The From, Date and Message-ID fields a message lacks (RFC 5322 3.6), as they are to be added.
fn missing_fields(
    fields: &[Vec<u8>],
    options: &Options,
    sender: &str,
    message_id: &str,
    now: DateTime<Utc>,
) -> Vec<String> {
    let has = |name: &str| {
        fields
            .iter()
            .any(|field| field_name(field).eq_ignore_ascii_case(name))
    };
    let mut added = Vec::new();
    if !has("from") {
        added.push(match &options.full_name {
            Some(name) => format!("From: {} <{sender}>", quote_phrase(name)),
            None => format!("From: {sender}"),
        });
    }
    if !has("date") {
        added.push(format!("Date: {}", now.to_rfc2822()));
    }
    if !has("message-id") {
        added.push(format!("Message-ID: <{message_id}>"));
    }
    added
}

/// The header section as it is queued: the added fields, the message's own, the empty line, and the body's
/// first line if the section ended on it; CRLF line ends.
fn assemble(added: &[String], read: &HeaderSection) -> Vec<u8> {
    let mut headers = Vec::with_capacity(read.size + 256);
    for line in added
        .iter()
        .map(|l| l.as_bytes())
        .chain(read.fields.iter().map(|l| l.as_slice()))
    {
        headers.extend_from_slice(line);
        headers.extend_from_slice(b"\r\n");
    }
    headers.extend_from_slice(b"\r\n");
    if let Some(first) = &read.body_start {
        headers.extend_from_slice(trim_line_end(first));
        if first.ends_with(b"\n") {
            headers.extend_from_slice(b"\r\n");
        }
    }
    headers
}

/// Copies the body from `input` into `write`, with CRLF line ends; stops at a lone "." unless dots are ignored.
pub fn copy_body(
    input: &mut dyn BufRead,
    ignore_dots: bool,
    write: &mut dyn FnMut(&[u8]),
) -> io::Result<()> {
    let mut out = Copier::new(Callback(write), Format::CRLF);
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        let text = trim_line_end(&line);
        if !ignore_dots && text == b"." {
            break;
        }
        // A last line without its LF loses a CR it ends with, as every line loses its line end.
        out.write(if line.ends_with(b"\n") { &line } else { text })?;
    }
    out.finish().map(drop)
}

/// Output to a function that takes every piece.
struct Callback<'a>(&'a mut dyn FnMut(&[u8]));

impl io::Write for Callback<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        (self.0)(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `name:` with a name of printable characters other than colon (RFC 5322 2.2).
fn is_field(line: &[u8]) -> bool {
    match line.iter().position(|&b| b == b':') {
        Some(colon) if colon > 0 => line[..colon].iter().all(|&b| (33..=126).contains(&b)),
        _ => false,
    }
}

fn field_name(field: &[u8]) -> &str {
    let colon = field.iter().position(|&b| b == b':').unwrap_or(0);
    std::str::from_utf8(&field[..colon]).unwrap_or("")
}

fn field_value(field: &[u8]) -> &[u8] {
    let colon = field
        .iter()
        .position(|&b| b == b':')
        .map_or(field.len(), |c| c + 1);
    &field[colon..]
}

/// The addresses in an address-list header value: `a@b, "Name" <c@d>, Group: e@f;` (comments dropped).
pub fn addresses(value: &str) -> Vec<String> {
    let mut items = Vec::new();
    let (mut current, mut depth, mut quoted, mut angle) = (String::new(), 0u32, false, false);
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if quoted => {
                current.push(c);
                current.extend(chars.next());
            }
            '"' if depth == 0 => {
                quoted = !quoted;
                current.push(c);
            }
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '<' if !quoted => {
                angle = true;
                current.push(c);
            }
            '>' if !quoted => {
                angle = false;
                current.push(c);
            }
            ',' | ';' if !quoted && !angle => items.push(std::mem::take(&mut current)),
            ':' if !quoted && !angle => current.clear(),
            '\r' | '\n' => current.push(' '),
            _ => current.push(c),
        }
    }
    items.push(current);
    items
        .iter()
        .filter_map(|item| {
            let item = item.trim();
            let address = match (item.rfind('<'), item.rfind('>')) {
                (Some(open), Some(close)) if open < close => &item[open + 1..close],
                _ => item,
            };
            let address = address.trim();
            (!address.is_empty()).then(|| address.to_string())
        })
        .collect()
}

/// A display name as an RFC 5322 phrase: quoted when it holds anything but atoms and spaces.
fn quote_phrase(name: &str) -> String {
    if name
        .chars()
        .all(|c| c.is_alphanumeric() || " !#$%&'*+-/=?^_`{|}~".contains(c))
    {
        name.to_string()
    } else {
        format!("\"{}\"", name.replace('\\', "\\\\").replace('"', "\\\""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn run(input: &str, options: &Options) -> (String, Vec<String>) {
        let mut input = input.as_bytes();
        let prepared = prepare(&mut input, options, "alice@mx.test", "ID@mx.test", now()).unwrap();
        let mut message = prepared.headers;
        if !prepared.ended {
            copy_body(&mut input, options.ignore_dots, &mut |b| {
                message.extend_from_slice(b)
            })
            .unwrap();
        }
        (
            String::from_utf8(message).unwrap(),
            prepared.header_recipients,
        )
    }

    #[test]
    fn missing_headers_are_added_and_line_ends_become_crlf() {
        let (message, _) = run("Subject: hi\n\nbody\n", &Options::default());
        assert_eq!(
            message,
            "From: alice@mx.test\r\nDate: Tue, 24 Nov 2026 10:00:00 +0000\r\nMessage-ID: <ID@mx.test>\r\n\
             Subject: hi\r\n\r\nbody\r\n"
        );
        let options = Options {
            full_name: Some("Cron Daemon".into()),
            ..Options::default()
        };
        let (message, _) = run(
            "From: bob@x.test\nDate: yesterday\nMessage-ID: <m@x>\n\nbody",
            &options,
        );
        assert_eq!(
            message,
            "From: bob@x.test\r\nDate: yesterday\r\nMessage-ID: <m@x>\r\n\r\nbody"
        );
        let (message, _) = run("Subject: x\n\n", &options);
        assert!(
            message.starts_with("From: Cron Daemon <alice@mx.test>\r\n"),
            "{message}"
        );
    }

    #[test]
    fn a_message_without_headers_is_all_body() {
        let (message, _) = run("just text\nmore\n", &Options::default());
        assert!(
            message.ends_with("Message-ID: <ID@mx.test>\r\n\r\njust text\r\nmore\r\n"),
            "{message:?}"
        );
    }

    #[test]
    fn a_lone_dot_ends_the_message_unless_dots_are_ignored() {
        let (message, _) = run("Subject: x\n\nline\n.\nafter\n", &Options::default());
        assert!(message.ends_with("\r\n\r\nline\r\n"), "{message:?}");
        let options = Options {
            ignore_dots: true,
            ..Options::default()
        };
        let (message, _) = run("Subject: x\n\nline\n.\nafter\n", &options);
        assert!(
            message.ends_with("\r\n\r\nline\r\n.\r\nafter\r\n"),
            "{message:?}"
        );
    }

    #[test]
    fn recipients_come_from_to_cc_and_bcc_and_bcc_is_removed() {
        let options = Options {
            recipients_from_headers: true,
            ..Options::default()
        };
        let (message, recipients) = run(
            "To: \"Doe, John\" <john@x.test>, bob\nCc: carol@y.test (Carol),\n dave@z.test\nBcc: secret@w.test\n\
             Subject: s\n\nbody\n",
            &options,
        );
        assert_eq!(
            recipients,
            [
                "john@x.test",
                "bob",
                "carol@y.test",
                "dave@z.test",
                "secret@w.test"
            ]
        );
        assert!(!message.contains("secret"), "{message}");
        assert!(
            message.contains("Cc: carol@y.test (Carol),\r\n dave@z.test\r\n"),
            "{message}"
        );
    }

    #[test]
    fn address_lists() {
        assert_eq!(addresses("team: a@x, b@y;, c@z"), ["a@x", "b@y", "c@z"]);
        assert_eq!(addresses("<a@x>"), ["a@x"]);
        assert_eq!(addresses(""), Vec::<String>::new());
    }
}
