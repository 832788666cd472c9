//! A message being taken in: its record in memory while small, streamed to a file in tmp/ once large.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};

use crc32fast::Hasher;
use nix::fcntl::{AT_FDCWD, Flock, FlockArg, RenameFlags, renameat2};

use super::SpoolError;
use super::envelope::Envelope;
use super::headers::HeaderSummary;
use super::id::QueueId;
use super::record::{HEADER_LEN, Header};
use crate::copy::{Copier, Format};

/// The largest body kept in memory; the write that takes a body past it moves the record to tmp/.
pub(super) const SMALL_LIMIT: usize = 128 * 1024;

/// A message whose body is being written; [`Spool::commit`](super::Spool::commit) puts it in the
/// queue. Dropping it without a commit removes whatever it wrote.
pub struct MessageWriter {
    envelope: Envelope,
    /// Once the record is in a file: its head there, a header placeholder and the envelope.
    head: Vec<u8>,
    body: Body,
    len: u64,
    /// The checksum of the body so far.
    body_crc: Hasher,
    /// While the body is in memory: the bytes it takes in an mbox file, counted as it arrives (the envelope's
    /// `mbox_size`).
    mbox: Option<Copier<io::Sink>>,
    /// The file the record moves to when it outgrows memory: `tmp/<id>`.
    tmp_path: PathBuf,
    /// The first error, returned by commit; writes after it are ignored.
    error: Option<SpoolError>,
}

/// Where a message's body is.
pub(super) enum Body {
    /// The whole body, at most [`SMALL_LIMIT`] bytes.
    Memory(Vec<u8>),
    /// The whole record, header placeholder and envelope included.
    File(TmpFile),
}

/// A finished message: its record's head with the real header, and its body.
pub(super) struct Sealed {
    pub envelope: Envelope,
    pub head: Vec<u8>,
    pub body: Body,
    pub len: u64,
    pub tmp_path: PathBuf,
}

impl MessageWriter {
    /// A writer for a message with this envelope, which gets its queue id now. `tmp` is the spool's
    /// tmp/ directory.
    pub(super) fn new(envelope: Envelope, tmp: &Path) -> MessageWriter {
        let envelope = Envelope {
            id: QueueId::next(),
            ..envelope.sanitized()
        };
        let declared = envelope.declared_size.unwrap_or(0).min(SMALL_LIMIT as u64);
        MessageWriter {
            tmp_path: tmp.join(envelope.id.as_str()),
            body: Body::Memory(Vec::with_capacity(declared as usize)),
            envelope,
            head: Vec::new(),
            len: 0,
            body_crc: Hasher::new(),
            mbox: Some(Copier::new(io::sink(), Format::MBOX)),
            error: None,
        }
    }

    #[cfg(test)]
    pub(super) fn memory_capacity(&self) -> Option<usize> {
        match &self.body {
            Body::Memory(bytes) => Some(bytes.capacity()),
            Body::File(_) => None,
        }
    }

    /// The queue id the message will have.
    pub fn id(&self) -> &QueueId {
        &self.envelope.id
    }

    /// Appends a piece of the body. An I/O error is remembered and returned by commit.
    pub fn write(&mut self, content: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.body_crc.update(content);
        self.len += content.len() as u64;
        let written = match &mut self.body {
            Body::Memory(bytes) if bytes.len() + content.len() <= SMALL_LIMIT => {
                bytes.extend_from_slice(content);
                if let Some(mbox) = &mut self.mbox {
                    // Counting into a sink cannot fail.
                    let _ = mbox.write(content);
                }
                Ok(())
            }
            Body::Memory(bytes) => {
                // The envelope goes to the file now, before the rest of the body: without the mbox count, and
                // with the header summary only if the header section has ended.
                self.mbox = None;
                self.envelope.headers = HeaderSummary::of(bytes, false);
                let head = record_head(&self.envelope);
                TmpFile::create(&self.tmp_path, &[&head, bytes, content]).map(|tmp| {
                    self.head = head;
                    self.body = Body::File(tmp);
                })
            }
            Body::File(tmp) => tmp.write(content),
        };
        if let Err(e) = written {
            self.body = Body::Memory(Vec::new());
            self.error = Some(e);
        }
    }

