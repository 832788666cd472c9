//! Delivery for the programs that are not the daemon (`postel inetd`, `postel sendmail`, `postel queue run`):
//! when a daemon runs, it is asked to deliver; otherwise the program takes the spool lock and delivers itself,
//! so the same message is never delivered by two processes at once. Before it exits, such a program also
//! delivers what others queued while it held the spool and nobody has tried yet (see [`deliver_newcomers`]).

use std::sync::Arc;

use chrono::Utc;
use log::{info, warn};

use crate::delivery::attempt::Deliverer;
use crate::delivery::control::{self, Request};
use crate::delivery::scheduler::at_node;
use crate::privilege;
use crate::spool::{QueueId, Queued, SpoolError};

/// Who delivers the messages just queued.
pub enum HandedTo {
    /// The running daemon, with this PID.
    Daemon(u32),
    /// This process delivered them (deferred ones wait for a daemon or a queue run).
    Here,
    /// Another program holds the spool; the messages wait for it or for the daemon.
    Nobody,
    /// No daemon runs, and this caller may not deliver (see [`privilege::may_deliver_in_process`]): the messages
    /// wait for the daemon, a queue run by root or the server's account.
    NotPermitted,
}

/// Makes sure `messages` get delivered: by the daemon if one runs, else here and now.
pub fn hand_off(deliverer: &Arc<Deliverer>, messages: Vec<Queued>) -> Result<HandedTo, SpoolError> {
    if messages.is_empty() || deliverer.config.delivery_workers == 0 {
        return Ok(HandedTo::Nobody);
    }
    if let Some(pid) = deliverer.spool.owner() {
        if let Err(e) = control::ring(pid) {
            info!(
                "cannot signal the daemon (pid {pid}): {e}; it will pick the message up within seconds"
            );
        }
        return Ok(HandedTo::Daemon(pid));
    }
    if !privilege::may_deliver_in_process(&deliverer.config) {
        return Ok(HandedTo::NotPermitted);
    }
    {
        let _lock = match deliverer.spool.lock() {
            Ok(lock) => lock,
            Err(SpoolError::Busy) => return Ok(HandedTo::Nobody),
            Err(e) => return Err(e),
        };
        deliver_all(deliverer, messages);
    }
    deliver_newcomers(deliverer)?;
    Ok(HandedTo::Here)
}

/// Runs the queue — every message, or those with recipients at `node` (see [`at_node`]): asks the daemon if one
/// runs, else delivers them here, now.
pub fn run_queue(deliverer: &Arc<Deliverer>, node: Option<&str>) -> Result<HandedTo, SpoolError> {
    let spool = &deliverer.spool;
    if let Some(pid) = spool.owner() {
        let request = Request::RunQueue(node.map(str::to_string));
        control::send(&deliverer.config.spool_dir, &request).map_err(|source| SpoolError::Io {
            path: deliverer.config.spool_dir.join("control"),
            source,
        })?;
        let _ = control::ring(pid);
        return Ok(HandedTo::Daemon(pid));
    }
    deliver_queued(deliverer, |m| {
        node.is_none_or(|node| m.envelope.recipients.iter().any(|r| at_node(r, node)))
    })
}

/// Delivers the queued messages `ids` (what `postel sendmail` queued and left to a process in the background),
/// here and now; if another program holds the spool, it delivers them before it lets go.
pub fn deliver_ids(deliverer: &Arc<Deliverer>, ids: &[QueueId]) -> Result<HandedTo, SpoolError> {
    deliver_queued(deliverer, |m| ids.contains(&m.envelope.id))
}

/// Takes the spool lock, reads the queue and delivers the messages `wanted` picks.
fn deliver_queued(
    deliverer: &Deliverer,
    wanted: impl Fn(&Queued) -> bool,
) -> Result<HandedTo, SpoolError> {
    let spool = &deliverer.spool;
    if !privilege::may_deliver_in_process(&deliverer.config) {
        return Ok(HandedTo::NotPermitted);
    }
    {
        let _lock = match spool.lock() {
            Ok(lock) => lock,
            Err(SpoolError::Busy) => return Ok(HandedTo::Nobody),
            Err(e) => return Err(e),
        };
        let scan = spool.scan(true)?;
        for problem in &scan.problems {
            warn!("spool: {problem}");
        }
        deliverer.expect_after_crash(&scan.messages);
        let messages = scan.messages.into_iter().filter(|m| wanted(m)).collect();
        deliver_all(deliverer, messages);
    }
    deliver_newcomers(deliverer)?;
    Ok(HandedTo::Here)
}

/// After letting go of the spool: delivers the messages nobody has tried yet, taking the spool again for them,
/// until there are none (or another program holds the spool, and so does this in turn). A program that queued
/// a message while this one held the spool saw it held and left the message to it; looking after the lock is
/// released leaves no moment in which such a message is nobody's. Each message is tried once here at most.
fn deliver_newcomers(deliverer: &Deliverer) -> Result<(), SpoolError> {
    let spool = &deliverer.spool;
    let mut tried: Vec<QueueId> = Vec::new();
    let untried = |m: &Queued, tried: &[QueueId]| {
        m.state.attempts == 0 && m.state.results.is_empty() && !tried.contains(&m.envelope.id)
    };
    while spool
        .scan(false)?
        .messages
        .iter()
        .any(|m| untried(m, &tried))
    {
        let _lock = match spool.lock() {
            Ok(lock) => lock,
            Err(SpoolError::Busy) => return Ok(()),
            Err(e) => return Err(e),
        };
        let scan = spool.scan(true)?;
        deliverer.expect_after_crash(&scan.messages);
        let messages: Vec<Queued> = scan
            .messages
            .into_iter()
            .filter(|m| untried(m, &tried))
            .collect();
        if messages.is_empty() {
            return Ok(());
        }
        tried.extend(messages.iter().map(|m| m.envelope.id.clone()));
        deliver_all(deliverer, messages);
    }
    Ok(())
}

/// One attempt for each message, and for the notifications those attempts queue.
fn deliver_all(deliverer: &Deliverer, mut messages: Vec<Queued>) {
    while let Some(mut message) = messages.pop() {
        match deliverer.attempt(&mut message, Utc::now()) {
            Ok(attempted) => messages.extend(attempted.bounces),
            Err(e) => warn!(
                "{}: delivery results could not be recorded: {e}",
                message.envelope.id
            ),
        }
    }
}
