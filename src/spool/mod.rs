//! The spool: the queue of accepted messages on disk, how a message gets into it durably, and how it
//! is read back (the format is in doc/spool.md).
//!
//! A session thread calls [`Spool::new_message`] when DATA starts, [`MessageWriter::write`] for each
//! piece of the body and [`Spool::commit`] at the end of data, and answers 250 only once `commit`
//! returns. A small message goes to the group-commit thread, which appends the records of all the
//! sessions committing at that moment to one segment file with one `fdatasync`; a large one (and
//! every message when that thread is not running) is streamed into a file of its own in tmp/ and
//! renamed into queue/.
//!
//! A delivery worker calls [`Spool::record`] with the results of each attempt and [`Spool::finish`]
//! once nothing is left to do; both return once their entries are durable in the journal. The
//! spool counts the live records of each queue file and deletes the file when the last one is
//! finished; a repairing [`Spool::scan`] at start-up finishes that work and compacts the journal.

mod envelope;
mod erase;
pub mod format;
mod group;
pub mod headers;
mod id;
pub(crate) mod journal;
mod live;
pub(crate) mod record;
mod room;
mod scan;
mod state;
mod writer;

#[cfg(test)]
mod delivery_tests;
#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::error::Error;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub use envelope::Envelope;
pub use headers::HeaderSummary;
pub use id::{InvalidQueueId, QueueId};
pub use room::has_room;
pub use state::{DeliveryState, Outcome, RecipientResult};
pub use writer::MessageWriter;

use group::GroupCommit;
use journal::Journal;
use live::LiveFiles;
use record::HEADER_LEN;
use state::Entry;
use writer::{Body, Sealed, TmpFile};

/// The spool directory. Shared by all session threads and delivery workers.
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    queue: PathBuf,
    /// The group-commit thread, once started.
    group: Option<GroupCommit>,
    /// The delivery results and finished messages.
    journal: Journal,
    /// Which queue files this process knows and how many of their messages are live.
    live: Arc<LiveFiles>,
}

/// What went wrong in the spool; every variant but `Busy` and `NoRecipients` names the file.
#[derive(Debug)]
pub enum SpoolError {
    /// Another process holds the spool's lock.
    Busy,
    /// A file operation failed.
    Io { path: PathBuf, source: io::Error },
    /// A queue file does not hold what it should.
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
    /// The message has no recipients, so there is nothing to queue.
    NoRecipients,
    /// A queue file or the journal is in a format version this Postel does not read.
    Format { path: PathBuf, version: u32 },
}

/// One message's share of [`Spool::record_attempts`].
pub struct AttemptRecord<'a> {
    pub id: &'a QueueId,
    pub results: &'a [RecipientResult],
    pub finished: bool,
}

/// A message in the queue: its envelope and where its body is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub envelope: Envelope,
    /// The body's length in bytes.
    pub len: u64,
    /// The queue file that holds the message (a segment may hold others too).
    pub file: PathBuf,
    /// Where the message's record starts in `file` (see [`Spool::read_queued`]).
    pub record_offset: u64,
    /// Where the body starts in `file`.
    pub body_offset: u64,
    /// Its deliveries so far (nothing for a message just committed).
    pub state: DeliveryState,
}

/// What [`Spool::scan`] found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Every sound record, file by file in name order (roughly arrival order), each file's in order.
    pub messages: Vec<Queued>,
    /// One line per problem, naming the file and the byte offset.
    pub problems: Vec<String>,
}

/// The spool's lock; dropping it releases the lock.
#[derive(Debug)]
pub struct SpoolLock {
    _lock: Flock<File>,
}