    /// Ends the body: fills in the header, or returns the error a write met.
    pub(super) fn seal(self) -> Result<Sealed, SpoolError> {
        let MessageWriter {
            mut envelope,
            mut head,
            body,
            len,
            body_crc,
            mbox,
            tmp_path,
            error,
        } = self;
        if let Some(e) = error {
            return Err(e);
        }
        if envelope.recipients.is_empty() {
            return Err(SpoolError::NoRecipients);
        }
        if let Body::Memory(bytes) = &body {
            envelope.headers = HeaderSummary::of(bytes, true);
            envelope.mbox_size = mbox
                .and_then(|mbox| mbox.finish().ok())
                .map(|(_, size)| size);
            head = record_head(&envelope);
        }
        let mut crc = Hasher::new();
        crc.update(&head[HEADER_LEN..]);
        crc.combine(&body_crc);
        let envelope_len = u32::try_from(head.len() - HEADER_LEN).map_err(|_| SpoolError::Io {
            path: tmp_path.clone(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "envelope longer than 4 GiB"),
        })?;
        let header = Header {
            envelope_len,
            body_len: len,
            crc: crc.finalize(),
        };
        head[..HEADER_LEN].copy_from_slice(&header.encode());
        Ok(Sealed {
            envelope,
            head,
            body,
            len,
            tmp_path,
        })
    }
}

/// The start of a record: room for its header line (written when it is sealed), then the envelope.
fn record_head(envelope: &Envelope) -> Vec<u8> {
    let text = envelope.encode();
    let mut head = Vec::with_capacity(HEADER_LEN + text.len());
    head.resize(HEADER_LEN, b' ');
    head.extend_from_slice(text.as_bytes());
    head
}

/// A record being written in tmp/; dropped before it is persisted, it removes itself.
pub(super) struct TmpFile {
    path: PathBuf,
    file: BufWriter<File>,
    /// An flock on the file while it is written, so that a repairing scan by another process
    /// leaves it alone.
    _lock: Flock<File>,
    /// Whether `path` still names this file (it does until the rename into the queue).
    in_tmp: bool,
}

impl TmpFile {
    /// Creates the file (it must not exist) and writes `parts` into it.
    pub(super) fn create(path: &Path, parts: &[&[u8]]) -> Result<TmpFile, SpoolError> {
        let (file, lock) = create_locked(path).map_err(SpoolError::io(path))?;
        let mut tmp = TmpFile {
            path: path.to_path_buf(),
            file: BufWriter::with_capacity(64 * 1024, file),
            _lock: lock,
            in_tmp: true,
        };
        for part in parts {
            tmp.write(part)?;
        }
        Ok(tmp)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<(), SpoolError> {
        self.file
            .write_all(bytes)
            .map_err(SpoolError::io(&self.path))
    }

    /// Writes the real header over the placeholder, makes the file durable, and renames it to
    /// `target`, which must not exist. The caller still has to sync the target's directory.
    pub(super) fn persist(mut self, header: &[u8], target: &Path) -> Result<(), SpoolError> {
        self.file.flush().map_err(SpoolError::io(&self.path))?;
        let file = self.file.get_ref();
        file.write_all_at(header, 0)
            .and_then(|()| file.sync_all())
            .map_err(SpoolError::io(&self.path))?;
        renameat2(
            AT_FDCWD,
            &self.path,
            AT_FDCWD,
            target,
            RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|errno| SpoolError::io(target)(errno.into()))?;
        self.in_tmp = false;
        Ok(())
    }
}

/// Creates `path` and takes its flock. A repairing scan in another process may open and remove the
/// file in the instant between the two (it takes an unlocked file in tmp/ for one a crash left), so
/// once the lock is held the file must still be the one at `path`; if it is gone, it is made again.
fn create_locked(path: &Path) -> io::Result<(File, Flock<File>)> {
    const TRIES: usize = 3;
    for _ in 0..TRIES {
        let file = File::options().write(true).create_new(true).open(path)?;
        let lock = file
            .try_clone()
            .and_then(|clone| {
                Flock::lock(clone, FlockArg::LockExclusive).map_err(|(_, errno)| errno.into())
            })
            .inspect_err(|_| {
                let _ = fs::remove_file(path);
            })?;
        let held = file.metadata()?;
        match fs::metadata(path) {
            Ok(named) if named.ino() == held.ino() && named.dev() == held.dev() => {
                return Ok((file, lock));
            }
            Ok(_) => return Err(io::Error::from(io::ErrorKind::AlreadyExists)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "removed by another process's spool repair as soon as it was made",
    ))
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if self.in_tmp {
            // Best effort: whatever is left in tmp/ is removed at the next start-up.
            let _ = fs::remove_file(&self.path);
        }
    }
}
