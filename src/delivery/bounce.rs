//! Delivery status notifications (RFC 3464): the message that tells a sender which recipients failed and why,
//! built and queued.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use log::{info, warn};

use crate::copy::{self, Format};
use crate::spool::{Envelope, Queued, Spool, SpoolError};

/// One recipient that could not be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub recipient: String,
    /// RFC 3463 status, e.g. "5.1.1".
    pub status: String,
    /// What went wrong: a remote server's reply, or the local reason.
    pub diagnostic: String,
    /// The diagnostic is a reply from a remote SMTP server ("smtp;"), not a local reason.
    pub remote: bool,
}

/// What a notification is about.
pub struct Report<'a> {
    pub hostname: &'a str,
    pub queue_id: &'a str,
    pub arrival: DateTime<Utc>,
    pub now: DateTime<Utc>,
    /// Where the notification goes (the original sender, or postmaster).
    pub to: &'a str,
    pub failures: &'a [Failure],
    /// The header section of the failed message, CRLF line ends.
    pub original_headers: &'a [u8],
}

/// The envelope sender of a notification about a message that had the null sender; mail from it that fails is
/// dropped, so notifications can never loop.
pub fn double_bounce_sender(hostname: &str) -> String {
    format!("double-bounce@{hostname}")
}

/// Queues a notification of `failures` for the sender (or postmaster, for a message with the null sender).
/// A notification about a notification is never sent: it is dropped with a log line.
pub fn queue(
    spool: &Spool,
    hostname: &str,
    message: &Queued,
    failures: &[Failure],
    headers: &[u8],
    now: DateTime<Utc>,
) -> Result<Option<Queued>, SpoolError> {
    if failures.is_empty() {
        return Ok(None);
    }
    let envelope = &message.envelope;
    let double_bounce = double_bounce_sender(hostname);
    if envelope.sender == double_bounce {
        warn!(
            "{}: undeliverable notification to postmaster dropped",
            envelope.id
        );
        return Ok(None);
    }
    let (to, sender) = if envelope.sender.is_empty() {
        ("postmaster".to_string(), double_bounce)
    } else {
        (envelope.sender.clone(), String::new())
    };
    let text = build(&Report {
        hostname,
        queue_id: envelope.id.as_str(),
        arrival: envelope.arrival,
        now,
        to: &to,
        failures,
        original_headers: headers,
    });
    let mut writer = spool.new_message(Envelope {
        helo: hostname.to_string(),
        ..Envelope::new(sender, vec![to.clone()], now)
    });
    writer.write(&text);
    let queued = spool.commit(writer)?;
    info!(
        "{}: sender non-delivery notification: {} to <{to}>",
        envelope.id, queued.envelope.id
    );
    crate::step!(
        envelope.id.as_str(),
        "bounce: a delivery status notification (RFC 3464) to <{to}> queued as {}",
        queued.envelope.id
    );
    Ok(Some(queued))
}

/// Builds the notification: a multipart/report with a readable part, the machine-readable
/// message/delivery-status part and the failed message's headers. CRLF line ends throughout.
pub fn build(report: &Report) -> Vec<u8> {
    let boundary = format!("{}/{}", report.queue_id, report.hostname);
    let mut text = String::with_capacity(2048);
    let host = report.hostname;
    let _ = write!(
        text,
        "From: Mail Delivery System <MAILER-DAEMON@{host}>\n\
         To: <{to}>\n\
         Subject: Undelivered Mail Returned to Sender\n\
         Date: {date}\n\
         Message-ID: <{id}.dsn@{host}>\n\
         Auto-Submitted: auto-replied\n\
         MIME-Version: 1.0\n\
         Content-Type: multipart/report; report-type=delivery-status;\n\tboundary=\"{boundary}\"\n\
         \n\
         This is a MIME-encapsulated message.\n\
         \n\
         --{boundary}\n\
         Content-Description: Notification\n\
         Content-Type: text/plain; charset=utf-8\n\
         \n\
         This is the mail system at host {host}.\n\
         \n\
         Your message could not be delivered to one or more recipients.\n\
         It is attached below.\n\
         \n",
        to = report.to,
        date = report.now.to_rfc2822(),
        id = report.queue_id,
    );
    for failure in report.failures {
        let _ = write!(text, "<{}>: {}\n\n", failure.recipient, failure.diagnostic);
    }
    let _ = write!(
        text,
        "--{boundary}\n\
         Content-Description: Delivery report\n\
         Content-Type: message/delivery-status\n\
         \n\
         Reporting-MTA: dns; {host}\n\
         X-Postel-Queue-ID: {id}\n\
         Arrival-Date: {arrival}\n",
        id = report.queue_id,
        arrival = report.arrival.to_rfc2822(),
    );
    for failure in report.failures {
        let kind = if failure.remote { "smtp" } else { "X-Postel" };
        let _ = write!(
            text,
            "\nFinal-Recipient: rfc822; {}\n\
             Action: failed\n\
             Status: {}\n\
             Diagnostic-Code: {kind}; {}\n\
             Last-Attempt-Date: {}\n",
            failure.recipient,
            failure.status,
            one_line(&failure.diagnostic),
            report.now.to_rfc2822(),
        );
    }
    let _ = write!(
        text,
        "\n--{boundary}\n\
         Content-Description: Undelivered Message Headers\n\
         Content-Type: text/rfc822-headers\n\
         \n"
    );
    let mut message = copy::convert(Format::CRLF, text.as_bytes());
    message.extend_from_slice(report.original_headers);
    if !report.original_headers.ends_with(b"\n") {
        message.extend_from_slice(b"\r\n");
    }
    message.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    message
}

/// A diagnostic on one header line: line breaks and control characters become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_has_the_three_parts() {
        let when = DateTime::parse_from_rfc3339("2026-11-24T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let failures = [
            Failure {
                recipient: "full@localhost".into(),
                status: "5.2.2".into(),
                diagnostic: "mailbox full".into(),
                remote: false,
            },
            Failure {
                recipient: "x@remote.test".into(),
                status: "5.1.1".into(),
                diagnostic: "550 5.1.1 no such\r\nuser".into(),
                remote: true,
            },
        ];
        let message = build(&Report {
            hostname: "mx.test",
            queue_id: "ABC",
            arrival: when,
            now: when,
            to: "alice@remote.test",
            failures: &failures,
            original_headers: b"Subject: hello\r\nFrom: alice@remote.test\r\n\r\n",
        });
        let text = String::from_utf8(message).unwrap();
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "every line ends in CRLF"
        );
        for expected in [
            "Content-Type: multipart/report; report-type=delivery-status;",
            "Auto-Submitted: auto-replied",
            "Content-Type: message/delivery-status",
            "Reporting-MTA: dns; mx.test",
            "Final-Recipient: rfc822; full@localhost\r\nAction: failed\r\nStatus: 5.2.2\r\nDiagnostic-Code: X-Postel; mailbox full",
            "Diagnostic-Code: smtp; 550 5.1.1 no such  user",
            "Content-Type: text/rfc822-headers\r\n\r\nSubject: hello\r\n",
            "\r\n--ABC/mx.test--\r\n",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in\n{text}");
        }
    }
}