impl Spool {
    /// Opens the spool in `dir`, creating it, `tmp/` and `queue/` if missing.
    pub fn open(dir: &Path) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(SpoolError::io(dir))?;
        let tmp = dir.join("tmp");
        let queue = dir.join("queue");
        let mut created = false;
        for sub in [&tmp, &queue] {
            match fs::create_dir(sub) {
                Ok(()) => created = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(SpoolError::io(sub)(e)),
            }
        }
        if created {
            sync_dir(dir).map_err(SpoolError::io(dir))?;
        }
        Ok(Spool {
            dir: dir.to_path_buf(),
            journal: Journal::new(dir),
            live: Arc::new(LiveFiles::new(&queue)),
            tmp,
            queue,
            group: None,
        })
    }

    /// Takes the lock that the process owning the queue holds (flock on `lock`, without waiting),
    /// and writes this process's PID into the lock file.
    pub fn lock(&self) -> Result<SpoolLock, SpoolError> {
        let path = self.dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path);
        let file = file.map_err(SpoolError::io(&path))?;
        let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((_, Errno::EWOULDBLOCK)) => return Err(SpoolError::Busy),
            Err((_, errno)) => {
                return Err(SpoolError::Io {
                    path,
                    source: errno.into(),
                });
            }
        };
        // The PID goes over the old one first and the file is cut after it, so that a reader always
        // finds a whole PID on the first line.
        let pid = format!("{}\n", std::process::id());
        lock.write_all_at(pid.as_bytes(), 0)
            .and_then(|()| lock.set_len(pid.len() as u64))
            .map_err(SpoolError::io(&path))?;
        Ok(SpoolLock { _lock: lock })
    }

    /// The PID of the process that holds the spool lock (the running daemon); None if the lock is
    /// free, or if its holder has not written a PID within a tenth of a second. The lock is probed
    /// by taking it shared for an instant, so a `lock()` at that very instant fails as Busy. The
    /// lock is per open file: a second `Spool` in the holder's own process sees it held too.
    pub fn owner(&self) -> Option<u32> {
        let path = self.dir.join("lock");
        for _ in 0..20 {
            let file = File::open(&path).ok()?;
            match Flock::lock(file, FlockArg::LockSharedNonblock) {
                Err((file, Errno::EWOULDBLOCK)) => {
                    let mut text = String::new();
                    let _ = (&file).take(32).read_to_string(&mut text);
                    let pid = text.lines().next().and_then(|line| line.parse().ok());
                    if pid.is_some() {
                        return pid;
                    }
                }
                Ok(_free) => return None,
                Err(_) => return None,
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    /// Reads every record in queue/ and checks its checksum, and reads the journal. A torn tail
    /// (what a crash during an append leaves) ends the reading of its file; files that are not queue
    /// files are left alone. Finished messages are left out; each other one comes with its
    /// delivery state. With `repair`, which only the holder of the lock may ask for (at start-up),
    /// it also empties tmp/ (but for files that other programs are still writing), cuts torn tails
    /// off, deletes the queue files whose messages are all finished (but for the segment the
    /// group-commit thread is filling), and compacts the journal. Every problem is reported in
    /// [`Scan::problems`].
    pub fn scan(&self, repair: bool) -> Result<Scan, SpoolError> {
        let journal = self.journal.path();
        let replay = Journal::read(journal).map_err(SpoolError::io(journal))?;
        if !format::readable(replay.version) {
            return Err(SpoolError::Format {
                path: journal.to_path_buf(),
                version: replay.version,
            });
        }
        let mut found = scan::scan(&self.tmp, &self.queue, repair)?;
        if let Some((path, version)) = found.unreadable {
            return Err(SpoolError::Format { path, version });
        }
        let mut scan = found.scan;
        scan.messages.retain_mut(
            |message| match replay.messages.get(&message.envelope.id.key()) {
                Some(replayed) if replayed.done => false,
                Some(replayed) => {
                    message.state = replayed.state.clone();
                    true
                }
                None => true,
            },
        );
        for file in &mut found.files {
            for (id, done) in &mut file.records {
                *done = replay.done(id);
            }
        }
        if repair {
            self.delete_finished(&mut found.files)?;
        }
        self.live.load(found.files, found.foreign, repair);
        let cut = if repair { " cut off" } else { "" };
        for (offset, what) in &replay.bad {
            scan.problems.push(format!(
                "{}: bad entry at byte {offset} ({what}); skipped",
                journal.display()
            ));
        }
        if let Some((offset, what)) = &replay.torn {
            scan.problems.push(format!(
                "{}: torn entry at byte {offset}{cut} ({what})",
                journal.display()
            ));
        }
        // Compacting needs room for a new journal; on a full disk the server starts with the old one
        // (and can deliver, which frees the disk) rather than not at all.
        if repair && let Err(e) = self.journal.compact(replay.messages, &self.live) {
            log::warn!("{}: not compacted, kept as it is: {e}", journal.display());
        }
        Ok(scan)
    }

    /// Deletes the scanned files whose messages are all finished, durably, and leaves them out of
    /// `files`; the segment being appended to is left out too (the bookkeeping keeps its own
    /// account of it).
    fn delete_finished(&self, files: &mut Vec<live::FoundFile>) -> Result<(), SpoolError> {
        files.retain(|file| !self.live.appending(&file.path));
        let mut deleted = false;
        for file in files.iter() {
            if !file.pinned && file.records.iter().all(|(_, done)| *done) {
                match fs::remove_file(&file.path) {
                    Ok(()) => deleted = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SpoolError::io(&file.path)(e)),
                }
            }
        }
        files.retain(|file| file.pinned || file.records.iter().any(|(_, done)| !done));
        if deleted {
            sync_dir(&self.queue).map_err(SpoolError::io(&self.queue))?;
        }
        Ok(())
    }

    /// The messages in queue files that appeared since `known` was known: files another program
    /// (`postel sendmail`, `postel inetd`) committed while this process holds the lock. Files named
    /// in `known`, and every file this spool committed, scanned or is appending to, are skipped;
    /// nothing is repaired. The messages come with no delivery state (only the lock holder records
    /// any, and it has not seen them).
    pub fn pick_up(&self, known: &HashSet<PathBuf>) -> Result<Scan, SpoolError> {
        let found = scan::scan_some(&self.queue, |path| {
            !known.contains(path) && !self.live.knows(path)
        })?;
        self.live.load(found.files, found.foreign, false);
        Ok(found.scan)
    }

    /// Starts the group-commit thread, which [`commit`](Spool::commit) then uses for small messages.
    /// Each segment it starts takes new messages for `segment_age` at most.
    pub fn start_group_commit(&mut self, segment_age: Duration) -> Result<(), SpoolError> {
        let live = Arc::clone(&self.live);
        self.group = Some(GroupCommit::start(&self.queue, live, segment_age)?);
        Ok(())
    }

    /// Records the results of one delivery attempt of `id` (counted as one attempt), durably:
    /// returns once they are on disk. Only the holder of the lock may record.
    pub fn record(&self, id: &QueueId, results: &[RecipientResult]) -> Result<(), SpoolError> {
        let mut entries = Vec::with_capacity(128 * (results.len() + 1));
        for result in results {
            state::encode_result(id, &result.recipient, &result.outcome, &mut entries);
        }
        state::encode(id, &Entry::Attempts(1), &mut entries);
        self.journal.append(&entries, &self.live)
    }

    /// Records what delivery attempts leave to record, in one durable write: for each, its `results`,
    /// `attempts 1` when one of them is not a delivery, and, when `finished`, that the message is finished (see
    /// [`finish`](Spool::finish)). Only the holder of the lock may record.
    pub fn record_attempts(&self, attempts: &[AttemptRecord<'_>]) -> Result<(), SpoolError> {
        // Each result's line, and `attempts` and `done` at most.
        let lines: usize = attempts.iter().map(|a| a.results.len() + 2).sum();
        let mut entries = Vec::with_capacity(128 * lines);
        for attempt in attempts {
            for result in attempt.results {
                state::encode_result(attempt.id, &result.recipient, &result.outcome, &mut entries);
            }
            if attempt
                .results
                .iter()
                .any(|r| r.outcome != Outcome::Delivered)
            {
                state::encode(attempt.id, &Entry::Attempts(1), &mut entries);
            }
            if attempt.finished {
                state::encode(attempt.id, &Entry::Done, &mut entries);
            }
        }
        if entries.is_empty() {
            return Ok(());
        }
        self.journal.append(&entries, &self.live)?;
        for attempt in attempts.iter().filter(|a| a.finished) {
            self.live.finish(attempt.id);
        }
        Ok(())
    }

    /// Records recipients' deliveries at once, in one write, without counting an attempt: a crash of the process
    /// later in the same attempt must not deliver to them again. The write does not wait for the disk (the next
    /// durable record, at the latest the attempt's own, takes it there): it is for deliveries that cannot be taken
    /// back, to another server or a command, which a power loss just before would at worst make twice, never lose
    /// (RFC 5321, section 6.1). Only the holder of the lock may record.
    pub fn record_delivered(
        &self,
        id: &QueueId,
        recipients: &[impl AsRef<str>],
    ) -> Result<(), SpoolError> {
        if recipients.is_empty() {
            return Ok(());
        }
        let mut entries = Vec::with_capacity(128 * recipients.len());
        for recipient in recipients {
            state::encode_result(id, recipient.as_ref(), &Outcome::Delivered, &mut entries);
        }
        self.journal.append_unsynced(&entries)
    }

    /// Records, durably, in one write and without counting an attempt, that appends to recipients' mailboxes are
    /// about to begin: for each, the message, the recipient, where and how long. After a crash,
    /// [`Outcome::Appending`] tells whether each happened.
    pub fn record_appending(
        &self,
        appends: &[(&QueueId, &str, u64, u64)],
    ) -> Result<(), SpoolError> {
        let mut entries = Vec::with_capacity(128 * appends.len());
        for &(id, recipient, offset, len) in appends {
            state::encode_result(
                id,
                recipient,
                &Outcome::Appending { offset, len },
                &mut entries,
            );
        }
        self.journal.append(&entries, &self.live)
    }

    /// Marks the message finished (every recipient delivered or failed, or removed by the admin),
    /// durably; it will not be scanned again. Its queue file is deleted once every message in it is
    /// finished and nothing appends to it any more (a segment the group-commit thread is still
    /// filling goes when it is full, or at the next start-up). Only the holder of the lock may
    /// finish messages.
    pub fn finish(&self, id: &QueueId) -> Result<(), SpoolError> {
        let mut entry = Vec::with_capacity(64);
        state::encode(id, &Entry::Done, &mut entry);
        self.journal.append(&entry, &self.live)?;
        self.live.finish(id);
        Ok(())
    }

    /// Drops a message the admin removed, finishing it, so that nothing of it stays readable in the spool: its
    /// record is erased in place first (see doc/spool.md), unless it is alone in a file that goes at once, and
    /// the journal is compacted after, which forgets its recipients. Only the holder of the lock may remove
    /// messages, and never one being delivered; without a repairing scan behind it, the journal keeps its entries
    /// until the next start-up.
    pub fn remove(&self, message: &Queued) -> Result<(), SpoolError> {
        let id = &message.envelope.id;
        if !self.live.alone(id) {
            erase::erase(&message.file, message.body_offset)
                .map_err(SpoolError::io(&message.file))?;
        }
        self.finish(id)?;
        // The message is removed either way; a journal that cannot be compacted now (a full disk) is at the
        // next start-up.
        if let Err(e) = self.journal.compact_now(&self.live) {
            log::warn!("{id}: removed, but the journal keeps its entries for now: {e}");
        }
        Ok(())
    }

    /// Starts a message; the envelope gets its queue id and loses its control characters here.
    pub fn new_message(&self, envelope: Envelope) -> MessageWriter {
        MessageWriter::new(envelope, &self.tmp)
    }

    /// Puts the message in the queue, and returns once it is durable on disk. On error nothing of it
    /// is left in the queue.
    pub fn commit(&self, writer: MessageWriter) -> Result<Queued, SpoolError> {
        let Sealed {
            envelope,
            head,
            body,
            len,
            tmp_path,
        } = writer.seal()?;
        let body_start = head.len() as u64;
        let (file, offset) = match (body, &self.group) {
            (Body::Memory(bytes), Some(group)) => group.append(&envelope.id, head, bytes)?,
            (Body::Memory(bytes), None) => {
                let tmp = TmpFile::create(&tmp_path, &[&head, &bytes])?;
                (self.commit_file(&envelope.id, &head, tmp)?, 0)
            }
            (Body::File(tmp), _) => (self.commit_file(&envelope.id, &head, tmp)?, 0),
        };
        Ok(Queued {
            envelope,
            len,
            file,
            record_offset: offset,
            body_offset: offset + body_start,
            state: DeliveryState::default(),
        })
    }

    /// The message whose record starts at `offset` in the queue file `file`, read back from disk: a message the
    /// scheduler did not keep in memory while it waited (see delivery/scheduler.rs). Its delivery state is not
    /// read: this is for messages nothing has been recorded for. The body is not read (its checksum was checked
    /// when the message was committed or scanned).
    pub fn read_queued(&self, file: &Path, offset: u64) -> Result<Queued, SpoolError> {
        let corrupt = |what: &str| SpoolError::Corrupt {
            path: file.to_path_buf(),
            offset,
            what: what.to_string(),
        };
        let opened = File::open(file).map_err(SpoolError::io(file))?;
        let mut line = [0; HEADER_LEN];
        opened
            .read_exact_at(&mut line, offset)
            .map_err(SpoolError::io(file))?;
        let header = record::Header::parse(&line).map_err(corrupt)?;
        let mut text = vec![0; header.envelope_len as usize];
        opened
            .read_exact_at(&mut text, offset + HEADER_LEN as u64)
            .map_err(SpoolError::io(file))?;
        let envelope = Envelope::parse(&text).map_err(|what| corrupt(&what))?;
        Ok(Queued {
            envelope,
            len: header.body_len,
            file: file.to_path_buf(),
            record_offset: offset,
            body_offset: offset + HEADER_LEN as u64 + u64::from(header.envelope_len),
            state: DeliveryState::default(),
        })
    }

    /// Moves a record from tmp/ to `queue/<id>`, durably. The file is entered in the bookkeeping
    /// before it appears, so that [`pick_up`](Spool::pick_up) never takes it for another program's.
    fn commit_file(&self, id: &QueueId, head: &[u8], tmp: TmpFile) -> Result<PathBuf, SpoolError> {
        let target = self.queue.join(id.as_str());
        self.live.add(&target, [id]);
        let persisted = tmp.persist(&head[..HEADER_LEN], &target).and_then(|()| {
            sync_dir(&self.queue).map_err(|e| {
                // The sender is told the message was not queued, so it must not be delivered.
                let _ = fs::remove_file(&target);
                SpoolError::io(&self.queue)(e)
            })
        });
        if let Err(e) = persisted {
            self.live.forget(&target);
            return Err(e);
        }
        crate::step!(
            id.as_str(),
            "spooled in its own file {}: written, fsync, renamed into queue/, directory fsync",
            target.display()
        );
        Ok(target)
    }

    /// The body of a queued message.
    pub fn read_body(&self, queued: &Queued) -> Result<impl Read + use<>, SpoolError> {
        let mut file = OpenQueueFile::open(queued)?;
        file.file
            .seek(SeekFrom::Start(queued.body_offset))
            .map_err(SpoolError::io(&queued.file))?;
        Ok(file.file.take(queued.len))
    }

    /// Reads the whole body of a queued message into `out`, in place of what it held, through `open`: the queue
    /// file read last, which is kept open for the next read, since the messages read one after another (a
    /// mailbox job's) are mostly in one segment. A file is opened and its length checked only when the message
    /// is in another one or past the end seen so far.
    pub fn read_body_into(
        &self,
        queued: &Queued,
        open: &mut Option<OpenQueueFile>,
        out: &mut Vec<u8>,
    ) -> Result<(), SpoolError> {
        let file = match open.take() {
            Some(file) if file.path == queued.file && file.holds(queued) => file,
            _ => OpenQueueFile::open(queued)?,
        };
        out.clear();
        out.resize(queued.len as usize, 0);
        let read = file.file.read_exact_at(out, queued.body_offset);
        *open = Some(file);
        read.map_err(|source| match source.kind() {
            io::ErrorKind::UnexpectedEof => queued.cut_short(),
            _ => SpoolError::Io {
                path: queued.file.clone(),
                source,
            },
        })
    }
}

/// A queue file open for reading, and its length when it was opened (a segment only grows while it is open).
pub struct OpenQueueFile {
    path: PathBuf,
    file: File,
    len: u64,
}

impl OpenQueueFile {
    /// Opens the file that holds `queued`, which must reach to the end of its body.
    fn open(queued: &Queued) -> Result<OpenQueueFile, SpoolError> {
        let file = File::open(&queued.file).map_err(SpoolError::io(&queued.file))?;
        let len = file.metadata().map_err(SpoolError::io(&queued.file))?.len();
        let open = OpenQueueFile {
            path: queued.file.clone(),
            file,
            len,
        };
        if !open.holds(queued) {
            return Err(queued.cut_short());
        }
        Ok(open)
    }

    fn holds(&self, queued: &Queued) -> bool {
        self.len >= queued.body_offset + queued.len
    }
}

impl Queued {
    fn cut_short(&self) -> SpoolError {
        SpoolError::Corrupt {
            path: self.file.clone(),
            offset: self.body_offset,
            what: "the file ends before the message body does".to_string(),
        }
    }
}

/// Makes a directory's entries durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The same error again, for each of the callers that one failed write concerns.
fn copy_io_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

impl SpoolError {
    /// For `map_err`: an I/O error on `path`.
    fn io(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
        move |source| SpoolError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A copy of an error, for each of several callers one write failed for (an I/O error is copied by its code).
impl Clone for SpoolError {
    fn clone(&self) -> SpoolError {
        match self {
            SpoolError::Busy => SpoolError::Busy,
            SpoolError::Io { path, source } => SpoolError::Io {
                path: path.clone(),
                source: copy_io_error(source),
            },
            SpoolError::Corrupt { path, offset, what } => SpoolError::Corrupt {
                path: path.clone(),
                offset: *offset,
                what: what.clone(),
            },
            SpoolError::NoRecipients => SpoolError::NoRecipients,
            SpoolError::Format { path, version } => SpoolError::Format {
                path: path.clone(),
                version: *version,
            },
        }
    }
}

impl fmt::Display for SpoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpoolError::Busy => f.write_str("the spool is locked by another process"),
            SpoolError::Io { path, source } => write!(f, "{}: {source}", path.display()),
            SpoolError::Corrupt { path, offset, what } => {
                write!(f, "{}: at byte {offset}: {what}", path.display())
            }
            SpoolError::NoRecipients => {
                f.write_str("a message without recipients cannot be queued")
            }
            SpoolError::Format { path, version } => write!(
                f,
                "{}: spool format version {version}, which this Postel does not read (it reads \
                 versions {} to {}); let the Postel that wrote it deliver the queue first \
                 ('postel queue run' until 'postel queue list' shows nothing), or move the spool \
                 directory aside",
                path.display(),
                format::OLDEST_READABLE,
                format::VERSION,
            ),
        }
    }
}

impl Error for SpoolError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            SpoolError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
