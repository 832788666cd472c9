//! The daemon's side of the privileged helper (the helper itself is `postel privileged-helper`, in src/privileged.rs): starting it, its
//! requests and replies on the wire.
//!
//! The daemon starts the helper as root before any thread of its own (it is the same binary, run as `postel
//! privileged-helper` with a Unix socket of type SOCK_SEQPACKET as its stdin) and sends it the configuration as
//! the first message. Every request is then one message on that socket: a word and NUL-separated arguments, with
//! file descriptors (SCM_RIGHTS): first the socket the reply goes to, so that requests from many threads never
//! wait for each other, then what the request needs. Requests:
//!
//! | request | arguments, descriptors | reply |
//! |---|---|---|
//! | `mailbox` | a system user's name | `O` with the user's mailbox in `mailbox_dir`, open for appending and reading, created 0600 and owned by the user when missing |
//! | `file` | the path of a `/file` alias | `O` with the file open for appending and reading, opened (created 0600 when missing) as the aliases file's owner, refused unless it is a regular file with one link that belongs to that owner |
//! | `command` | the command of a `\|command` alias; its stdin and stderr | `O`, once the command runs as the aliases file's owner; then, when it ends, `X` and its exit status or `S` (killed by a signal). Closing the reply socket kills it |
//! | `reload` | — | `O` and the TLS certificate and key files' contents, NUL-separated (empty without TLS), read again, and the aliases file read again |
//! | `terminal` | a system user's name, a terminal (`pts/3`) | `O` with `/dev/<terminal>` open for writing, when utmp lists it for a login session of the user, and it is a character device that belongs to the user and accepts messages (`mesg y`) |
//!
//! A refusal is `E` and a message saying why. The helper exits when the daemon's end of the socket closes.

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};

use crate::config::Config;

/// The longest request or reply; the configuration and the TLS files go in one message each.
pub const MAX_MESSAGE: usize = 256 * 1024;

/// Room for a reply that carries no file contents (a refusal's reason, an exit status).
const SHORT_REPLY: usize = 4096;

/// The most descriptors one message carries.
const MAX_FDS: usize = 3;

/// The daemon's end of the helper's socket.
#[derive(Debug)]
pub struct Helper {
    socket: OwnedFd,
}

/// The helper of this process, once [`install`]ed.
static INSTALLED: OnceLock<Helper> = OnceLock::new();

/// The helper this process was given at start-up, if any: only a process started as root with `user` set has one.
pub fn installed() -> Option<&'static Helper> {
    INSTALLED.get()
}

/// Starts the helper as root, before the process drops its privileges and before any thread starts, and makes it
/// the process's helper.
pub fn install(config: &Config) -> io::Result<()> {
    let (ours, theirs) = pair()?;
    Command::new(std::env::current_exe()?)
        // As `postel`, whatever this binary's file is called: root's sendmail is a copy of it named sendmail.
        .arg0("postel")
        .arg("privileged-helper")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()?;
    send(&ours, config.to_toml().as_bytes(), &[])?;
    INSTALLED
        .set(Helper { socket: ours })
        .map_err(|_| io::Error::other("a privileged helper is installed already"))
}

/// A `|command` the helper runs; dropping it kills the command if it still runs.
pub struct RunningCommand {
    reply: OwnedFd,
}

/// The contents of the TLS certificate and key files.
pub struct TlsFiles {
    pub certificate: Vec<u8>,
    pub key: Vec<u8>,
}

/// A reply the helper accepted: its text after `O`, its descriptors, and the socket later replies come on.
struct Accepted {
    text: Vec<u8>,
    fds: Vec<OwnedFd>,
    socket: OwnedFd,
}

/// How a command ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signalled,
}

impl Helper {
    /// The system user `name`'s mailbox, opened by the helper (see the module's table).
    pub fn open_mailbox(&self, name: &str) -> Result<File, String> {
        self.ask_for_file(&["mailbox", name])
    }

    /// The file an alias names (`/path`), opened by the helper as the owner of the aliases file (see the module's
    /// table).
    pub fn open_alias_file(&self, path: &Path) -> Result<File, String> {
        self.ask_for_file(&["file", utf8(path)?])
    }

