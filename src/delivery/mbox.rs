//! Appending one message to an mbox file: dot-lock, fcntl and flock locking, the From_ line, the size limit,
//! and rolling back to the old size on any failure. The message itself goes through the copier in mbox form.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, LazyLock, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, Flock, FlockArg, fcntl};
use nix::sys::signal::kill;
use nix::unistd::{AccessFlags, Gid, Pid, Uid, access, fchown, geteuid};

use crate::copy::{self, CopyError, Format};
use crate::delivery::mail_file::{self, Unfit};
use crate::delivery::transport::Delivery;
use crate::privilege::helper;
use crate::smtp::{Class, Detail, Status};

/// How mailboxes are locked and limited (from the configuration).
#[derive(Debug, Clone)]
pub struct MboxSettings {
    /// How long to keep retrying the locks before giving up with a temporary failure.
    pub lock_timeout: Duration,
    /// A dot-lock older than this is stale and removed, whatever PID it holds (one naming a process that is gone
    /// is removed at once).
    pub stale_lock_age: Duration,
    /// Also take flock(2), which on Linux does not see fcntl locks, for readers that use only flock.
    pub flock: bool,
    /// The largest a mailbox may grow to, in bytes; 0 means no limit.
    pub max_mailbox_size: u64,
}

/// Why a message could not be appended, and whether trying again later could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MboxError {
    /// The RFC 3463 enhanced status code, e.g. 4.2.0 (locked), 5.2.2 (mailbox full), 4.3.0; its class says
    /// whether retrying can help.
    pub status: Status,
    /// What happened, naming the mailbox path.
    pub message: String,
}

impl MboxError {
    pub fn temporary(detail: Detail, message: String) -> Self {
        MboxError {
            status: Status::new(Class::TransientFailure, detail),
            message,
        }
    }

    fn permanent(detail: Detail, message: String) -> Self {
        MboxError {
            status: Status::new(Class::PermanentFailure, detail),
            message,
        }
    }

    /// True when retrying cannot help (bounce), false for a temporary failure (keep it queued).
    pub fn is_permanent(&self) -> bool {
        self.status.class == Class::PermanentFailure
    }

    /// An I/O error while doing `what` to `path`, classified as Postfix does: a full disk is temporary (Postfix
    /// says 4.3.0; we say 4.3.1, mail system full), a full quota or file size limit is the recipient's mailbox
    /// full (5.2.2, permanent).
    fn io(path: &Path, what: &str, err: &io::Error) -> Self {
        let message = format!("{}: {what}: {err}", path.display());
        match err.raw_os_error() {
            Some(libc::ENOSPC) => MboxError::temporary(Detail::MailSystemFull, message),
            Some(libc::EDQUOT | libc::EFBIG) => MboxError::permanent(Detail::MailboxFull, message),
            _ => MboxError::temporary(Detail::OtherMailSystem, message),
        }
    }
}

impl fmt::Display for MboxError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for MboxError {}

impl From<MboxError> for Delivery {
    fn from(e: MboxError) -> Delivery {
        Delivery::failed(e.status, e.message)
    }
}

/// One message as it goes into a mailbox.
pub struct Message<'a> {
    /// Its queue id, which its trace headers name: how a copy appended before a crash is recognised.
    pub queue_id: &'a str,
    /// The envelope sender, for the From_ line; empty (the null sender) becomes `MAILER-DAEMON`.
    pub sender: &'a str,
    /// When the message arrived, for the From_ line.
    pub arrival: DateTime<Utc>,
    /// What delivery puts above the message (Return-Path, Delivered-To, Received).
    pub trace_headers: &'a [u8],
    /// The bytes it takes in the mailbox, as [`len_in_mbox`] counts them: what the journal announces, what the
    /// size limit counts, and exactly what [`append`] writes.
    pub len: u64,
    /// The offset and length of an append of it announced before a crash, if the journal holds one: it is looked
    /// for there before it is appended again.
    pub announced: Option<(u64, u64)>,
}

/// Whose mbox file an append goes into, which says how it is opened and whom it must belong to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MboxFile {
    /// A mailbox in `mailbox_dir`. A system user's ids (`owner`) are given to a new one, and the privileged helper,
    /// when there is one, opens what the server's account may not.
    Mailbox { owner: Option<(Uid, Gid)> },
    /// A file an alias names (`/path`). The privileged helper, when there is one, opens it as the aliases file's
    /// owner, whatever the server's account may do.
    AliasFile,
}

impl MboxFile {
    /// The ids a new mailbox is given to.
    fn owner(self) -> Option<(Uid, Gid)> {
        match self {
            MboxFile::Mailbox { owner } => owner,
            MboxFile::AliasFile => None,
        }
    }
}

impl Message<'_> {
    /// How the message begins in the mailbox: its From_ line and its trace headers (which name its queue id).
    fn start(&self) -> Vec<u8> {
        let mut start = from_line(self.sender, self.arrival);
        start.extend_from_slice(&copy::convert(Format::MBOX, self.trace_headers));
        start
    }
}

/// What became of one message of an [`append`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Appended at this offset.
    At(u64),
    /// Found whole where an append announced before a crash put it: not appended again.
    FoundWhole,
}

/// What writes one message's body into the mailbox, returning the bytes the message took.
pub type WriteBody<'a> = dyn FnMut(&mut dyn BufRead) -> Result<u64, MboxError> + 'a;

/// Where [`append`] gets the body of its `n`th message: `bodies(n, write)` calls `write` with it (the message as
/// queued, from its start) and returns what `write` returns.
pub type Bodies<'a> = dyn FnMut(usize, &mut WriteBody) -> Result<u64, MboxError> + 'a;

/// Told where the messages of an [`append`] will be written (each one's index and offset), before anything is
/// written; an Err stops the append.
pub type Announce<'a> = dyn FnMut(&[(usize, u64)]) -> Result<(), MboxError> + 'a;

/// What became of each message of an [`append`], in order.
pub type Results = Vec<Result<Appended, MboxError>>;

/// Appends `messages` to the mbox file at `path`, creating it if needed, under one taking of the locks and with one
/// `fdatasync` for all of them. Returns what became of each, in order.
///
/// Each is written as `From <sender> <asctime of arrival>`, then the trace headers and the body in mbox form (see
/// [`Format::MBOX`]: LF line ends, mboxrd quoting, a final newline added if missing), and one empty line. Under the
/// locks, first a message torn at the end of the file by a crash is cut off (see [`expect_after_crash`]), and each
/// message with an append announced before a crash is looked for where it was announced: found whole, it is not
/// appended again. `announce` is then told where each of the others will be written (its index in `messages` and
/// its offset, contiguous from the end of the file), before anything is written; a message that would pass the
/// size limit is left out with a permanent failure. A new mailbox gets mode 0600 and, when `file` names an owner and
/// we run as root, that owner. Locks and limits follow `settings`.
///
/// On any failure while writing or syncing, also when a message turns out not to be `len` bytes long, the mailbox
/// is left exactly as it was: the message that failed gets its error, the others written with it a temporary
/// failure naming it.
pub fn append(
    path: &Path,
    file: MboxFile,
    settings: &MboxSettings,
    messages: &[Message],
    announce: &mut Announce,
    bodies: &mut Bodies,
) -> Results {
    let _turn = Turn::take(path);
    let mut locked = match lock(path, file, settings) {
        Ok(locked) => locked,
        Err(err) => return vec![Err(err); messages.len()],
    };
    if let Err(err) = cut_torn_tail(path, &mut locked) {
        return vec![Err(err); messages.len()];
    }
    let mut results: Vec<Option<Result<Appended, MboxError>>> = messages
        .iter()
        .map(|message| {
            let (offset, len) = message.announced?;
            match found_whole(path, &mut locked, offset, len, &message.start()) {
                Ok(true) => Some(Ok(Appended::FoundWhole)),
                Ok(false) => None,
                Err(err) => Some(Err(err)),
            }
        })
        .collect();
    let old_size = locked.size;
    let mut end = old_size;
    let mut planned = Vec::with_capacity(messages.len());
    for (n, message) in messages.iter().enumerate() {
        if results[n].is_some() {
            continue;
        }
        let limit = settings.max_mailbox_size;
        if limit != 0 && end.saturating_add(message.len) > limit {
            results[n] = Some(Err(MboxError::permanent(
                Detail::MailboxFull,
                format!(
                    "{}: mailbox full: {end} bytes plus {} for this message exceed the limit of {limit}",
                    path.display(),
                    message.len
                ),
            )));
            continue;
        }
        planned.push((n, end));
        end += message.len;
    }
    if !planned.is_empty() {
        let written = announce(&planned)
            .map_err(|err| (None, err))
            .and_then(|()| write_all(path, &locked, messages, &planned, bodies));
        for (n, offset) in planned {
            results[n] = Some(match &written {
                Ok(()) => Ok(Appended::At(offset)),
                Err((Some(failed), err)) if *failed != n => Err(MboxError::temporary(
                    err.status.detail,
                    format!(
                        "{}: not appended: the append of {} with it failed ({})",
                        path.display(),
                        messages[*failed].queue_id,
                        err.message
                    ),
                )),
                Err((_, err)) => Err(err.clone()),
            });
        }
    }
    results
        .into_iter()
        .map(|result| result.expect("every message has a result"))
        .collect()
}

