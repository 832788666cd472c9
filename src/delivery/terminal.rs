//! Delivery to a user's terminal, as RFC 821's SEND, SOML and SAML ask and write(1) does: the user's login
//! sessions from utmp, the terminals that accept messages (group-writable: `mesg y`), and the message shown
//! with a header line, its control characters made visible, at most a set number of lines, and an end line.
//!
//! [`open`] is the one function that opens a terminal, and needs group tty (or root): [`write`] calls it, or,
//! when the server runs as an unprivileged account, asks the privileged helper, whose `terminal` request calls it
//! as root (doc/security.md).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Local};
use log::warn;

use crate::privilege::helper;

/// One record of utmp(5) on Linux (glibc, 64-bit and 32-bit alike): 384 bytes.
const RECORD: usize = 384;
/// ut_type of a login session.
const USER_PROCESS: i16 = 7;
/// The offsets and lengths of ut_line (the terminal, "pts/3") and ut_user.
const LINE: (usize, usize) = (8, 32);
const USER: (usize, usize) = (44, 32);

/// The group-write bit: what `mesg y` sets.
const GROUP_WRITE: u32 = 0o020;

/// The terminals of `user`'s login sessions in the utmp file `utmp`, as paths under /dev; names that could
/// point elsewhere are left out.
pub fn sessions(utmp: &Path, user: &str) -> io::Result<Vec<PathBuf>> {
    let data = fs::read(utmp)?;
    let mut terminals = Vec::new();
    for record in data.chunks_exact(RECORD) {
        let kind = i16::from_ne_bytes([record[0], record[1]]);
        if kind != USER_PROCESS || field(record, USER) != user.as_bytes() {
            continue;
        }
        let Ok(line) = std::str::from_utf8(field(record, LINE)) else {
            continue;
        };
        let safe = !line.is_empty()
            && !line.starts_with('/')
            && line
                .split('/')
                .all(|part| !part.is_empty() && part != "." && part != "..");
        let path = Path::new("/dev").join(line);
        if safe && !terminals.contains(&path) {
            terminals.push(path);
        }
    }
    Ok(terminals)
}

/// A NUL-padded field of a record.
fn field(record: &[u8], (at, len): (usize, usize)) -> &[u8] {
    let bytes = &record[at..at + len];
    let end = memchr::memchr(0, bytes).unwrap_or(len);
    &bytes[..end]
}

/// Whether the terminal accepts messages: a character device with the group-write bit set (`mesg y`).
pub fn accepts_messages(terminal: &Path) -> bool {
    fs::metadata(terminal).is_ok_and(|m| takes_messages(&m))
}

/// The rule itself, for a file already looked at: checked before a write and again on the opened file.
fn takes_messages(metadata: &fs::Metadata) -> bool {
    metadata.file_type().is_char_device() && metadata.mode() & GROUP_WRITE != 0
}

/// The terminals of `user` that accept messages.
pub fn writable_sessions(utmp: &Path, user: &str) -> Vec<PathBuf> {
    // An unreadable utmp file means no one is found logged in; the log says why, or SEND would only say 450.
    sessions(utmp, user)
        .unwrap_or_else(|e| {
            warn!("utmp_file {}: {e}; no login session found", utmp.display());
            Vec::new()
        })
        .into_iter()
        .filter(|t| accepts_messages(t))
        .collect()
}

