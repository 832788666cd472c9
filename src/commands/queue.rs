//! `postel queue list|show|run|remove` (and `mailq`, `sendmail -bp`, `sendmail -q`): what is waiting in the
//! spool, and what the admin may do about it.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::commands::{CliError, Exit};
use crate::config::Config;
use crate::delivery::attempt::Deliverer;
use crate::delivery::control::{self, Request};
use crate::delivery::runner::{self, HandedTo};
use crate::privilege;
use crate::spool::{Outcome, QueueId, Queued, Spool};

/// `postel queue list`: one block per message: id, size, arrival, sender, then each recipient and its state.
pub fn list(config: &Config, out: &mut dyn Write) -> Result<(), CliError> {
    let mut messages = scan(config)?;
    if messages.is_empty() {
        writeln!(out, "Mail queue is empty")?;
        return Ok(());
    }
    messages.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
    let mut total = 0;
    for message in &messages {
        total += message.len;
        write_summary(message, out)?;
    }
    let count = messages.len();
    let plural = if count == 1 { "" } else { "s" };
    Ok(writeln!(out, "-- {count} message{plural}, {total} bytes")?)
}

fn write_summary(message: &Queued, out: &mut dyn Write) -> std::io::Result<()> {
    let envelope = &message.envelope;
    writeln!(
        out,
        "{}  {:>9}  {}  <{}>",
        envelope.id,
        message.len,
        envelope.arrival.format("%Y-%m-%d %H:%M:%S"),
        envelope.sender
    )?;
    for recipient in &envelope.recipients {
        writeln!(out, "    <{recipient}>")?;
    }
    for result in &message.state.results {
        let state = match &result.outcome {
            Outcome::Delivered => "delivered".to_string(),
            Outcome::Appending { offset, .. } => {
                format!(
                    "being appended at byte {offset} when delivery stopped; checked at the next try"
                )
            }
            Outcome::Failed { status, diagnostic } => format!("failed: {status} {diagnostic}"),
            Outcome::Deferred {
                status,
                diagnostic,
                next_try,
            } => {
                format!(
                    "deferred until {}: {status} {diagnostic}",
                    next_try.format("%Y-%m-%d %H:%M:%S")
                )
            }
        };
        writeln!(out, "      {}: {state}", result.recipient)?;
    }
    if message.state.attempts == 0 {
        writeln!(out, "      (not tried yet)")?;
    }
    writeln!(out)
}

/// `postel queue show ID`: the envelope, the delivery state and the message itself.
pub fn show(config: &Config, id: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let id = parse_id(id)?;
    let spool = Spool::open(&config.spool_dir)?;
    let messages = spool.scan(false)?.messages;
    let message = messages
        .iter()
        .find(|m| m.envelope.id == id)
        .ok_or_else(|| not_queued(&id))?;
    check_submitter(message)?;
    let mut body = Vec::new();
    spool.read_body(message).and_then(|r| {
        r.take(1024 * 1024)
            .read_to_end(&mut body)
            .map_err(|source| crate::spool::SpoolError::Io {
                path: message.file.clone(),
                source,
            })
    })?;
    let e = &message.envelope;
    writeln!(
        out,
        "id: {}\narrival: {}\nclient: {}\nhelo: {}",
        e.id,
        e.arrival.to_rfc3339(),
        e.client
            .map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
        e.helo
    )?;
    writeln!(
        out,
        "protocol: {}\nsender: <{}>\nfile: {}",
        e.protocol.as_str(),
        e.sender,
        message.file.display()
    )?;
    write_summary(message, out)?;
    out.write_all(&body)?;
    if message.len > body.len() as u64 {
        writeln!(
            out,
            "\n[... {} more bytes]",
            message.len - body.len() as u64
        )?;
    }
    Ok(())
}