/// Writes the `planned` messages (index and offset, contiguous from the end of the file) and syncs them. On a
/// failure the file is cut back to its size before, and the error names the message that failed (None: all of
/// them, when announcing or syncing failed).
fn write_all(
    path: &Path,
    locked: &Locked,
    messages: &[Message],
    planned: &[(usize, u64)],
    bodies: &mut Bodies,
) -> Result<(), (Option<usize>, MboxError)> {
    let undo = Undo {
        file: &locked.file,
        path,
        old_size: locked.size,
        done: false,
    };
    let result = OUT.with_borrow_mut(|buffer| {
        buffer.clear();
        let mut out = Spill {
            file: &locked.file,
            buffer,
        };
        for &(n, _) in planned {
            let message = &messages[n];
            let from_line = from_line(message.sender, message.arrival);
            let written = bodies(n, &mut |body| {
                render(&mut out, path, &from_line, message.trace_headers, body).map(|(_, len)| len)
            })
            .map_err(|e| (Some(n), e))?;
            if written != message.len {
                return Err((
                    Some(n),
                    MboxError::temporary(
                        Detail::OtherMailSystem,
                        format!(
                            "{}: the message took {written} bytes, not the {} announced",
                            path.display(),
                            message.len
                        ),
                    ),
                ));
            }
        }
        out.flush()
            .map_err(|e| (None, MboxError::io(path, "writing", &e)))?;
        locked
            .file
            .sync_data()
            .map_err(|e| (None, MboxError::io(path, "syncing", &e)))
    });
    match result {
        Ok(()) => {
            undo.commit();
            Ok(())
        }
        Err((failed, mut err)) => {
            // Undo while still locked (`locked` drops later), so no reader ever sees half a message.
            if let Err(undo_err) = undo.undo() {
                log::error!(
                    "{}: could not truncate back to {} bytes: {undo_err}",
                    path.display(),
                    locked.size
                );
                err.message += &format!(
                    "; truncating back to {} bytes also failed: {undo_err}",
                    locked.size
                );
            }
            Err((failed, err))
        }
    }
}

/// What an append writes at a time.
const OUT_CHUNK: usize = 64 * 1024;

thread_local! {
    /// Each delivery thread's buffer for what it appends, kept from one append to the next.
    static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes to `file` through `buffer`, [`OUT_CHUNK`] bytes or more at a time; [`Write::flush`] writes the rest.
struct Spill<'a> {
    file: &'a File,
    buffer: &'a mut Vec<u8>,
}

impl Write for Spill<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= OUT_CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let mut file = self.file;
        file.write_all(self.buffer)?;
        self.buffer.clear();
        Ok(())
    }
}

/// A delivery thread's turn at one mailbox. Threads of this process wait for each other here, in order, before
/// they take the file locks: fcntl locks do not keep apart threads of one process, and the dot-lock's retry
/// delay would make them wait far longer than an append takes.
struct Turn {
    path: PathBuf,
}

/// The mailboxes a thread of this process is appending to, and the signal that one of them is free again.
static BUSY: LazyLock<(Mutex<HashSet<PathBuf>>, Condvar)> = LazyLock::new(Default::default);

impl Turn {
    fn take(path: &Path) -> Turn {
        let (busy, freed) = &*BUSY;
        let mut busy = busy.lock().unwrap_or_else(|p| p.into_inner());
        while busy.contains(path) {
            busy = freed.wait(busy).unwrap_or_else(|p| p.into_inner());
        }
        busy.insert(path.to_path_buf());
        Turn {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let (busy, freed) = &*BUSY;
        busy.lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.path);
        freed.notify_all();
    }
}

/// The From_ line that starts a message: sender and arrival time in asctime format, e.g.
/// `From alice@example.org Tue Nov 24 13:49:21 2026`.
fn from_line(sender: &str, arrival: DateTime<Utc>) -> Vec<u8> {
    // A control character (only a broken caller could pass one) would end the line early.
    let sender: String = sender
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    let sender = if sender.is_empty() {
        "MAILER-DAEMON"
    } else {
        &sender
    };
    format!("From {sender} {}\n", arrival.format("%a %b %e %H:%M:%S %Y")).into_bytes()
}

/// Writes the message in mbox form to `out`: the From_ line, then the trace headers and the body, and the empty
/// line that ends it; returns `out` and the bytes written.
fn render<W: Write>(
    mut out: W,
    path: &Path,
    from_line: &[u8],
    trace_headers: &[u8],
    body: &mut dyn BufRead,
) -> Result<(W, u64), MboxError> {
    let write_error = |e: io::Error| MboxError::io(path, "writing", &e);
    out.write_all(from_line).map_err(write_error)?;
    let (mut out, copied) =
        copy::copy(Format::MBOX, trace_headers, body, out).map_err(|e| match e {
            CopyError::Read(e) => MboxError::temporary(
                Detail::OtherMailSystem,
                format!("{}: reading the message failed: {e}", path.display()),
            ),
            CopyError::Write(e) => write_error(e),
        })?;
    out.write_all(b"\n").map_err(write_error)?;
    Ok((out, from_line.len() as u64 + copied + 1))
}

/// How many bytes [`append`] adds for a message whose body takes `body_size` bytes in mbox form, as the spool counted
/// it when the message arrived (the envelope's `mbox_size`): its From_ line, its trace headers (which end with a line
/// end, so the body starts a line), the body and the empty line after it. No need to read the body.
pub fn len_with_body_size(
    sender: &str,
    arrival: DateTime<Utc>,
    trace_headers: &[u8],
    body_size: u64,
) -> u64 {
    let start = from_line(sender, arrival).len() + copy::convert(Format::MBOX, trace_headers).len();
    start as u64 + body_size + 1
}

/// How many bytes [`append`] adds for this message: the same rendering, counted instead of written.
pub fn len_in_mbox(
    path: &Path,
    sender: &str,
    arrival: DateTime<Utc>,
    trace_headers: &[u8],
    body: &mut dyn BufRead,
) -> Result<u64, MboxError> {
    let from_line = from_line(sender, arrival);
    let (_, len) = render(io::sink(), path, &from_line, trace_headers, body)?;
    Ok(len)
}

/// An append announced in the journal by a process that ended before it recorded the outcome.
struct Announced {
    offset: u64,
    len: u64,
    /// How the message begins (see [`Message::start`]).
    start: Vec<u8>,
}

/// The appends announced before a crash, by mailbox, that no append of this process has looked at yet.
static AFTER_CRASH: LazyLock<Mutex<HashMap<PathBuf, Vec<Announced>>>> =
    LazyLock::new(Default::default);

