//! `postel queue list|show|run|remove` (and `mailq`, `sendmail -bp`, `sendmail -q`): what is waiting in the
//! spool, and what the admin may do about it.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::commands::{CliError, Exit};
use crate::config::Config;
use crate::delivery::attempt::Deliverer;
use crate::delivery::control::{self, Request};
use crate::delivery::runner::{self, HandedTo};
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
    };
    Ok(writeln!(out, "{said}")?)
}

/// `postel queue remove ID`: drops a message, through the daemon if one runs.
pub fn remove(config: Config, id: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let id = parse_id(id)?;
    if !scan(&config)?.iter().any(|m| m.envelope.id == id) {
        return Err(not_queued(&id));
    }
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
    spool.finish(&id)?;
    Ok(writeln!(out, "{id}: removed")?)
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