/// `postel queue run [--domain D]`: every queued message (or those for D) is tried now, by the daemon or, when
/// none runs, here.
pub fn run(config: Config, node: Option<&str>, out: &mut dyn Write) -> Result<(), CliError> {
    let deliverer = Arc::new(Deliverer::open(config)?);
    let said = match runner::run_queue(&deliverer, node)? {
        HandedTo::Daemon(pid) => format!("asked the running daemon (pid {pid}) to run the queue"),
        HandedTo::Here => "queue run finished".to_string(),
        HandedTo::Nobody => {
            return Err(CliError::new(
                Exit::TempFail,
                "another program is running the queue; try again shortly",
            ));
        }
        HandedTo::NotPermitted => return Err(not_permitted()),
    };
    Ok(writeln!(out, "{said}")?)
}

/// `postel queue deliver ID...`: these messages are tried now, here; if another program holds the spool, it
/// delivers them before it lets go. This is what `postel sendmail` starts in the background when no daemon runs.
pub fn deliver(config: Config, ids: &[&str], out: &mut dyn Write) -> Result<(), CliError> {
    let ids = ids
        .iter()
        .map(|id| parse_id(id))
        .collect::<Result<Vec<_>, _>>()?;
    let deliverer = Arc::new(Deliverer::open(config)?);
    let said = match runner::deliver_ids(&deliverer, &ids)? {
        HandedTo::Here => "delivery attempted",
        HandedTo::Daemon(_) | HandedTo::Nobody => {
            "another program holds the spool; it delivers them before it lets go"
        }
        HandedTo::NotPermitted => return Err(not_permitted()),
    };
    Ok(writeln!(out, "{said}")?)
}

/// `postel queue remove ID`: drops a message, through the daemon if one runs.
pub fn remove(config: Config, id: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let id = parse_id(id)?;
    let queued = scan(&config)?;
    let message = queued
        .iter()
        .find(|m| m.envelope.id == id)
        .ok_or_else(|| not_queued(&id))?;
    check_submitter(message)?;
    let spool = Spool::open(&config.spool_dir)?;
    if let Some(pid) = spool.owner() {
        control::send(&config.spool_dir, &Request::Remove(id.clone())).map_err(|e| {
            CliError::new(
                Exit::TempFail,
                format!("{}: {e}", config.spool_dir.join("control").display()),
            )
        })?;
        let _ = control::ring(pid);
        return Ok(writeln!(
            out,
            "{id}: removal handed to the running daemon (pid {pid})"
        )?);
    }
    let _lock = spool.lock()?;
    // The repairing scan a daemon starts with: the removal then knows the message's file and compacts the journal.
    spool.scan(true)?;
    spool.remove(message)?;
    Ok(writeln!(out, "{id}: removed")?)
}

/// No daemon runs, and only root and the server's account deliver by themselves.
fn not_permitted() -> CliError {
    CliError::new(
        Exit::NoPerm,
        "no daemon runs, and only root and the server's account deliver here; the mail waits in the queue",
    )
}

/// Refuses a message that is neither the caller's (its queue file is theirs) nor root's business.
fn check_submitter(message: &Queued) -> Result<(), CliError> {
    if privilege::may_touch_message(&message.file) {
        return Ok(());
    }
    Err(CliError::new(
        Exit::NoPerm,
        format!(
            "{}: not your message (only root and its submitter may see or remove it)",
            message.envelope.id
        ),
    ))
}

fn scan(config: &Config) -> Result<Vec<Queued>, CliError> {
    let spool = Spool::open(&config.spool_dir)?;
    Ok(spool.scan(false)?.messages)
}

fn parse_id(id: &str) -> Result<QueueId, CliError> {
    id.parse().map_err(|_| {
        CliError::new(
            Exit::DataErr,
            format!("'{id}' is not a queue id (20 hexadecimal digits)"),
        )
    })
}

