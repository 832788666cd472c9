//! Deliveries into mbox files (a user's mailbox, a `/file` alias target): every message a job has for one mailbox
//! is appended under one taking of its locks and one fdatasync, each announced in the journal first, all in one
//! journal write. doc/spool.md ("Delivery state: the journal") gives the crash rule.

use std::path::Path;

use log::info;

use crate::config::Config;
use crate::delivery::local::{Destination, Route};
use crate::delivery::mbox::{self, Appended, MboxError, MboxFile, MboxSettings};
use crate::delivery::transport::Delivery;
use crate::delivery::{body, comsat, trace};
use crate::smtp::Detail;
use crate::spool::{Outcome, Queued, Spool, SpoolError};
use crate::step;

/// One message for the mailbox, by one of its routes.
#[derive(Clone, Copy)]
pub struct ToMailbox<'a> {
    pub message: &'a Queued,
    pub route: &'a Route,
}

/// Tells the appends of this process that the journal holds an append of `message` by `route`, announced by a
/// process that ended before it recorded the outcome (see [`mbox::expect_after_crash`]).
pub fn expect_after_crash(config: &Config, message: &Queued, route: &Route) {
    let envelope = &message.envelope;
    let (
        Some(&Outcome::Appending { offset, len }),
        Destination::Mailbox { path, .. } | Destination::File(path),
    ) = (message.state.outcome(&route.key), &route.destination)
    else {
        return;
    };
    let trace = trace::trace_headers(envelope, &config.hostname, &route.recipient);
    let crashed = mbox::Message {
        queue_id: envelope.id.as_str(),
        sender: &envelope.sender,
        arrival: envelope.arrival,
        trace_headers: trace.as_bytes(),
        len,
        announced: Some((offset, len)),
    };
    mbox::expect_after_crash(path, &crashed);
}

/// Appends each member to the mbox file its route names (the same file, of the same kind, for all of them), unless a crash
/// interrupted an append of it that in fact completed. Every append is announced in the journal (offset and
/// length) before anything is written, so that recovery can tell. Returns what became of each, in order.
pub fn append_all(config: &Config, spool: &Spool, members: &[ToMailbox]) -> Vec<Delivery> {
    let Some((path, file)) = members.first().map(|m| mailbox_of(m.route)) else {
        return Vec::new();
    };
    let settings = MboxSettings {
        lock_timeout: config.mailbox_lock_timeout,
        stale_lock_age: config.stale_lock_age,
        flock: config.mailbox_flock,
        max_mailbox_size: config.mailbox_size_limit,
    };
    let hostname = &config.hostname;
    let traces: Vec<String> = members
        .iter()
        .map(|m| trace::trace_headers(&m.message.envelope, hostname, &m.route.recipient))
        .collect();
    let mut deliveries: Vec<Option<Delivery>> = vec![None; members.len()];
    // The members whose length is counted, by their index in `members`, and the messages to append.
    let mut counted = Vec::with_capacity(members.len());
    let mut batch = Vec::with_capacity(members.len());
    for (n, (member, trace)) in members.iter().zip(&traces).enumerate() {
        let envelope = &member.message.envelope;
        let (sender, arrival, trace) = (&envelope.sender, envelope.arrival, trace.as_bytes());
        let len = match envelope.mbox_size {
            Some(size) => Ok(mbox::len_with_body_size(sender, arrival, trace, size)),
            // Not counted at arrival (a large message, or one queued by an older Postel): counted by reading it.
            None => body::read(spool, member.message, |body| {
                mbox::len_in_mbox(path, sender, arrival, trace, body)
            })
            .unwrap_or_else(|e| Err(unreadable(e))),
        };
        let len = match len {
            Ok(len) => len,
            Err(failure) => {
                deliveries[n] = Some(failure.into());
                continue;
            }
        };
        let announced = match member.message.state.outcome(&member.route.key) {
            Some(&Outcome::Appending { offset, len }) => Some((offset, len)),
            _ => None,
        };
        counted.push(n);
        batch.push(mbox::Message {
            queue_id: envelope.id.as_str(),
            sender: &envelope.sender,
            arrival: envelope.arrival,
            trace_headers: trace,
            len,
            announced,
        });
    }
    let mut announce = |planned: &[(usize, u64)]| {
        let appends: Vec<_> = planned
            .iter()
            .map(|&(b, offset)| {
                let member = &members[counted[b]];
                let key = member.route.key.as_str();
                (&member.message.envelope.id, key, offset, batch[b].len)
            })
            .collect();
        spool.record_appending(&appends).map_err(|e| {
            MboxError::temporary(
                Detail::OtherMailSystem,
                format!("cannot record the delivery: {e}"),
            )
        })
    };
    let mut bodies = |b: usize, write: &mut mbox::WriteBody| {
        body::read(spool, members[counted[b]].message, |body| write(body))
            .unwrap_or_else(|e| Err(unreadable(e)))
    };
    let results = mbox::append(path, file, &settings, &batch, &mut announce, &mut bodies);
    for ((&n, message), result) in counted.iter().zip(&batch).zip(results) {
        deliveries[n] = Some(appended(
            config,
            path,
            &settings,
            &members[n],
            message,
            result,
        ));
    }
    deliveries
        .into_iter()
        .map(|d| d.expect("every member has a delivery"))
        .collect()
}

/// What one append came to, told to the log, the event stream and comsat.
fn appended(
    config: &Config,
    path: &Path,
    settings: &MboxSettings,
    member: &ToMailbox,
    message: &mbox::Message,
    result: Result<Appended, MboxError>,
) -> Delivery {
    let (id, key) = (&member.message.envelope.id, &member.route.key);
    match result {
        Err(err) => err.into(),
        Ok(Appended::FoundWhole) => {
            info!(
                "{id}: {key}: found whole in {} after a restart",
                path.display()
            );
            Delivery::Done
        }
        Ok(Appended::At(offset)) => {
            // The mailbox's name may be an alias's target.
            step!(
                id.as_str(),
                Kind::Disclosure,
                "{key}: Received header added; {} bytes appended to {} under a dot-lock and an {} lock, fsync, locks released",
                message.len,
                path.display(),
                if settings.flock { "flock" } else { "fcntl" }
            );
            if let (Destination::Mailbox { .. }, Some(comsat)) =
                (&member.route.destination, &config.comsat)
            {
                comsat::notify(comsat, key, offset);
            }
            Delivery::Done
        }
    }
}

/// The mbox file a route to a mailbox or a `/file` names, and whose file it is.
pub fn mailbox_of(route: &Route) -> (&Path, MboxFile) {
    match &route.destination {
        Destination::Mailbox { path, owner } => (path, MboxFile::Mailbox { owner: *owner }),
        Destination::File(path) => (path, MboxFile::AliasFile),
        _ => unreachable!("only routes to mbox files are appended"),
    }
}

/// A queued message that could not be read: a temporary failure.
fn unreadable(e: SpoolError) -> MboxError {
    MboxError::temporary(
        Detail::OtherMailSystem,
        format!("cannot read the queued message: {e}"),
    )
}
