//! The spool: the queue of accepted messages on disk, how a message gets into it durably, and how it
//! is read back (the format is in doc/spool.md).
//!
//! A session thread calls [`Spool::new_message`] when DATA starts, [`MessageWriter::write`] for each
//! piece of the body and [`Spool::commit`] at the end of data, and answers 250 only once `commit`
//! returns. A small message goes to the group-commit thread, which appends the records of all the
//! sessions committing at that moment to one segment file with one `fdatasync`; a large one (and
//! every message when that thread is not running) is streamed into a file of its own in tmp/ and
//! renamed into queue/.

mod envelope;
mod group;
mod id;
mod record;
mod scan;
mod writer;

#[cfg(test)]
mod tests;

use std::error::Error;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub use envelope::Envelope;
pub use id::{InvalidQueueId, QueueId};
pub use writer::MessageWriter;

use group::GroupCommit;
use record::HEADER_LEN;
use writer::{Body, Sealed, TmpFile};

/// The spool directory. Shared by all session threads.
pub struct Spool {
    dir: PathBuf,
    tmp: PathBuf,
    queue: PathBuf,
    /// The group-commit thread, once started.
    group: Option<GroupCommit>,
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
}

/// A message in the queue: its envelope and where its body is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub envelope: Envelope,
    /// The body's length in bytes.
    pub len: u64,
    /// The queue file that holds the message (a segment may hold others too).
    pub file: PathBuf,
    /// Where the body starts in `file`.
    pub body_offset: u64,
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
            tmp,
            queue,
            group: None,
        })
    }

    /// Takes the lock that the process owning the queue holds (flock on `lock`, without waiting).
    pub fn lock(&self) -> Result<SpoolLock, SpoolError> {
        let path = self.dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path);
        let file = file.map_err(SpoolError::io(&path))?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(SpoolLock { _lock: lock }),
            Err((_, Errno::EWOULDBLOCK)) => Err(SpoolError::Busy),
            Err((_, errno)) => Err(SpoolError::Io {
                path,
                source: errno.into(),
            }),
        }
    }

    /// Reads every record in queue/ and checks its checksum. A torn tail (what a crash during an
    /// append leaves) ends the reading of its file; files that are not queue files are left alone.
    /// With `repair`, which only the holder of the lock may ask for, it also empties tmp/ and cuts
    /// torn tails off. Every problem is reported in [`Scan::problems`].
    pub fn scan(&self, repair: bool) -> Result<Scan, SpoolError> {
        scan::scan(&self.tmp, &self.queue, repair)
    }

    /// Starts the group-commit thread, which [`commit`](Spool::commit) then uses for small messages.
    pub fn start_group_commit(&mut self) -> Result<(), SpoolError> {
        self.group = Some(GroupCommit::start(&self.queue)?);
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
            body_offset: offset + body_start,
        })
    }

    /// Moves a record from tmp/ to `queue/<id>`, durably.
    fn commit_file(&self, id: &QueueId, head: &[u8], tmp: TmpFile) -> Result<PathBuf, SpoolError> {
        let target = self.queue.join(id.as_str());
        tmp.persist(&head[..HEADER_LEN], &target)?;
        sync_dir(&self.queue).map_err(SpoolError::io(&self.queue))?;
        Ok(target)
    }

    /// The body of a queued message.
    pub fn read_body(&self, queued: &Queued) -> Result<impl Read + use<>, SpoolError> {
        let mut file = File::open(&queued.file).map_err(SpoolError::io(&queued.file))?;
        if file.metadata().map_err(SpoolError::io(&queued.file))?.len()
            < queued.body_offset + queued.len
        {
            return Err(SpoolError::Corrupt {
                path: queued.file.clone(),
                offset: queued.body_offset,
                what: "the file ends before the message body does".to_string(),
            });
        }
        file.seek(SeekFrom::Start(queued.body_offset))
            .map_err(SpoolError::io(&queued.file))?;
        Ok(file.take(queued.len))
    }
}

/// Makes a directory's entries durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
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
