//! Trace headers (RFC 5321 4.4): the Return-Path, Delivered-To and Received lines delivery prepends, and the
//! loop checks that read them back.

use std::net::IpAddr;
use std::sync::Arc;

use crate::smtp::Protocol;
use crate::spool::{Envelope, HeaderSummary, headers};

/// More Received headers than this and a message is taken to be looping (RFC 5321 6.3).
pub const MAX_RECEIVED: usize = 100;

/// The lines delivery puts above a message for `recipient`, LF line ends (mbox form).
pub fn trace_headers(envelope: &Envelope, hostname: &str, recipient: &str) -> String {
    format!(
        "Return-Path: <{sender}>\nDelivered-To: {recipient}\n{received}",
        sender = envelope.sender,
        received = received(envelope, hostname, Some(recipient)),
    )
}

/// The Received header (RFC 5321 4.4) this host adds, LF line ends; `for` names the recipient when there is one.
/// Its date is when the message arrived here, however much later it is delivered.
pub fn received(envelope: &Envelope, hostname: &str, recipient: Option<&str>) -> String {
    let helo = sanitize(&envelope.helo);
    let from = match envelope.client {
        Some(ip) if envelope.protocol != Protocol::Local => {
            format!("from {helo} (unknown {})", address_literal(ip))
        }
        _ => format!("from {helo} (local submission)"),
    };
    let target = recipient.map_or_else(String::new, |r| format!("\n\tfor <{r}>"));
    let tls = envelope
        .tls
        .as_deref()
        .map_or_else(String::new, |tls| format!("\n\t(using {})", sanitize(tls)));
    let auth = envelope.auth.as_deref().map_or_else(String::new, |user| {
        format!("\n\t(Authenticated sender: {})", sanitize(user))
    });
    format!(
        "Received: {from}{tls}{auth}\n\tby {hostname} (Postel) with {protocol} id {id}{target}; {date}\n",
        protocol = envelope.protocol.as_str(),
        id = envelope.id,
        date = envelope.arrival.to_rfc2822(),
    )
}

/// An IP address as RFC 5321 4.1.3 writes it in TCP-info: `[192.0.2.7]`, `[IPv6:2001:db8::1]`.
fn address_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(ip) => format!("[{ip}]"),
        IpAddr::V6(ip) => format!("[IPv6:{ip}]"),
    }
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

/// What an attempt knows of a message's header section, for its loop checks and the notification of its
/// failures: the section read from the spool, or only the envelope's summary of it. The summary is enough for the
/// checks when it counts no Delivered-To field (no recipient can be named there); the message is then not read
/// for them.
#[derive(Clone, Debug)]
pub enum HeaderSection {
    Read(Arc<[u8]>),
    Summarized(HeaderSummary),
}

impl HeaderSection {
    /// The summary as what the loop checks go by, when it is enough for them: None when it counts a Delivered-To
    /// field, whose recipient only the section itself names.
    pub fn summarized(summary: HeaderSummary) -> Option<HeaderSection> {
        (summary.delivered_to == 0).then_some(HeaderSection::Summarized(summary))
    }

    /// Checks the section for signs of a mail loop to `recipient` (see [`find_loop`]).
    pub fn find_loop(&self, recipient: &str) -> Option<Loop> {
        match self {
            HeaderSection::Read(section) => find_loop(section, recipient),
            HeaderSection::Summarized(summary) => too_many_hops(summary.received as usize),
        }
    }
}

fn too_many_hops(received: usize) -> Option<Loop> {
    (received > MAX_RECEIVED).then_some(Loop::TooManyHops(received))
}

/// Checks a message's header section (CRLF or LF line ends) for signs of a mail loop to `recipient`.
pub fn find_loop(section: &[u8], recipient: &str) -> Option<Loop> {
    let mut received = 0;
    for (name, value) in headers::fields(section) {
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
    too_many_hops(received)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::DateTime;

    fn envelope() -> Envelope {
        let arrival = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z").unwrap();
        let recipients = vec!["bob@localhost".to_string()];
        Envelope {
            id: "19AB5D7C5E3F1001A3F2".parse().unwrap(),
            client: Some("192.0.2.7".parse().unwrap()),
            helo: "client.test".to_string(),
            protocol: Protocol::Esmtp,
            ..Envelope::new("alice@remote.test".to_string(), recipients, arrival.into())
        }
    }

    #[test]
    fn the_received_header_names_client_host_protocol_id_and_recipient() {
        let envelope = envelope();
        assert_eq!(
            trace_headers(&envelope, "mx.test", "bob@localhost"),
            "Return-Path: <alice@remote.test>\nDelivered-To: bob@localhost\n\
             Received: from client.test (unknown [192.0.2.7])\n\tby mx.test (Postel) with ESMTP id \
             19AB5D7C5E3F1001A3F2\n\tfor <bob@localhost>; Tue, 24 Nov 2026 10:00:00 +0000\n"
        );
        let local = Envelope {
            helo: String::new(),
            client: None,
            protocol: Protocol::Local,
            ..envelope.clone()
        };
        assert!(
            trace_headers(&local, "mx.test", "bob@localhost")
                .contains("Received: from unknown (local submission)\n")
        );
        let submitted = Envelope {
            protocol: Protocol::Esmtpsa,
            tls: Some("TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384".into()),
            auth: Some("alice".into()),
            ..envelope
        };
        assert_eq!(
            received(&submitted, "mx.test", None),
            "Received: from client.test (unknown [192.0.2.7])\n\t(using TLSv1.3 with cipher \
             TLS13_AES_256_GCM_SHA384)\n\t(Authenticated sender: alice)\n\tby mx.test (Postel) with \
             ESMTPSA id 19AB5D7C5E3F1001A3F2; Tue, 24 Nov 2026 10:00:00 +0000\n"
        );
    }

    #[test]
    fn an_ipv6_client_is_an_address_literal() {
        let v6 = Envelope {
            client: Some("::1".parse().unwrap()),
            ..envelope()
        };
        assert!(
            received(&v6, "mx.test", None)
                .starts_with("Received: from client.test (unknown [IPv6:::1])\n"),
            "{}",
            received(&v6, "mx.test", None)
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