/// Tells the appends of this process that the journal holds an append of `message` to `path` (where and how long:
/// `message.announced`), announced by a process that ended before it recorded the outcome. Called for every such
/// append before this process delivers anything: the first append to `path` then cuts off such a copy torn at the
/// end of the mailbox before it writes after it, whichever message it appends (messages announced together leave
/// at most one torn, those before it whole and those after it not written at all).
pub fn expect_after_crash(path: &Path, message: &Message) {
    let Some((offset, len)) = message.announced else {
        return;
    };
    AFTER_CRASH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(path.to_path_buf())
        .or_default()
        .push(Announced {
            offset,
            len,
            start: message.start(),
        });
}

/// Cuts off a message torn at the end of the locked mailbox by a crash, if one of the appends announced before it
/// (see [`expect_after_crash`]) left one.
fn cut_torn_tail(path: &Path, locked: &mut Locked) -> Result<(), MboxError> {
    let announced = AFTER_CRASH
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(path)
        .unwrap_or_default();
    for append in &announced {
        if let Err(err) = found_whole(path, locked, append.offset, append.len, &append.start) {
            // Looked at again by the next append.
            AFTER_CRASH
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(path.to_path_buf())
                .or_default()
                .extend(announced);
            return Err(err);
        }
    }
    Ok(())
}

/// After a crash during a delivery: whether the `len`-byte message announced at `offset` is in the locked mailbox
/// whole (it begins with `start`, its From_ line and trace headers, which name its queue id; it ends with its
/// empty line; and the next thing is the end of the file or another message). A torn copy at the end of the file
/// (as much of `start` as the file holds, and the file ends before the message does), left by a crash in the
/// middle of the write, is cut off (and `locked.size` with it), so the retry appends a whole one.
fn found_whole(
    path: &Path,
    locked: &mut Locked,
    offset: u64,
    len: u64,
    start: &[u8],
) -> Result<bool, MboxError> {
    let read_error = |e: io::Error| MboxError::io(path, "reading", &e);
    let size = locked.size;
    if size <= offset || len <= start.len() as u64 {
        return Ok(false);
    }
    let mut found = vec![0; start.len().min((size - offset) as usize)];
    locked
        .file
        .read_exact_at(&mut found, offset)
        .map_err(read_error)?;
    if found != start[..found.len()] {
        return Ok(false);
    }
    if size < offset + len {
        // Torn, and nothing after it: cut it off under the lock, as a failed append would have been.
        truncate(&locked.file, offset).map_err(|e| MboxError::io(path, "truncating", &e))?;
        locked.size = offset;
        log::warn!(
            "{}: cut off a message torn by a crash at byte {offset}",
            path.display()
        );
        return Ok(false);
    }
    let mut end = [0; 7];
    let tail = &mut end[..(2 + (size - offset - len).min(5)) as usize];
    locked
        .file
        .read_exact_at(tail, offset + len - 2)
        .map_err(read_error)?;
    Ok(tail.starts_with(b"\n\n") && (tail.len() == 2 || tail[2..].starts_with(b"From ")))
}

/// Truncates the mailbox back to its size before the append unless the append is committed, also when a panic
/// unwinds through it.
struct Undo<'a> {
    file: &'a File,
    path: &'a Path,
    old_size: u64,
    done: bool,
}

impl Undo<'_> {
    fn commit(mut self) {
        self.done = true;
    }

    fn undo(mut self) -> io::Result<()> {
        self.done = true;
        truncate(self.file, self.old_size)
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = truncate(self.file, self.old_size)
        {
            log::error!(
                "{}: could not truncate back to {} bytes: {e}",
                self.path.display(),
                self.old_size
            );
        }
    }
}

/// Cuts the mailbox back to `size` bytes and makes that durable.
fn truncate(file: &File, size: u64) -> io::Result<()> {
    file.set_len(size)?;
    file.sync_all()
}

/// The open mailbox with every lock taken. Fields drop in order: flock, then the file (closing it releases the
/// fcntl lock), then the dot-lock.
struct Locked {
    _flock: Option<Flock<File>>,
    file: File,
    _dotlock: Option<DotLock>,
    /// The mailbox size once locked, before anything was appended.
    size: u64,
}

/// Why one locking attempt did not get the mailbox.
enum NotLocked {
    /// Someone else holds a lock (described here); release everything, wait and try again.
    Busy(String),
    /// Trying again cannot help.
    Failed(MboxError),
}

impl From<MboxError> for NotLocked {
    fn from(err: MboxError) -> Self {
        NotLocked::Failed(err)
    }
}

/// Pause between locking attempts.
const RETRY_DELAY: Duration = Duration::from_millis(50);

/// Opens and locks the mailbox, retrying until `settings.lock_timeout`; every attempt starts from nothing held.
fn lock(path: &Path, file: MboxFile, settings: &MboxSettings) -> Result<Locked, MboxError> {
    let deadline = Instant::now() + settings.lock_timeout;
    if !may_skip_dotlock(path, file) {
        clear_leftovers_once(path, settings.stale_lock_age);
    }
    loop {
        match try_lock(path, file, settings) {
            Ok(locked) => return Ok(locked),
            Err(NotLocked::Failed(err)) => return Err(err),
            Err(NotLocked::Busy(holder)) => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(MboxError::temporary(
                        Detail::OtherMailbox,
                        format!(
                            "{}: mailbox is locked ({holder}); gave up after {:?}",
                            path.display(),
                            settings.lock_timeout
                        ),
                    ));
                }
                thread::sleep(RETRY_DELAY.min(deadline - now));
            }
        }
    }
}

/// One attempt at the locks, in the order Debian Policy 11.6 gives: dot-lock, then fcntl, then (if configured)
/// flock. Whatever was taken is released by drop when a later step fails.
fn try_lock(path: &Path, kind: MboxFile, settings: &MboxSettings) -> Result<Locked, NotLocked> {
    let dotlock = if may_skip_dotlock(path, kind) {
        None
    } else {
        Some(DotLock::acquire(&lock_path(path), settings.stale_lock_age)?)
    };
    let file = open_mailbox(path, kind)?;
    fcntl_lock(&file).map_err(|e| match e {
        Errno::EAGAIN | Errno::EACCES => NotLocked::Busy(match fcntl_holder(&file) {
            Some(pid) => format!("fcntl lock held by process {pid}"),
            None => "fcntl lock held by another process".to_string(),
        }),
        e => MboxError::io(path, "fcntl lock", &e.into()).into(),
    })?;
    let flock = if settings.flock {
        let dup = file
            .try_clone()
            .map_err(|e| MboxError::io(path, "dup", &e))?;
        match Flock::lock(dup, FlockArg::LockExclusiveNonblock) {
            Ok(flock) => Some(flock),
            Err((_, Errno::EWOULDBLOCK)) => {
                return Err(NotLocked::Busy("flock held by another process".to_string()));
            }
            Err((_, e)) => return Err(MboxError::io(path, "flock", &e.into()).into()),
        }
    } else {
        None
    };
    let size = check_mailbox(path, &file, kind.owner())?;
    Ok(Locked {
        _flock: flock,
        file,
        _dotlock: dotlock,
        size,
    })
}

/// Whether the dot-lock is left out: for an alias's file that the helper opens as another user, in a directory the
/// server's account may not write (a user's own directory), as Postfix's local delivery does for files. The fcntl
/// lock (and flock) are still taken.
fn may_skip_dotlock(path: &Path, kind: MboxFile) -> bool {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    kind == MboxFile::AliasFile
        && helper::installed().is_some()
        && access(dir, AccessFlags::W_OK | AccessFlags::X_OK).is_err()
}

fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Opens the mailbox for appending (and reading, for the check after a crash), creating it (mode 0600) if it is
/// missing. Under the `user` account, a system user's mailbox the account may not open or create is opened by the
/// privileged helper, which creates it owned by the user; so is every alias's file, as the aliases file's owner.
fn open_mailbox(path: &Path, kind: MboxFile) -> Result<File, NotLocked> {
    let helper = helper::installed();
    if let (MboxFile::AliasFile, Some(helper)) = (kind, helper) {
        return helper
            .open_alias_file(path)
            .map_err(|why| MboxError::temporary(Detail::OtherMailSystem, why).into());
    }
    let owner = kind.owner();
    // A system user's mailbox that is missing, or that the account may not open (also when the check after a
    // crash reads it), is opened by the helper.
    let denied = match mail_file::open(path, false) {
        Ok(file) => return Ok(file),
        Err(Unfit::Io(e)) if e.kind() == io::ErrorKind::PermissionDenied && helper.is_some() => {
            true
        }
        Err(Unfit::Io(e)) if e.kind() == io::ErrorKind::NotFound => false,
        Err(unfit) => return Err(unfit_error(path, "opening", unfit).into()),
    };
    if let Some(helper) = helper.filter(|_| denied || owner.is_some()) {
        let name = path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or_default();
        return helper
            .open_mailbox(name)
            .map_err(|why| MboxError::temporary(Detail::OtherMailSystem, why).into());
    }
    // Creating with O_EXCL tells us the file is new, and so ours to chown and make durable.
    match mail_file::open(path, true) {
        Ok(file) => {
            settle_new_mailbox(path, &file, owner).inspect_err(|_| {
                let _ = fs::remove_file(path);
            })?;
            Ok(file)
        }
        Err(Unfit::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(NotLocked::Busy("mailbox created while locking".to_string()))
        }
        Err(unfit) => Err(unfit_error(path, "creating", unfit).into()),
    }
}

/// A file that cannot take mail, as a delivery failure: a refused one waits for the admin as a temporary failure.
fn unfit_error(path: &Path, what: &str, unfit: Unfit) -> MboxError {
    match unfit {
        Unfit::Refused(why) => MboxError::temporary(Detail::OtherMailSystem, why),
        Unfit::Io(e) => MboxError::io(path, what, &e),
    }
}

/// Gives a new mailbox its owner and makes its directory entry durable before mail is written to it.
fn settle_new_mailbox(
    path: &Path,
    file: &File,
    owner: Option<(Uid, Gid)>,
) -> Result<(), MboxError> {
    if let Some((uid, gid)) = owner.filter(|_| geteuid().is_root()) {
        fchown(file, Some(uid), Some(gid)).map_err(|e| MboxError::io(path, "chown", &e.into()))?;
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| MboxError::io(dir, "syncing the directory", &e))
}

/// Checks the locked file is a regular file with one link, still at `path`, and returns its size. Where mailboxes
/// are given to their users (the server is root, or has the helper for it), one that belongs to someone else than
/// `owner` is refused too.
fn check_mailbox(path: &Path, file: &File, owner: Option<(Uid, Gid)>) -> Result<u64, NotLocked> {
    let meta = file
        .metadata()
        .map_err(|e| MboxError::io(path, "fstat", &e))?;
    let still_there = match fs::symlink_metadata(path) {
        Ok(at) => at.dev() == meta.dev() && at.ino() == meta.ino(),
        // An alias's file in a directory only its user may search: the helper opened it there just now.
        Err(e) => e.kind() == io::ErrorKind::PermissionDenied,
    };
    if !still_there {
        // A mail reader removed or replaced the mailbox while we opened it: start over with the new one.
        return Err(NotLocked::Busy(
            "mailbox replaced while locking".to_string(),
        ));
    }
    let owner = owner
        .filter(|_| geteuid().is_root() || helper::installed().is_some())
        .map(|(uid, _)| uid.as_raw());
    mail_file::check(path, &meta, owner)
        .map_err(|why| MboxError::temporary(Detail::OtherMailSystem, why))?;
    Ok(meta.len())
}

/// A write lock on the whole file.
fn whole_file_lock() -> libc::flock {
    libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    }
}

/// Takes the fcntl write lock without waiting.
fn fcntl_lock(file: &File) -> Result<(), Errno> {
    fcntl(file, FcntlArg::F_SETLK(&whole_file_lock())).map(drop)
}

/// The process holding a conflicting fcntl lock, if it can be found.
fn fcntl_holder(file: &File) -> Option<libc::pid_t> {
    let mut probe = whole_file_lock();
    fcntl(file, FcntlArg::F_GETLK(&mut probe)).ok()?;
    (probe.l_type != libc::F_UNLCK as libc::c_short).then_some(probe.l_pid)
}

/// Our `<mailbox>.lock` file. Dropping it removes the file, but only while it is still the one we created.
struct DotLock {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl DotLock {
    /// Creates the dot-lock holding our PID as liblockfile writes it ("12345\n"). When one exists and is stale,
    /// removes it and tries once more; when it is held, says by whom.
    fn acquire(path: &Path, stale_age: Duration) -> Result<DotLock, NotLocked> {
        for _ in 0..2 {
            match DotLock::create(path) {
                Ok(lock) => return Ok(lock),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    if let Some(holder) = held_by(path, stale_age)
                        .map_err(|e| MboxError::io(path, "reading the dot-lock", &e))?
                    {
                        return Err(NotLocked::Busy(holder));
                    }
                }
                Err(e) => return Err(MboxError::io(path, "creating the dot-lock", &e).into()),
            }
        }
        Err(NotLocked::Busy(format!(
            "dot-lock {} keeps coming back",
            path.display()
        )))
    }

