//! RFC 821's SEND, SOML and SAML at the end of data: the message written at once to the terminals of the
//! recipients who are logged in (a terminal is not a spool), and queued for the mailboxes of those the command
//! says get it there; one reply with a line per recipient.

use std::path::Path;

use chrono::Local;

use crate::config::Config;
use crate::delivery::terminal;
use crate::smtp::{Detail, Envelope, ForwardPath, Mode, Reply};
use crate::step;

/// Delivers a SEND, SOML or SAML message; `queue` puts it in the spool for the mailboxes of the recipients it
/// is given and returns the queue id. Returns the reply: 250 when every recipient got it as the command asks
/// (SEND: on a terminal; SOML: on a terminal or queued for the mailbox; SAML: queued for the mailbox), else 450.
pub fn deliver(
    session: &str,
    envelope: &Envelope,
    message: &[u8],
    config: &Config,
    queue: &mut dyn FnMut(Vec<String>) -> Result<String, String>,
) -> Reply {
    let sender = envelope.sender.to_string();
    let shown = terminal::render(
        if sender.is_empty() {
            "MAILER-DAEMON"
        } else {
            &sender
        },
        Local::now(),
        message,
        config.terminal_max_lines,
    );
    let mut lines = Vec::with_capacity(envelope.recipients.len() + 1);
    let mut for_mailbox = Vec::new();
    let mut all_done = true;
    for to in &envelope.recipients {
        let written = write_to_terminals(session, &config.utmp_file, user(to), &shown);
        let line = match (envelope.mode, written) {
            (Mode::Send, 0) => {
                all_done = false;
                format!("<{to}>: not written: no longer logged in, or not accepting messages")
            }
            (Mode::SendOrMail, 0) => {
                for_mailbox.push(to.to_string());
                format!("<{to}>: not at a terminal; queued for the mailbox")
            }
            (Mode::SendAndMail, n) => {
                for_mailbox.push(to.to_string());
                format!("<{to}>: written to {n} terminal(s), and queued for the mailbox")
            }
            (_, n) => format!("<{to}>: written to {n} terminal(s)"),
        };
        lines.push(line.into());
    }
    if !for_mailbox.is_empty() {
        match queue(for_mailbox) {
            Ok(id) => lines.push(format!("queued for the mailboxes as {id}").into()),
            Err(e) => {
                all_done = false;
                lines.push(format!("cannot queue the message for the mailboxes: {e}").into());
            }
        }
    }
    let (code, detail, last) = if all_done {
        (250, Detail::Undefined, "Ok")
    } else {
        (
            450,
            Detail::MailboxDisabled,
            "Error: not delivered to every recipient",
        )
    };
    lines.push(last.into());
    Reply::lines(code, Some(detail), lines)
}

/// The user a recipient names: its local part (RCPT accepted only local ones), root for postmaster.
fn user(to: &ForwardPath) -> String {
    match to {
        ForwardPath::Postmaster => "root".to_string(),
        ForwardPath::Mailbox(mailbox) => mailbox.local.to_lowercase(),
    }
}

/// Writes `text` to every terminal of `user` that accepts messages; returns how many took it.
fn write_to_terminals(session: &str, utmp: &Path, user: String, text: &[u8]) -> usize {
    let mut written = 0;
    for tty in terminal::writable_sessions(utmp, &user) {
        match terminal::write(&user, &tty, text) {
            Ok(()) => {
                step!(session, "{user}: message written to {}", tty.display());
                written += 1;
            }
            Err(e) => step!(session, "{user}: cannot write to {}: {e}", tty.display()),
        }
    }
    written
}