/// The message as a terminal shows it, write(1)-style: a header line, at most `max_lines` lines of the
/// message with every control character made visible (`^[`, `M-x`), a line saying how many more there were,
/// and an end line. Lines end in CR LF, as a terminal in raw mode needs.
pub fn render(sender: &str, at: DateTime<Local>, message: &[u8], max_lines: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len().min(4096) + 160);
    let sender = visible(sender.as_bytes());
    out.extend_from_slice(
        format!(
            "\r\nMessage from {sender} at {} (SMTP SEND) ...\r\n",
            at.format("%H:%M")
        )
        .as_bytes(),
    );
    let text = message.strip_suffix(b"\r\n").unwrap_or(message);
    let lines: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .collect();
    for line in lines.iter().take(max_lines) {
        out.extend_from_slice(visible(line).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if lines.len() > max_lines {
        let more = lines.len() - max_lines;
        out.extend_from_slice(format!("[{more} more lines not shown]\r\n").as_bytes());
    }
    out.extend_from_slice(b"EOF\r\n");
    out
}

/// Bytes as text that cannot drive a terminal: control characters as `^X` (DEL as `^?`), bytes above 127 as
/// `M-` and the character of their low seven bits, as `cat -v` shows them. Tabs stay tabs.
fn visible(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &byte in bytes {
        let (meta, low) = (byte >= 0x80, byte & 0x7f);
        if meta {
            out.push_str("M-");
        }
        match low {
            b'\t' if !meta => out.push('\t'),
            0..=0x1f => {
                out.push('^');
                out.push(char::from(low + 0x40));
            }
            0x7f => out.push_str("^?"),
            _ => out.push(char::from(low)),
        }
    }
    out
}

/// Opens the terminal for a message: for writing only, never as the controlling terminal, without waiting on a
/// terminal that does not read. Only a character device that accepts messages is opened, and, when `owner` is
/// given, only one that belongs to that uid.
pub fn open(terminal: &Path, owner: Option<u32>) -> io::Result<File> {
    let tty = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(terminal)?;
    let metadata = tty.metadata()?;
    let refused = |why: &str| Err(io::Error::new(io::ErrorKind::PermissionDenied, why));
    if !takes_messages(&metadata) {
        return refused("the terminal does not accept messages");
    }
    if owner.is_some_and(|uid| metadata.uid() != uid) {
        return refused("the terminal belongs to someone else");
    }
    Ok(tty)
}

/// Writes `text` to `user`'s terminal (a path under /dev from [`sessions`]). Under the `user` account the
/// privileged helper opens it, which also checks that utmp lists it for `user` and that it is theirs.
pub fn write(user: &str, terminal: &Path, text: &[u8]) -> io::Result<()> {
    let mut tty = match helper::installed() {
        Some(helper) => {
            let line = terminal.strip_prefix("/dev").unwrap_or(terminal);
            helper
                .open_terminal(user, line)
                .map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, why))?
        }
        None => open(terminal, None)?,
    };
    tty.write_all(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_made_visible() {
        assert_eq!(
            visible(b"a\x1b[31mred\x07\x7f\xe9\t."),
            "a^[[31mred^G^?M-i\t."
        );
    }

    #[test]
    fn a_long_message_is_cut_and_summarised() {
        let at = Local::now();
        let shown = render("a@b", at, b"one\r\ntwo\r\nthree\r\n", 2);
        let text = String::from_utf8(shown).unwrap();
        assert!(text.contains("Message from a@b at "), "{text}");
        assert!(
            text.ends_with("one\r\ntwo\r\n[1 more lines not shown]\r\nEOF\r\n"),
            "{text}"
        );
    }

    #[test]
    fn utmp_records_name_the_user_terminals() {
        let mut record = vec![0u8; RECORD];
        record[..2].copy_from_slice(&USER_PROCESS.to_ne_bytes());
        record[LINE.0..LINE.0 + 5].copy_from_slice(b"pts/3");
        record[USER.0..USER.0 + 5].copy_from_slice(b"alice");
        let mut evil = record.clone();
        evil[LINE.0..LINE.0 + 8].copy_from_slice(b"../etc/p");
        let file = std::env::temp_dir().join(format!("postel-utmp-{}", std::process::id()));
        fs::write(&file, [record, evil].concat()).unwrap();
        assert_eq!(
            sessions(&file, "alice").unwrap(),
            [PathBuf::from("/dev/pts/3")]
        );
        assert!(sessions(&file, "bob").unwrap().is_empty());
        fs::remove_file(file).unwrap();
    }
}