    /// Writes our PID into a file of our own and links it into place, as liblockfile does, so the lock never
    /// exists without the PID in it (a kill between creating and writing would leave a lock nobody can claim).
    fn create(path: &Path) -> io::Result<DotLock> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let mut own = path.as_os_str().to_owned();
        own.push(format!(
            ".{}.{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        let own = PathBuf::from(own);
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&own)
            .and_then(|mut file| file.write_all(format!("{}\n", std::process::id()).as_bytes()));
        let linked = written.and_then(|()| fs::hard_link(&own, path));
        let _ = fs::remove_file(&own);
        linked?;
        let meta = fs::symlink_metadata(path).inspect_err(|_| {
            let _ = fs::remove_file(path);
        })?;
        Ok(DotLock {
            path: path.to_owned(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

impl Drop for DotLock {
    fn drop(&mut self) {
        match fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(e) = fs::remove_file(&self.path) {
                    log::warn!(
                        "{}: could not remove our dot-lock: {e}",
                        self.path.display()
                    );
                }
            }
            _ => log::warn!(
                "{}: our dot-lock was removed by someone else",
                self.path.display()
            ),
        }
    }
}

/// Who holds the existing dot-lock at `path`, or None when it is gone or was stale and has been removed.
///
/// Stale means its PID names no process (ESRCH: the owner died, e.g. Postel after kill -9), or it is older than
/// `stale_age` whatever it holds: a live PID may be a reused one, and a holder that needs a lock for long keeps
/// touching it (liblockfile's lockfile_touch).
fn held_by(path: &Path, stale_age: Duration) -> io::Result<Option<String>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    let pid = pid_in(&file)?;
    let age = meta.modified()?.elapsed().unwrap_or_default();
    let Some(why) = staleness(pid, age, stale_age) else {
        let holder = pid.map_or_else(|| "no PID".to_string(), |pid| format!("process {pid}"));
        return Ok(Some(format!(
            "dot-lock {} held by {holder}, {}s old",
            path.display(),
            age.as_secs()
        )));
    };
    if remove_if_unchanged(path, &meta)? {
        log::warn!(
            "{}: removed stale dot-lock ({why}, pid {pid:?}, {}s old)",
            path.display(),
            age.as_secs()
        );
    }
    Ok(None)
}

/// The PID a dot-lock file holds, as liblockfile writes it ("12345\n"), if it holds one.
fn pid_in(file: &File) -> io::Result<Option<i32>> {
    let mut text = Vec::new();
    file.take(32).read_to_end(&mut text)?;
    Ok(std::str::from_utf8(&text)
        .ok()
        .and_then(|text| text.trim().parse::<i32>().ok())
        .filter(|&pid| pid > 0))
}

/// Why a lock file holding `pid`, `age` old, is stale, or None while its holder may still be at work.
fn staleness(pid: Option<i32>, age: Duration, stale_age: Duration) -> Option<&'static str> {
    if pid.is_some_and(|pid| kill(Pid::from_raw(pid), None) == Err(Errno::ESRCH)) {
        Some("its process is gone")
    } else if age > stale_age {
        Some("it is too old")
    } else {
        None
    }
}

/// Removes `path` if it is still the file `examined` describes (another deliverer may have replaced it with a
/// fresh lock meanwhile); true when this call removed it.
fn remove_if_unchanged(path: &Path, examined: &fs::Metadata) -> io::Result<bool> {
    if !fs::symlink_metadata(path)
        .is_ok_and(|now| now.dev() == examined.dev() && now.ino() == examined.ino())
    {
        return Ok(false);
    }
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The folders whose leftover dot-lock files this process has cleared.
static CLEARED: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Default::default);

/// The first time this process locks a mailbox in a folder, removes the `<mailbox>.lock.PID.N` files that
/// `DotLock::create` makes on the way to a dot-lock and that a kill before it removed them left behind. They
/// are stale by the dot-lock's own rule: the PID in their name is gone, or they are older than `stale_age`.
/// Failing to clear one is only logged: it holds no lock.
fn clear_leftovers_once(mailbox: &Path, stale_age: Duration) {
    let dir = match mailbox.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !CLEARED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(dir.to_path_buf())
    {
        return;
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            log::warn!(
                "{}: looking for leftover dot-lock files: {e}",
                dir.display()
            );
            return;
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if let Err(e) = clear_leftover(&path, stale_age) {
            log::warn!("{}: removing a leftover dot-lock file: {e}", path.display());
        }
    }
}

/// Removes `path` if it is a stale file `DotLock::create` left: named `<mailbox>.lock.PID.N`, a regular file
/// holding nothing or that PID (so a mailbox that happens to have such a name is never touched).
fn clear_leftover(path: &Path, stale_age: Duration) -> io::Result<()> {
    let Some(pid) = path
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(leftover_pid)
    else {
        return Ok(());
    };
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    // Empty (killed before the write) or holding its PID; it may also be linked as the dot-lock itself (killed
    // after the link), which the dot-lock's own staleness check handles.
    if !meta.is_file() || !(meta.len() == 0 || pid_in(&file)? == Some(pid)) {
        return Ok(());
    }
    let age = meta.modified()?.elapsed().unwrap_or_default();
    if let Some(why) = staleness(Some(pid), age, stale_age)
        && remove_if_unchanged(path, &meta)?
    {
        log::warn!(
            "{}: removed a leftover dot-lock file ({why}, {}s old)",
            path.display(),
            age.as_secs()
        );
    }
    Ok(())
}

/// The PID in the name of a file `DotLock::create` makes, `<mailbox>.lock.PID.N`.
fn leftover_pid(name: &str) -> Option<i32> {
    let (rest, count) = name.rsplit_once('.')?;
    let (rest, pid) = rest.rsplit_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !rest.ends_with(".lock") || rest == ".lock" || !digits(pid) || !digits(count) {
        return None;
    }
    pid.parse().ok().filter(|&pid| pid > 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TempDir, tool};
    use std::io::BufReader;
    use std::process::{Command, Stdio};

    /// A mailbox of the server's own account.
    const BOX: MboxFile = MboxFile::Mailbox { owner: None };

    fn mailbox(dir: &TempDir) -> PathBuf {
        dir.0.join("alice")
    }

    fn settings() -> MboxSettings {
        MboxSettings {
            lock_timeout: Duration::from_secs(5),
            stale_lock_age: Duration::from_secs(300),
            flock: false,
            max_mailbox_size: 0,
        }
    }

    fn arrival() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-04T13:49:21Z")
            .unwrap()
            .to_utc()
    }

    const TRACE: &[u8] = b"Return-Path: <bob@example.org>\r\nDelivered-To: alice@localhost\r\n";
    const FROM_LINE: &str = "From bob@example.org Wed Nov  4 13:49:21 2026\n";
    const TRACE_LF: &str = "Return-Path: <bob@example.org>\nDelivered-To: alice@localhost\n";

    /// A message from bob@example.org with `trace` headers, said to take `len` bytes in the mailbox.
    fn message<'a>(queue_id: &'a str, trace: &'a [u8], len: u64) -> Message<'a> {
        Message {
            queue_id,
            sender: "bob@example.org",
            arrival: arrival(),
            trace_headers: trace,
            len,
            announced: None,
        }
    }

    /// Appends `messages`, whose bodies are `bodies`; returns what became of each and where each was announced.
    fn append_bodies(
        path: &Path,
        settings: &MboxSettings,
        messages: &[Message],
        bodies: &mut [&mut dyn BufRead],
    ) -> (Results, Vec<(usize, u64)>) {
        let mut announced = Vec::new();
        let mut announce = |planned: &[(usize, u64)]| {
            announced.extend_from_slice(planned);
            Ok(())
        };
        let mut read = |n: usize, write: &mut WriteBody| write(&mut *bodies[n]);
        let results = append(path, BOX, settings, messages, &mut announce, &mut read);
        (results, announced)
    }

    /// Appends `body`, said to take `len` bytes in the mailbox, from bob@example.org with the TRACE headers.
    fn append_body(
        path: &Path,
        settings: &MboxSettings,
        body: &mut dyn BufRead,
        len: u64,
    ) -> Result<(), MboxError> {
        let (mut results, _) =
            append_bodies(path, settings, &[message("Q0", TRACE, len)], &mut [body]);
        results.pop().unwrap().map(drop)
    }

    /// Appends `body` and returns the bytes it took.
    fn deliver_with(path: &Path, settings: &MboxSettings, body: &[u8]) -> Result<u64, MboxError> {
        let len = len_in_mbox(path, "bob@example.org", arrival(), TRACE, &mut &body[..])?;
        let result = append_body(path, settings, &mut &body[..], len);
        assert!(!lock_path(path).exists(), "our dot-lock is left behind");
        result.map(|()| len)
    }

    fn deliver(path: &Path, body: &[u8]) -> Result<u64, MboxError> {
        deliver_with(path, &settings(), body)
    }

    /// What one message with `body_lf` (already in mbox form) looks like in the mailbox.
    fn expected(body_lf: &str) -> String {
        format!("{FROM_LINE}{TRACE_LF}{body_lf}\n")
    }