    /// The terminal `line` (`pts/3`, under /dev) of `user`'s login session, opened by the helper for writing a
    /// message (see the module's table).
    pub fn open_terminal(&self, user: &str, line: &Path) -> Result<File, String> {
        self.ask_for_file(&["terminal", user, utf8(line)?])
    }

    /// Runs the alias command `command` with `stdin` and `stderr` as the owner of the aliases file.
    pub fn run_command(
        &self,
        command: &str,
        stdin: OwnedFd,
        stderr: OwnedFd,
    ) -> Result<RunningCommand, String> {
        let fds = [stdin.as_fd(), stderr.as_fd()];
        let accepted = self.ask(&["command", command], &fds, SHORT_REPLY)?;
        Ok(RunningCommand {
            reply: accepted.socket,
        })
    }

    /// The TLS certificate and key, read again by the helper (which also reads the aliases file again); None
    /// without TLS.
    pub fn reload(&self) -> Result<Option<TlsFiles>, String> {
        let text = self.ask(&["reload"], &[], MAX_MESSAGE)?.text;
        if text.is_empty() {
            return Ok(None);
        }
        let at = memchr::memchr(0, &text).ok_or_else(no_answer)?;
        Ok(Some(TlsFiles {
            certificate: text[..at].to_vec(),
            key: text[at + 1..].to_vec(),
        }))
    }

    /// A request whose answer is one open file.
    fn ask_for_file(&self, words: &[&str]) -> Result<File, String> {
        let accepted = self.ask(words, &[], SHORT_REPLY)?;
        accepted
            .fds
            .into_iter()
            .next()
            .map(File::from)
            .ok_or_else(no_answer)
    }

    /// Sends one request and waits for its first reply, of at most `capacity` bytes.
    fn ask(&self, words: &[&str], fds: &[BorrowedFd], capacity: usize) -> Result<Accepted, String> {
        let failed = |e: io::Error| format!("the privileged helper cannot be reached: {e}");
        let (reply, theirs) = pair().map_err(failed)?;
        let mut attached = vec![theirs.as_fd()];
        attached.extend_from_slice(fds);
        send(&self.socket, words.join("\0").as_bytes(), &attached).map_err(failed)?;
        drop(theirs);
        let (mut text, fds) = receive(&reply, capacity).map_err(failed)?;
        match text.first() {
            Some(b'O') => {
                text.remove(0);
                Ok(Accepted {
                    text,
                    fds,
                    socket: reply,
                })
            }
            Some(b'E') => Err(String::from_utf8_lossy(&text[1..]).into_owned()),
            _ => Err(no_answer()),
        }
    }
}

impl RunningCommand {
    /// How the command ended, waiting at most `timeout`; None while it runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Ended>, String> {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.reply.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) => return Err(format!("waiting for the privileged helper: {e}")),
        }
        let (text, _) = receive(&self.reply, SHORT_REPLY).map_err(|e| e.to_string())?;
        match text.split_first() {
            Some((b'X', code)) => std::str::from_utf8(code)
                .ok()
                .and_then(|code| code.parse().ok())
                .map(|code| Some(Ended::Exited(code)))
                .ok_or_else(no_answer),
            Some((b'S', _)) => Ok(Some(Ended::Signalled)),
            _ => Err(no_answer()),
        }
    }
}

/// A path as a request word: the request protocol is text.
fn utf8(path: &Path) -> Result<&str, String> {
    path.to_str()
        .ok_or_else(|| format!("{}: not a UTF-8 path", path.display()))
}

fn no_answer() -> String {
    "the privileged helper gave no answer".into()
}

/// A connected pair of SOCK_SEQPACKET sockets, close-on-exec.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Sends one message with `fds` attached.
pub fn send(socket: &OwnedFd, bytes: &[u8], fds: &[BorrowedFd]) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message of at most `capacity` bytes and the descriptors attached to it; an empty message means
/// the other end closed.
pub fn receive(socket: &OwnedFd, capacity: usize) -> io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    let mut bytes = vec![0; capacity];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    bytes.truncate(received.bytes);
    let mut fds = Vec::new();
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    Ok((bytes, fds))
}
