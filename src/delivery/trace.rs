//! Trace headers (RFC 5321 4.4): the Return-Path, Delivered-To and Received lines delivery prepends, and the
//! loop checks that read them back.

use chrono::{DateTime, Utc};

/// More Received headers than this and a message is taken to be looping (RFC 5321 6.3).
pub const MAX_RECEIVED: usize = 100;

/// Where a message came from, as its spool envelope records it.
pub struct Origin<'a> {
    pub helo: &'a str,
    /// The client's IP address, or "unknown" (local submission).
    pub client: &'a str,
    /// SMTP, ESMTP or local.
    pub protocol: &'a str,
    pub queue_id: &'a str,
    pub sender: &'a str,
}

impl<'a> Origin<'a> {
    /// The origin a spool envelope records.
    pub fn of(envelope: &'a crate::spool::Envelope) -> Origin<'a> {
        Origin {
            helo: &envelope.helo,
            client: &envelope.client,
            protocol: &envelope.protocol,
            queue_id: envelope.id.as_str(),
            sender: &envelope.sender,
        }
    }
}

/// The lines delivery puts above a message for `recipient`, LF line ends (mbox form).
pub fn trace_headers(
    origin: &Origin,
    hostname: &str,
    recipient: &str,
    now: DateTime<Utc>,
) -> String {
    format!(
        "Return-Path: <{sender}>\nDelivered-To: {recipient}\n{received}",
        sender = origin.sender,
        received = received(origin, hostname, Some(recipient), now),
    )
}

/// The Received header (RFC 5321 4.4) this host adds, LF line ends; `for` names the recipient when there is one.
pub fn received(
    origin: &Origin,
    hostname: &str,
    recipient: Option<&str>,
    now: DateTime<Utc>,
) -> String {
    let from = if origin.client == "unknown" || origin.protocol == "local" {
        format!("from {} (local submission)", sanitize(origin.helo))
    } else {
        format!(
            "from {} (unknown [{}])",
            sanitize(origin.helo),
            origin.client
        )
    };
    let target = recipient.map_or_else(String::new, |r| format!("\n\tfor <{r}>"));
    format!(
        "Received: {from}\n\tby {hostname} (Postel) with {protocol} id {id}{target}; {date}\n",
        protocol = origin.protocol,
        id = origin.queue_id,
        date = now.to_rfc2822(),
    )
}

/// A HELO name goes into a header: keep it on one line and free of parentheses that would unbalance the comment.
fn sanitize(helo: &str) -> String {
    let name: String = helo
        .chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' {
                '?'
            } else {
                c
            }
        })
        .collect();
    if name.is_empty() {
        "unknown".to_string()
    } else {
        name
    }
}

/// Why a message must not be delivered to a recipient again.
#[derive(Debug, PartialEq, Eq)]
pub enum Loop {
    /// It already carries `Delivered-To: <recipient>`.
    AlreadyDelivered,
    /// It carries more than [`MAX_RECEIVED`] Received headers.
    TooManyHops(usize),
}

/// Checks a message's header section (CRLF or LF line ends) for signs of a mail loop to `recipient`.
pub fn find_loop(headers: &[u8], recipient: &str) -> Option<Loop> {
    let mut received = 0;
    for line in headers.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"Received") {
            received += 1;
        } else if name.eq_ignore_ascii_case(b"Delivered-To")
            && String::from_utf8_lossy(value)
                .trim()
                .eq_ignore_ascii_case(recipient)
        {
            return Some(Loop::AlreadyDelivered);
        }
    }
    (received > MAX_RECEIVED).then_some(Loop::TooManyHops(received))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_received_header_names_client_host_protocol_id_and_recipient() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let origin = Origin {
            helo: "client.test",
            client: "192.0.2.7",
            protocol: "ESMTP",
            queue_id: "ABC",
            sender: "alice@remote.test",
        };
        assert_eq!(
            trace_headers(&origin, "mx.test", "bob@localhost", now),
            "Return-Path: <alice@remote.test>\nDelivered-To: bob@localhost\n\
             Received: from client.test (unknown [192.0.2.7])\n\tby mx.test (Postel) with ESMTP id ABC\n\
             \tfor <bob@localhost>; Tue, 24 Nov 2026 10:00:00 +0000\n"
        );
        let local = Origin {
            helo: "",
            client: "unknown",
            protocol: "local",
            ..origin
        };
        assert!(
            trace_headers(&local, "mx.test", "bob@localhost", now)
                .contains("Received: from unknown (local submission)\n")
        );
    }

    #[test]
    fn loops_are_found_in_the_header_section_only() {
        let headers = b"Received: a\r\nDelivered-To: Bob@Localhost\r\nSubject: x\r\n\r\n";
        assert_eq!(
            find_loop(headers, "bob@localhost"),
            Some(Loop::AlreadyDelivered)
        );
        assert_eq!(find_loop(headers, "carol@localhost"), None);
        assert_eq!(
            find_loop(
                b"Subject: x\r\n\r\nDelivered-To: bob@localhost\r\n",
                "bob@localhost"
            ),
            None
        );
        let many = "Received: hop\r\n".repeat(101);
        assert_eq!(
            find_loop(many.as_bytes(), "bob@localhost"),
            Some(Loop::TooManyHops(101))
        );
        assert_eq!(
            find_loop("Received: hop\n".repeat(100).as_bytes(), "bob@localhost"),
            None
        );
    }
}