    #[test]
    fn one_message_is_framed_converted_and_quoted() {
        let dir = TempDir::new("mbox");
        let body = "Subject: hi\r\n\r\nFrom here\r\n>From there\r\n>>From far\r\n\
                    Fromage\r\n>From\r\n a From b\r\nbare\rcr\r\nend";
        let appended = deliver(&mailbox(&dir), body.as_bytes()).unwrap();
        let lf = "Subject: hi\n\n>From here\n>>From there\n>>>From far\n\
                  Fromage\n>From\n a From b\nbare\rcr\nend\n";
        let content = fs::read_to_string(mailbox(&dir)).unwrap();
        assert_eq!(content, expected(lf));
        assert_eq!(appended, content.len() as u64);
        let mode = fs::metadata(mailbox(&dir)).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn empty_bodies_and_final_newlines() {
        for (body, lf) in [
            ("", ""),
            ("x\r\n", "x\n"),
            ("x", "x\n"),
            ("From", "From\n"),
            (">>", ">>\n"),
            ("a\r", "a\r\n"),
        ] {
            let dir = TempDir::new("mbox");
            deliver(&mailbox(&dir), body.as_bytes()).unwrap();
            assert_eq!(
                fs::read_to_string(mailbox(&dir)).unwrap(),
                expected(lf),
                "{body:?}"
            );
        }
    }

    #[test]
    fn the_length_from_the_body_size_counted_at_arrival_is_the_length_written() {
        let dir = TempDir::new("mbox");
        for body in [
            &b""[..],
            b"x",
            b"x\r\n",
            b"a\r",
            b"Subject: hi\r\n\r\nFrom here\r\n>From there\r\nbare\rcr\r\nno end",
            b"From \r\n\r\n>>From\r\n.\r\n",
        ] {
            let mut counter = copy::Copier::new(io::sink(), Format::MBOX);
            counter.write(body).unwrap();
            let (_, body_size) = counter.finish().unwrap();
            let counted = len_with_body_size("bob@example.org", arrival(), TRACE, body_size);
            assert_eq!(counted, deliver(&mailbox(&dir), body).unwrap(), "{body:?}");
        }
    }

    #[test]
    fn a_message_that_is_not_the_length_announced_is_not_appended() {
        let dir = TempDir::new("mbox");
        deliver(&mailbox(&dir), b"first\r\n").unwrap();
        let before = fs::read(mailbox(&dir)).unwrap();
        let body = b"Subject: x\r\n\r\nchanged since it was counted\r\n";
        let len = len_in_mbox(
            &mailbox(&dir),
            "bob@example.org",
            arrival(),
            TRACE,
            &mut &body[..],
        )
        .unwrap();
        for wrong in [len - 1, len + 1] {
            let err = append_body(&mailbox(&dir), &settings(), &mut &body[..], wrong).unwrap_err();
            assert_eq!(
                (err.is_permanent(), err.status.to_string().as_str()),
                (false, "4.3.0")
            );
            assert!(
                err.message
                    .contains(&format!("took {len} bytes, not the {wrong} announced")),
                "{}",
                err.message
            );
            assert_eq!(fs::read(mailbox(&dir)).unwrap(), before);
        }
    }

    #[test]
    fn two_messages_and_raw_bytes() {
        let dir = TempDir::new("mbox");
        deliver(&mailbox(&dir), b"Subject: one\r\n\r\nhello\r\n").unwrap();
        deliver(
            &mailbox(&dir),
            b"Subject: two\r\n\r\ngr\xc3\xbc\xc3\x9fe \xff\x80\r\n",
        )
        .unwrap();
        let mut want = expected("Subject: one\n\nhello\n").into_bytes();
        want.extend_from_slice(FROM_LINE.as_bytes());
        want.extend_from_slice(TRACE_LF.as_bytes());
        want.extend_from_slice(b"Subject: two\n\ngr\xc3\xbc\xc3\x9fe \xff\x80\n\n");
        assert_eq!(fs::read(mailbox(&dir)).unwrap(), want);
    }

    #[test]
    fn the_sender_line() {
        let line = |sender| String::from_utf8(from_line(sender, arrival())).unwrap();
        assert_eq!(line(""), "From MAILER-DAEMON Wed Nov  4 13:49:21 2026\n");
        assert_eq!(line("a\nb@c"), "From a_b@c Wed Nov  4 13:49:21 2026\n");
        let late = DateTime::parse_from_rfc3339("2026-11-24T13:49:21Z")
            .unwrap()
            .to_utc();
        assert_eq!(
            from_line("x@y", late),
            b"From x@y Tue Nov 24 13:49:21 2026\n"
        );
    }

    /// Yields `lines` copies of a 100-byte CRLF line, some of them From_ lines, without holding them all.
    struct Lines {
        left: usize,
        line: Vec<u8>,
        at: usize,
    }

    impl Read for Lines {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.at == self.line.len() {
                if self.left == 0 {
                    return Ok(0);
                }
                self.left -= 1;
                self.at = 0;
                let start: &[u8] = if self.left.is_multiple_of(10) {
                    b"From "
                } else {
                    b"line "
                };
                self.line[..5].copy_from_slice(start);
            }
            let n = buf.len().min(self.line.len() - self.at);
            buf[..n].copy_from_slice(&self.line[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    #[test]
    fn a_twenty_mebibyte_body_is_streamed() {
        let dir = TempDir::new("mbox");
        let lines = 210_000;
        let mut line = vec![b'x'; 100];
        line[98..].copy_from_slice(b"\r\n");
        let mut body = BufReader::new(Lines {
            left: lines,
            line,
            at: 100,
        });
        let size = (lines * 100) as u64;
        let from = "From bob Wed Nov  4 13:49:21 2026\n".len() as u64;
        let quoted = (lines / 10) as u64;
        let appended = from + size - lines as u64 + quoted + 1;
        let big = Message {
            sender: "bob",
            trace_headers: b"",
            ..message("Q0", b"", appended)
        };
        let (results, _) = append_bodies(&mailbox(&dir), &settings(), &[big], &mut [&mut body]);
        assert_eq!(results, [Ok(Appended::At(0))]);
        assert_eq!(fs::metadata(mailbox(&dir)).unwrap().len(), appended);
    }

    #[test]
    fn a_lock_held_by_a_live_process_times_out() {
        let dir = TempDir::new("mbox");
        let lock = lock_path(&mailbox(&dir));
        let held = format!("{}\n", std::process::id());
        fs::write(&lock, &held).unwrap();
        let quick = MboxSettings {
            lock_timeout: Duration::from_millis(300),
            ..settings()
        };
        let started = Instant::now();
        let err = append_body(&mailbox(&dir), &quick, &mut &b"x"[..], 1).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            (err.is_permanent(), err.status.to_string().as_str()),
            (false, "4.2.0")
        );
        assert!(
            err.message
                .contains(&format!("process {}", std::process::id())),
            "{}",
            err.message
        );
        assert_eq!(
            fs::read_to_string(&lock).unwrap(),
            held,
            "someone else's lock must stay"
        );
        assert_eq!(fs::metadata(mailbox(&dir)).map(|m| m.len()).unwrap_or(0), 0);
    }

    #[test]
    fn a_lock_left_by_a_dead_process_is_removed_at_once() {
        let dir = TempDir::new("mbox");
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        fs::write(lock_path(&mailbox(&dir)), format!("{dead}\n")).unwrap();
        let quick = MboxSettings {
            lock_timeout: Duration::ZERO,
            ..settings()
        };
        deliver_with(&mailbox(&dir), &quick, b"x").unwrap();
    }

    #[test]
    fn files_left_on_the_way_to_a_dot_lock_by_a_dead_process_are_removed() {
        let dir = TempDir::new("mbox");
        let mut child = Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let mine = std::process::id();
        let left = |pid: u32, n: u32| dir.0.join(format!("alice.lock.{pid}.{n}"));
        // Killed before writing its PID, and after it (then also linked as the dot-lock itself).
        fs::write(left(dead, 0), "").unwrap();
        fs::write(left(dead, 1), format!("{dead}\n")).unwrap();
        fs::hard_link(left(dead, 1), lock_path(&mailbox(&dir))).unwrap();
        // Another mailbox's, of a live process still at work, and a mailbox that only looks like one.
        fs::write(
            dir.0.join(format!("bob.lock.{mine}.7")),
            format!("{mine}\n"),
        )
        .unwrap();
        fs::write(dir.0.join(format!("carol.lock.{dead}.2")), "From x\n").unwrap();
        deliver(&mailbox(&dir), b"x").unwrap();
        let mut names: Vec<String> = fs::read_dir(&dir.0)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "alice".to_string(),
                format!("bob.lock.{mine}.7"),
                format!("carol.lock.{dead}.2")
            ]
        );
    }

    #[test]
    fn leftover_names_are_recognised_exactly() {
        assert_eq!(leftover_pid("alice.lock.123.4"), Some(123));
        assert_eq!(leftover_pid("a.b.lock.1.0"), Some(1));
        for name in [
            "alice.lock",
            "alice.lock.123",
            "alice.lock.x.4",
            ".lock.1.2",
            "alice.123.4",
            "alice.lock.0.1",
        ] {
            assert_eq!(leftover_pid(name), None, "{name}");
        }
    }

    #[test]
    fn a_lock_without_a_pid_is_stale_only_when_old() {
        let dir = TempDir::new("mbox");
        let lock = lock_path(&mailbox(&dir));
        fs::write(&lock, "").unwrap();
        let quick = MboxSettings {
            lock_timeout: Duration::from_millis(100),
            ..settings()
        };
        let err = append_body(&mailbox(&dir), &quick, &mut &b"x"[..], 1).unwrap_err();
        assert_eq!(err.status.to_string(), "4.2.0");
        let old = std::time::SystemTime::now() - Duration::from_secs(600);
        File::options()
            .write(true)
            .open(&lock)
            .unwrap()
            .set_modified(old)
            .unwrap();
        deliver_with(&mailbox(&dir), &quick, b"x").unwrap();
    }

    #[test]
    fn an_fcntl_lock_held_elsewhere_is_waited_for() {
        let dir = TempDir::new("mbox");
        fs::write(mailbox(&dir), "").unwrap();
        let script = "import fcntl, sys, time\n\
                      f = open(sys.argv[1], 'a')\n\
                      fcntl.lockf(f, fcntl.LOCK_EX)\n\
                      print('locked', flush=True)\n\
                      time.sleep(1)\n";
        let mut holder = Command::new(tool("python3", "python3"))
            .args(["-c", script])
            .arg(mailbox(&dir))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut said = String::new();
        BufReader::new(holder.stdout.take().unwrap())
            .read_line(&mut said)
            .unwrap();
        assert_eq!(said, "locked\n");
        let quick = MboxSettings {
            lock_timeout: Duration::from_millis(200),
            ..settings()
        };
        let err = deliver_with(&mailbox(&dir), &quick, b"x").unwrap_err();
        assert!(
            err.message
                .contains(&format!("fcntl lock held by process {}", holder.id())),
            "{}",
            err.message
        );
        let started = Instant::now();
        deliver(&mailbox(&dir), b"x").unwrap();
        assert!(started.elapsed() >= Duration::from_millis(300));
        holder.wait().unwrap();
        assert_eq!(fs::read_to_string(mailbox(&dir)).unwrap(), expected("x\n"));
    }

    #[test]
    fn flock_is_taken_when_configured() {
        let dir = TempDir::new("mbox");
        fs::write(mailbox(&dir), "").unwrap();
        let held =
            Flock::lock(File::open(mailbox(&dir)).unwrap(), FlockArg::LockExclusive).unwrap();
        let with_flock = MboxSettings {
            flock: true,
            lock_timeout: Duration::from_millis(100),
            ..settings()
        };
        let err = deliver_with(&mailbox(&dir), &with_flock, b"x").unwrap_err();
        assert!(err.message.contains("flock held"), "{}", err.message);
        drop(held);
        deliver_with(&mailbox(&dir), &with_flock, b"x").unwrap();
    }

    #[test]
    fn a_symlink_at_the_mailbox_path_is_refused() {
        let dir = TempDir::new("mbox");
        let target = dir.0.join("target");
        fs::write(&target, "keep").unwrap();
        std::os::unix::fs::symlink(&target, mailbox(&dir)).unwrap();
        let err = deliver(&mailbox(&dir), b"x").unwrap_err();
        assert_eq!(
            (err.is_permanent(), err.status.to_string().as_str()),
            (false, "4.3.0")
        );
        assert!(err.message.contains("symbolic link"), "{}", err.message);
        assert_eq!(fs::read_to_string(&target).unwrap(), "keep");
    }

    #[test]
    fn a_hard_linked_mailbox_is_refused() {
        let dir = TempDir::new("mbox");
        fs::write(mailbox(&dir), "keep").unwrap();
        fs::hard_link(mailbox(&dir), dir.0.join("other")).unwrap();
        let err = deliver(&mailbox(&dir), b"x").unwrap_err();
        assert_eq!(
            (err.is_permanent(), err.status.to_string().as_str()),
            (false, "4.3.0")
        );
        assert!(err.message.contains("2 hard links"), "{}", err.message);
        assert_eq!(fs::read_to_string(mailbox(&dir)).unwrap(), "keep");
    }

    #[test]
    fn a_full_mailbox_fails_permanently_and_stays_unchanged() {
        let dir = TempDir::new("mbox");
        deliver(&mailbox(&dir), b"first").unwrap();
        let before = fs::read(mailbox(&dir)).unwrap();
        let small = MboxSettings {
            max_mailbox_size: 1000,
            ..settings()
        };
        let err = deliver_with(&mailbox(&dir), &small, &[b'x'; 900]).unwrap_err();
        assert_eq!(
            (err.is_permanent(), err.status.to_string().as_str()),
            (true, "5.2.2")
        );
        assert_eq!(fs::read(mailbox(&dir)).unwrap(), before);
        deliver_with(&mailbox(&dir), &small, b"fits").unwrap();
    }

    /// Yields `good` bytes of text, then fails (or panics).
    struct Failing {
        good: usize,
        panic: bool,
    }

    impl Read for Failing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.good == 0 {
                assert!(!self.panic, "reader panics");
                return Err(io::Error::other("spool disk on fire"));
            }
            let n = buf.len().min(self.good);
            buf[..n].fill(b'y');
            self.good -= n;
            Ok(n)
        }
    }

    #[test]
    fn a_failure_halfway_truncates_back() {
        let dir = TempDir::new("mbox");
        deliver(&mailbox(&dir), b"first\r\n").unwrap();
        let before = fs::read(mailbox(&dir)).unwrap();
        // More than the 64 KiB write buffer, so part of the message has reached the file when the reader fails.
        let mut body = BufReader::new(Failing {
            good: 200_000,
            panic: false,
        });
        let err = append_body(&mailbox(&dir), &settings(), &mut body, 400_000).unwrap_err();
        assert_eq!(
            (err.is_permanent(), err.status.to_string().as_str()),
            (false, "4.3.0")
        );
        assert!(
            err.message.contains("spool disk on fire"),
            "{}",
            err.message
        );
        assert_eq!(fs::read(mailbox(&dir)).unwrap(), before);
        assert!(!lock_path(&mailbox(&dir)).exists());
    }

    #[test]
    fn a_panic_halfway_truncates_back_and_unlocks() {
        let dir = TempDir::new("mbox");
        deliver(&mailbox(&dir), b"first\r\n").unwrap();
        let before = fs::read(mailbox(&dir)).unwrap();
        let panicked = std::panic::catch_unwind(|| {
            let mut body = BufReader::new(Failing {
                good: 200_000,
                panic: true,
            });
            append_body(&mailbox(&dir), &settings(), &mut body, 400_000)
        });
        assert!(panicked.is_err());
        assert_eq!(fs::read(mailbox(&dir)).unwrap(), before);
        assert!(!lock_path(&mailbox(&dir)).exists());
    }

    #[test]
    fn python_reads_the_mailbox() {
        let dir = TempDir::new("mbox");
        let bodies = [
            "Subject: one\r\n\r\nFrom the start\r\n>From quoted\r\n",
            "Subject: two\r\n\r\nno final newline",
            "Subject: three\r\n\r\n\r\nFrom \r\n",
        ];
        for body in bodies {
            deliver(&mailbox(&dir), body.as_bytes()).unwrap();
        }
        let script =
            "import mailbox, sys\nfor m in mailbox.mbox(sys.argv[1]): print(m['Subject'])\n";
        let out = Command::new(tool("python3", "python3"))
            .args(["-c", script])
            .arg(mailbox(&dir))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "one\ntwo\nthree\n");
    }

    #[test]
    fn errors_are_classified_like_postfix() {
        let path = Path::new("/var/mail/alice");
        let status = |errno| {
            let err = MboxError::io(path, "writing", &io::Error::from_raw_os_error(errno));
            (err.is_permanent(), err.status.to_string())
        };
        assert_eq!(status(libc::ENOSPC), (false, "4.3.1".to_string()));
        assert_eq!(status(libc::EDQUOT), (true, "5.2.2".to_string()));
        assert_eq!(status(libc::EIO), (false, "4.3.0".to_string()));
        let err = MboxError::io(path, "writing", &io::Error::from_raw_os_error(libc::EIO));
        assert!(
            err.to_string()
                .starts_with("4.3.0 /var/mail/alice: writing: "),
            "{err}"
        );
    }

    /// The length of `body` with the `trace` headers in the mailbox.
    fn len_of(path: &Path, trace: &[u8], body: &[u8]) -> u64 {
        len_in_mbox(path, "bob@example.org", arrival(), trace, &mut &body[..]).unwrap()
    }

    fn id_trace(id: &str) -> Vec<u8> {
        format!("Received: from x\r\n\tby mx.test (Postel) with ESMTP id {id}; now\r\n")
            .into_bytes()
    }

    #[test]
    fn messages_appended_together_are_announced_in_order_then_written_with_one_sync() {
        let dir = TempDir::new("mbox");
        let path = mailbox(&dir);
        deliver(&path, b"Subject: first\r\n\r\nfirst\r\n").unwrap();
        let start = fs::metadata(&path).unwrap().len();
        let traces: Vec<Vec<u8>> = ["Q1", "Q2", "Q3"].into_iter().map(id_trace).collect();
        let bodies: [&[u8]; 3] = [
            b"Subject: a\r\n\r\nFrom a\r\n",
            b"Subject: b\r\n\r\nb",
            b"Subject: c\r\n\r\n",
        ];
        let lens: Vec<u64> = (0..3)
            .map(|n| len_of(&path, &traces[n], bodies[n]))
            .collect();
        let messages: Vec<Message> = ["Q1", "Q2", "Q3"]
            .iter()
            .enumerate()
            .map(|(n, id)| message(id, &traces[n], lens[n]))
            .collect();
        let (results, announced) = append_bodies(
            &path,
            &settings(),
            &messages,
            &mut [
                &mut &bodies[0][..],
                &mut &bodies[1][..],
                &mut &bodies[2][..],
            ],
        );
        let offsets = [start, start + lens[0], start + lens[0] + lens[1]];
        assert_eq!(
            announced,
            [(0, offsets[0]), (1, offsets[1]), (2, offsets[2])]
        );
        assert_eq!(results, offsets.map(|o| Ok(Appended::At(o))));
        assert_eq!(fs::metadata(&path).unwrap().len(), offsets[2] + lens[2]);
        let script =
            "import mailbox, sys\nfor m in mailbox.mbox(sys.argv[1]): print(m['Subject'])\n";
        let out = Command::new(tool("python3", "python3"))
            .args(["-c", script])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "first\na\nb\nc\n");
    }

    #[test]
    fn one_message_that_fails_leaves_the_mailbox_as_it_was_and_names_itself_to_the_others() {
        let dir = TempDir::new("mbox");
        let path = mailbox(&dir);
        deliver(&path, b"first\r\n").unwrap();
        let before = fs::read(&path).unwrap();
        let len = len_of(&path, TRACE, b"x\r\n");
        let messages = [
            message("Q1", TRACE, len),
            message("Q2", TRACE, len + 1),
            message("Q3", TRACE, len),
        ];
        let (results, announced) = append_bodies(
            &path,
            &settings(),
            &messages,
            &mut [&mut &b"x\r\n"[..], &mut &b"x\r\n"[..], &mut &b"x\r\n"[..]],
        );
        assert_eq!(announced.len(), 3);
        assert_eq!(fs::read(&path).unwrap(), before);
        let errors: Vec<String> = results
            .into_iter()
            .map(|r| r.unwrap_err().message)
            .collect();
        assert!(errors[1].contains("not the"), "{}", errors[1]);
        for n in [0, 2] {
            assert!(
                errors[n].contains("not appended: the append of Q2 with it failed"),
                "{}",
                errors[n]
            );
        }
        // A size limit leaves out only the message that does not fit.
        let small = MboxSettings {
            max_mailbox_size: before.len() as u64 + 2 * len,
            ..settings()
        };
        let big = len_of(&path, TRACE, &[b'x'; 100]);
        let messages = [
            message("Q1", TRACE, len),
            message("Q2", TRACE, big),
            message("Q3", TRACE, len),
        ];
        let (results, _) = append_bodies(
            &path,
            &small,
            &messages,
            &mut [
                &mut &b"x\r\n"[..],
                &mut &[b'x'; 100][..],
                &mut &b"x\r\n"[..],
            ],
        );
        let start = before.len() as u64;
        assert_eq!(results[0], Ok(Appended::At(start)));
        assert!(results[1].as_ref().unwrap_err().is_permanent());
        assert_eq!(results[2], Ok(Appended::At(start + len)));
    }

    #[test]
    fn an_append_announced_before_a_crash_is_found_whole_or_cut_off() {
        let dir = TempDir::new("mbox");
        let path = mailbox(&dir);
        deliver(&path, b"Subject: first\r\n\r\nfirst\r\n").unwrap();
        let body = b"Subject: second\r\n\r\nFrom here\r\nno final newline";
        let trace = id_trace("Q1");
        let len = len_of(&path, &trace, body);
        let (results, announced) = append_bodies(
            &path,
            &settings(),
            &[message("Q1", &trace, len)],
            &mut [&mut &body[..]],
        );
        let offset = announced[0].1;
        assert_eq!(results, [Ok(Appended::At(offset))]);
        assert_eq!(
            fs::metadata(&path).unwrap().len(),
            offset + len,
            "the counted length is what append writes"
        );
        let after_crash = |id, announced_at| {
            let trace = id_trace(id);
            let retry = Message {
                announced: Some((announced_at, len)),
                ..message(id, &trace, len)
            };
            let (mut results, _) =
                append_bodies(&path, &settings(), &[retry], &mut [&mut &body[..]]);
            let size = fs::metadata(&path).unwrap().len();
            (results.pop().unwrap().unwrap(), size)
        };
        let whole = offset + len;
        assert_eq!(after_crash("Q1", offset), (Appended::FoundWhole, whole));
        // Another message's id where this one was announced: appended again.
        assert_eq!(
            after_crash("Q2", offset),
            (Appended::At(whole), whole + len)
        );
        set_len(&path, whole);
        assert_eq!(
            after_crash("Q1", whole),
            (Appended::At(whole), whole + len),
            "nothing there"
        );
        // A crash in the middle of the write: the torn copy is cut off, a whole one appended.
        set_len(&path, whole - 10);
        assert_eq!(after_crash("Q1", offset), (Appended::At(offset), whole));
    }

    fn set_len(path: &Path, len: u64) {
        OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(len)
            .unwrap();
    }

    #[test]
    fn a_crash_that_tore_a_batch_is_repaired_before_anything_follows_it() {
        let dir = TempDir::new("mbox");
        let path = mailbox(&dir);
        deliver(&path, b"Subject: first\r\n\r\nfirst\r\n").unwrap();
        let before = fs::read(&path).unwrap();
        let ids = ["Q1", "Q2", "Q3"];
        let traces: Vec<Vec<u8>> = ids.into_iter().map(id_trace).collect();
        let body = b"Subject: x\r\n\r\nx\r\n";
        let len = len_of(&path, &traces[0], body);
        let messages: Vec<Message> = (0..3).map(|n| message(ids[n], &traces[n], len)).collect();
        let (_, announced) = append_bodies(
            &path,
            &settings(),
            &messages,
            &mut [&mut &body[..], &mut &body[..], &mut &body[..]],
        );
        // The crash came in the middle of Q2: Q1 is whole, Q2 torn, Q3 never written.
        let q2 = announced[1].1;
        set_len(&path, q2 + len / 2);
        for (n, &(_, offset)) in announced.iter().enumerate() {
            let crashed = Message {
                announced: Some((offset, len)),
                ..message(ids[n], &traces[n], len)
            };
            expect_after_crash(&path, &crashed);
        }
        // New mail comes first: it goes after Q1, where the torn Q2 was.
        let trace = id_trace("Q4");
        let (results, _) = append_bodies(
            &path,
            &settings(),
            &[message("Q4", &trace, len)],
            &mut [&mut &body[..]],
        );
        assert_eq!(results, [Ok(Appended::At(q2))]);
        // Q3's retry, then Q2's and Q1's: each appears once, Q1 where it was.
        let retries: Vec<Message> = [2, 1, 0]
            .into_iter()
            .map(|n| Message {
                announced: Some((announced[n].1, len)),
                ..message(ids[n], &traces[n], len)
            })
            .collect();
        let (results, _) = append_bodies(
            &path,
            &settings(),
            &retries,
            &mut [&mut &body[..], &mut &body[..], &mut &body[..]],
        );
        assert_eq!(
            results,
            [
                Ok(Appended::At(q2 + len)),
                Ok(Appended::At(q2 + 2 * len)),
                Ok(Appended::FoundWhole)
            ]
        );
        let content = fs::read(&path).unwrap();
        assert_eq!(content.len(), before.len() + 4 * len as usize);
        let text = String::from_utf8_lossy(&content);
        for id in ["Q1", "Q2", "Q3", "Q4"] {
            assert_eq!(
                text.matches(&format!(" id {id};")).count(),
                1,
                "{id} in {text}"
            );
        }
    }
}