fn not_queued(id: &QueueId) -> CliError {
    CliError::new(Exit::DataErr, format!("{id}: no such message in the queue"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LocalUsers;
    use crate::spool::{Envelope, RecipientResult};
    use crate::testing::TempDir;
    use chrono::TimeZone;

    /// A configuration with its spool and mailboxes in `dir`, local users alice and bob.
    fn config(dir: &TempDir) -> Config {
        let mut config = Config::builtin();
        config.spool_dir = dir.0.join("spool");
        config.mailbox_dir = dir.0.join("mailboxes");
        config.local_users = LocalUsers::List(vec!["alice".into(), "bob".into()]);
        std::fs::create_dir_all(&config.mailbox_dir).unwrap();
        config
    }

    /// Queues a message from carol to `recipients`, as the spool keeps it.
    fn queue(config: &Config, recipients: &[&str]) -> QueueId {
        let spool = Spool::open(&config.spool_dir).unwrap();
        let recipients = recipients.iter().map(|r| r.to_string()).collect();
        let arrival = chrono::Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap();
        let mut writer = spool.new_message(Envelope {
            helo: "client.test".into(),
            ..Envelope::new("carol@example.org".into(), recipients, arrival)
        });
        writer.write(b"Subject: queued\r\n\r\nwaiting\r\n");
        spool.commit(writer).unwrap().envelope.id
    }

    fn output(run: impl FnOnce(&mut Vec<u8>) -> Result<(), CliError>) -> String {
        let mut out = Vec::new();
        run(&mut out).unwrap_or_else(|e| panic!("{e}"));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn list_shows_each_message_with_its_recipients_and_their_state() {
        let dir = TempDir::new("queue-command");
        let config = config(&dir);
        assert_eq!(output(|out| list(&config, out)), "Mail queue is empty\n");
        let id = queue(&config, &["alice@localhost", "dave@remote.test"]);
        let spool = Spool::open(&config.spool_dir).unwrap();
        let next_try = chrono::Utc.with_ymd_and_hms(2026, 11, 24, 6, 5, 0).unwrap();
        let deferred = RecipientResult {
            recipient: "dave@remote.test".into(),
            outcome: Outcome::Deferred {
                status: "4.4.1".into(),
                diagnostic: "connection refused".into(),
                next_try,
            },
        };
        spool.record(&id, &[deferred]).unwrap();
        assert_eq!(
            output(|out| list(&config, out)),
            format!(
                "{id}         28  2026-11-24 06:00:00  <carol@example.org>\n    <alice@localhost>\n    \
                 <dave@remote.test>\n      dave@remote.test: deferred until 2026-11-24 06:05:00: 4.4.1 \
                 connection refused\n\n-- 1 message, 28 bytes\n"
            )
        );
        let shown = output(|out| show(&config, id.as_str(), out));
        assert!(shown.starts_with(&format!("id: {id}\n")), "{shown}");
        assert!(
            shown.contains("client: unknown\n") && shown.contains("protocol: local\n"),
            "{shown}"
        );
        assert!(
            shown.ends_with("Subject: queued\r\n\r\nwaiting\r\n"),
            "{shown}"
        );
    }

    #[test]
    fn remove_and_run_without_a_daemon_work_here() {
        let dir = TempDir::new("queue-command");
        let config = config(&dir);
        let dropped = queue(&config, &["alice@localhost"]);
        let kept = queue(&config, &["bob@localhost"]);
        assert_eq!(
            output(|out| remove(config.clone(), dropped.as_str(), out)),
            format!("{dropped}: removed\n")
        );
        let again = remove(config.clone(), dropped.as_str(), &mut Vec::new()).unwrap_err();
        assert_eq!(again.exit, Exit::DataErr);
        assert_eq!(
            again.message,
            format!("{dropped}: no such message in the queue")
        );
        let bad = remove(config.clone(), "12345", &mut Vec::new()).unwrap_err();
        assert_eq!(bad.exit, Exit::DataErr);
        assert!(bad.message.contains("is not a queue id"), "{}", bad.message);

        assert_eq!(
            output(|out| run(config.clone(), None, out)),
            "queue run finished\n"
        );
        let bob = std::fs::read_to_string(config.mailbox_dir.join("bob")).unwrap();
        assert!(bob.contains(&format!(" id {kept}")), "{bob}");
        assert!(
            !config.mailbox_dir.join("alice").exists(),
            "the removed message was delivered"
        );
        assert_eq!(output(|out| list(&config, out)), "Mail queue is empty\n");
    }
}
