//! `postel queue list|show|run|remove` (and `mailq`, `sendmail -bp`, `sendmail -q`): what is waiting in the
//! spool, and what the admin may do about it.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::config::Config;
use crate::delivery::attempt::Deliverer;
use crate::delivery::control::{self, Request};
use crate::delivery::runner::{self, HandedTo};
use crate::spool::{Outcome, QueueId, Queued, Spool};

/// `postel queue list`: one block per message: id, size, arrival, sender, then each recipient and its state.
pub fn list(config: &Config, out: &mut dyn Write) -> Result<(), String> {
    let mut messages = scan(config)?;
    if messages.is_empty() {
        writeln!(out, "Mail queue is empty").map_err(|e| e.to_string())?;
        return Ok(());
    }
    messages.sort_by(|a, b| a.envelope.id.cmp(&b.envelope.id));
    let mut total = 0;
    for message in &messages {
        total += message.len;
        write_summary(message, out).map_err(|e| e.to_string())?;
    }
    let count = messages.len();
    let plural = if count == 1 { "" } else { "s" };
    writeln!(out, "-- {count} message{plural}, {total} bytes").map_err(|e| e.to_string())
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
pub fn show(config: &Config, id: &str, out: &mut dyn Write) -> Result<(), String> {
    let id = parse_id(id)?;
    let spool = Spool::open(&config.spool_dir).map_err(|e| e.to_string())?;
    let messages = spool.scan(false).map_err(|e| e.to_string())?.messages;
    let message = messages
        .iter()
        .find(|m| m.envelope.id == id)
        .ok_or_else(|| format!("{id}: no such message in the queue"))?;
    let mut body = Vec::new();
    spool
        .read_body(message)
        .and_then(|r| {
            r.take(1024 * 1024)
                .read_to_end(&mut body)
                .map_err(|source| crate::spool::SpoolError::Io {
                    path: message.file.clone(),
                    source,
                })
        })
        .map_err(|e| e.to_string())?;
    let e = &message.envelope;
    let io = |e: std::io::Error| e.to_string();
    writeln!(
        out,
        "id: {}\narrival: {}\nclient: {}\nhelo: {}",
        e.id,
        e.arrival.to_rfc3339(),
        e.client,
        e.helo
    )
    .map_err(io)?;
    writeln!(
        out,
        "protocol: {}\nsender: <{}>\nfile: {}",
        e.protocol,
        e.sender,
        message.file.display()
    )
    .map_err(io)?;
    write_summary(message, out).map_err(io)?;
    out.write_all(&body).map_err(io)?;
    if message.len > body.len() as u64 {
        writeln!(
            out,
            "\n[... {} more bytes]",
            message.len - body.len() as u64
        )
        .map_err(io)?;
    }
    Ok(())
}

/// `postel queue run [--domain D]`: every queued message (or those for D) is tried now, by the daemon or, when
/// none runs, here.
pub fn run(config: Config, node: Option<&str>, out: &mut dyn Write) -> Result<(), String> {
    let deliverer = Arc::new(Deliverer::open(config).map_err(|e| e.to_string())?);
    let said = match runner::run_queue(&deliverer, node).map_err(|e| e.to_string())? {
        HandedTo::Daemon(pid) => format!("asked the running daemon (pid {pid}) to run the queue"),
        HandedTo::Here => "queue run finished".to_string(),
        HandedTo::Nobody => "another program is running the queue; try again shortly".to_string(),
    };
    writeln!(out, "{said}").map_err(|e| e.to_string())
}

/// `postel queue remove ID`: drops a message, through the daemon if one runs.
pub fn remove(config: Config, id: &str, out: &mut dyn Write) -> Result<(), String> {
    let id = parse_id(id)?;
    if !scan(&config)?.iter().any(|m| m.envelope.id == id) {
        return Err(format!("{id}: no such message in the queue"));
    }
    let spool = Spool::open(&config.spool_dir).map_err(|e| e.to_string())?;
    if let Some(pid) = spool.owner() {
        control::send(&config.spool_dir, &Request::Remove(id.clone()))
            .map_err(|e| e.to_string())?;
        let _ = control::ring(pid);
        return writeln!(
            out,
            "{id}: removal handed to the running daemon (pid {pid})"
        )
        .map_err(|e| e.to_string());
    }
    let _lock = spool.lock().map_err(|e| e.to_string())?;
    spool.finish(&id).map_err(|e| e.to_string())?;
    writeln!(out, "{id}: removed").map_err(|e| e.to_string())
}

fn scan(config: &Config) -> Result<Vec<Queued>, String> {
    let spool = Spool::open(&config.spool_dir).map_err(|e| e.to_string())?;
    Ok(spool.scan(false).map_err(|e| e.to_string())?.messages)
}

fn parse_id(id: &str) -> Result<QueueId, String> {
    id.parse()
        .map_err(|_| format!("'{id}' is not a queue id (20 hexadecimal digits)"))
}
