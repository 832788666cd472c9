//! The journal (`spool/journal`): the delivery results and finished messages, one entry a line,
//! appended in batches with one `fdatasync` each, and compacted to the live messages' entries.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Write};
use std::mem;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use log::warn;

use super::format;
use super::id::QueueId;
use super::live::LiveFiles;
use super::state::{self, DeliveryState, Entry};
use super::{SpoolError, copy_io_error, sync_dir};

/// The journal is compacted while the server runs once it is this long and twice as long as it
/// was after the last compaction (and only where a repairing scan filled the bookkeeping).
const COMPACT_MIN: u64 = 16 * 1024 * 1024;

/// The journal file, and the batches of entries waiting to go into it.
pub(crate) struct Journal {
    path: PathBuf,
    /// The spool directory, which holds the journal.
    dir: PathBuf,
    inner: Mutex<Inner>,
    /// Signalled when a batch is durable (or failed) and when the flusher steps down.
    flushed: Condvar,
}

struct Inner {
    /// The journal open for appending and its length (durable, but for entries of
    /// [`append_unsynced`](Journal::append_unsynced) since the last sync); None until the first append.
    file: Option<(File, u64)>,
    /// Entries waiting for the next flush: the batch `batch` stands for.
    pending: Vec<u8>,
    batch: Arc<Batch>,
    /// Whether a caller is writing a batch (or compacting) right now, without the mutex.
    flushing: bool,
    /// Compact when the journal reaches this length, which is at least `compact_min`.
    compact_at: u64,
    compact_min: u64,
}

/// Whether a write to the journal waits for the disk.
#[derive(Clone, Copy)]
enum Durable {
    Now,
    Later,
}

/// The outcome of one flush, shared by every caller whose entries it wrote.
#[derive(Default)]
struct Batch(OnceLock<Result<(), Arc<io::Error>>>);

/// What the journal says of one message.
#[derive(Default)]
pub(crate) struct Replayed {
    pub state: DeliveryState,
    pub done: bool,
}

/// The journal read back.
#[derive(Default)]
pub(crate) struct Replay {
    /// The format version its first line names (1 for a journal without a version line).
    pub version: u32,
    pub messages: HashMap<u128, Replayed>,
    /// Entries that did not parse and were followed by sound ones: offset and what is wrong.
    pub bad: Vec<(u64, String)>,
    /// Where the torn tail (everything after the last sound entry that does not parse) starts.
    pub torn: Option<(u64, String)>,
}

impl Replay {
    /// Whether the message is finished.
    pub(super) fn done(&self, id: &QueueId) -> bool {
        self.messages.get(&id.key()).is_some_and(|m| m.done)
    }
}

impl Journal {
    pub(super) fn new(dir: &Path) -> Journal {
        Journal {
            path: dir.join("journal"),
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                file: None,
                pending: Vec::new(),
                batch: Arc::default(),
                flushing: false,
                compact_at: COMPACT_MIN,
                compact_min: COMPACT_MIN,
            }),
            flushed: Condvar::new(),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wait<'a>(&self, inner: MutexGuard<'a, Inner>) -> MutexGuard<'a, Inner> {
        self.flushed.wait(inner).unwrap_or_else(|e| e.into_inner())
    }

    fn error(&self, e: &io::Error) -> SpoolError {
        SpoolError::Io {
            path: self.path.clone(),
            source: copy_io_error(e),
        }
    }

    /// Appends entries (whole lines) and returns once they are durable. Group commit without a
    /// thread: the caller that finds no flush under way writes every pending entry, its own and
    /// those of the callers that queued theirs meanwhile, with one write and one `fdatasync`; the
    /// others wait for it. A lone caller just appends and syncs.
    pub(super) fn append(&self, entries: &[u8], live: &LiveFiles) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        inner.pending.extend_from_slice(entries);
        let batch = Arc::clone(&inner.batch);
        loop {
            if let Some(result) = batch.0.get() {
                return result.as_ref().map_err(|e| self.error(e)).copied();
            }
            inner = if inner.flushing {
                self.wait(inner)
            } else {
                self.flush(inner, live)
            };
        }
    }

    /// Appends entries (whole lines) to the file at once without waiting for the disk: they survive the process
    /// but not a power loss, until the next [`append`](Journal::append) syncs the file with them. For records
    /// whose loss only makes something happen twice, never not at all.
    pub(super) fn append_unsynced(&self, entries: &[u8]) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        while inner.flushing {
            inner = self.wait(inner);
        }
        let file = inner.file.take();
        let (file, result) = self.write(file, entries, Durable::Later);
        inner.file = file;
        result.map_err(|e| self.error(&e))
    }

    /// Writes the pending batch, then compacts the journal if it has grown enough.
    fn flush<'a>(
        &'a self,
        mut inner: MutexGuard<'a, Inner>,
        live: &LiveFiles,
    ) -> MutexGuard<'a, Inner> {
        inner.flushing = true;
        let bytes = mem::take(&mut inner.pending);
        let batch = mem::take(&mut inner.batch);
        let file = inner.file.take();
        let compact_at = inner.compact_at;
        drop(inner);

        let (file, result) = self.write(file, &bytes, Durable::Now);
        let grown = result.is_ok() && file.as_ref().is_some_and(|(_, len)| *len >= compact_at);
        let _ = batch.0.set(result.map_err(Arc::new));
        let mut inner = self.lock();
        inner.file = file;
        self.flushed.notify_all();
        if grown && live.complete() {
            drop(inner);
            let compacted =
                Journal::read(&self.path).and_then(|replay| self.rewrite(replay.messages, live));
            inner = self.lock();
            match compacted {
                Ok((file, len)) => inner.compacted(file, len),
                Err(e) => {
                    warn!("{}: cannot compact: {e}", self.path.display());
                    inner.compact_at += inner.compact_min;
                    // The rename may have happened: the next append opens the journal by name.
                    inner.file = None;
                }
            }
        }
        inner.flushing = false;
        self.flushed.notify_all();
        inner
    }

    /// Lets a test compact a small journal.
    #[cfg(test)]
    pub(super) fn set_compact_min(&self, len: u64) {
        let mut inner = self.lock();
        inner.compact_min = len;
        inner.compact_at = len;
    }

    /// Writes `bytes` at the journal's end and syncs the file now or leaves that to the next synced write; on
    /// failure cuts the file back. Returns the file (opened if it was not) with its new length.
    fn write(
        &self,
        file: Option<(File, u64)>,
        bytes: &[u8],
        durable: Durable,
    ) -> (Option<(File, u64)>, io::Result<()>) {
        let (file, len) = match file {
            Some(open) => open,
            None => match self.open_for_append() {
                Ok(open) => open,
                Err(e) => return (None, Err(e)),
            },
        };
        let written = file.write_all_at(bytes, len).and_then(|()| match durable {
            Durable::Now => file.sync_data(),
            Durable::Later => Ok(()),
        });
        match written {
            Ok(()) => (Some((file, len + bytes.len() as u64)), Ok(())),
            Err(e) => {
                if let Err(cut) = file.set_len(len) {
                    // The next batch is written at `len` over whatever is left.
                    warn!(
                        "{}: cannot cut back a failed append: {cut}",
                        self.path.display()
                    );
                }
                (Some((file, len)), Err(e))
            }
        }
    }

    /// Opens the journal for appending (creating it, durably, if missing) and cuts off a torn last
    /// line, so that the next entry starts a line of its own; an empty journal gets its version
    /// line first.
    fn open_for_append(&self) -> io::Result<(File, u64)> {
        let (file, end) = self.open_at_end()?;
        if end > 0 {
            return Ok((file, end));
        }
        file.write_all_at(format::LINE.as_bytes(), 0)?;
        file.sync_data()?;
        Ok((file, format::LINE.len() as u64))
    }

    /// Opens the journal (creating it, durably, if missing) and finds the end of its last line.
    fn open_at_end(&self) -> io::Result<(File, u64)> {
        let opened = File::options().read(true).write(true).open(&self.path);
        let file = match opened {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let file = File::options()
                    .read(true)
                    .write(true)
                    .create_new(true)
                    .open(&self.path)?;
                if let Err(e) = sync_dir(&self.dir) {
                    // Removed, so that the next append creates it again and syncs the directory.
                    let _ = fs::remove_file(&self.path);
                    return Err(e);
                }
                return Ok((file, 0));
            }
            Err(e) => return Err(e),
        };
        let size = file.metadata()?.len();
        let end = end_of_last_line(&file, size)?;
        if end < size {
            warn!(
                "{}: torn entry at byte {end} cut off (no newline at its end)",
                self.path.display()
            );
            file.set_len(end)?;
        }
        Ok((file, end))
    }

    /// Reads the journal: what it says of each message, and what is wrong with it. A missing
    /// journal is an empty one.
    pub(super) fn read(path: &Path) -> io::Result<Replay> {
        match File::open(path) {
            Ok(file) => Journal::replay(BufReader::with_capacity(64 * 1024, file)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Replay {
                version: 1,
                ..Replay::default()
            }),
            Err(e) => Err(e),
        }
    }

    /// Reads a journal's lines from `reader`.
    pub(crate) fn replay(mut reader: impl BufRead) -> io::Result<Replay> {
        let mut replay = Replay {
            version: 1,
            ..Replay::default()
        };
        let mut line = Vec::with_capacity(256);
        let mut offset = 0;
        // Entries that did not parse since the last sound one.
        let mut unsound: Vec<(u64, String)> = Vec::new();
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 {
                break;
            }
            if offset == 0
                && let Some(version) = version_line(&line)
            {
                match version {
                    Ok(version) => replay.version = version,
                    Err(what) => unsound.push((0, what)),
                }
                offset += n as u64;
                continue;
            }
            match state::parse(&line) {
                Ok((id, entry)) => {
                    replay.bad.append(&mut unsound);
                    let message = replay.messages.entry(id.key()).or_default();
                    match entry {
                        _ if message.done => {}
                        Entry::Done => {
                            *message = Replayed {
                                state: DeliveryState::default(),
                                done: true,
                            }
                        }
                        entry => message.state.replay(entry),
                    }
                }
                Err(what) => unsound.push((offset, what)),
            }
            offset += n as u64;
        }
        replay.torn = unsound.into_iter().next();
        Ok(replay)
    }

    /// Rewrites the journal with only the entries that still matter (see [`Journal::rewrite`]); for
    /// the repairing scan at start-up, which has read the journal already.
    pub(super) fn compact(
        &self,
        messages: HashMap<u128, Replayed>,
        live: &LiveFiles,
    ) -> Result<(), SpoolError> {
        self.compact_with(live, || Ok(messages))
    }

    /// Compacts the journal now rather than once it has grown, where a repairing scan filled the bookkeeping:
    /// after the admin removed a message, so that its recipients and diagnostics leave the disk with it.
    pub(super) fn compact_now(&self, live: &LiveFiles) -> Result<(), SpoolError> {
        if !live.complete() {
            return Ok(());
        }
        self.compact_with(live, || Ok(Journal::read(&self.path)?.messages))
    }

    /// Rewrites the journal with what `messages` gives, read once every other writer is kept out.
    fn compact_with(
        &self,
        live: &LiveFiles,
        messages: impl FnOnce() -> io::Result<HashMap<u128, Replayed>>,
    ) -> Result<(), SpoolError> {
        let mut inner = self.lock();
        while inner.flushing {
            inner = self.wait(inner);
        }
        match messages().and_then(|messages| self.rewrite(messages, live)) {
            Ok((file, len)) => {
                inner.compacted(file, len);
                Ok(())
            }
            Err(e) => {
                // The rename may have happened: the next append opens the journal by name.
                inner.file = None;
                Err(self.error(&e))
            }
        }
    }

    /// Writes a new journal holding, for each message whose record is in a file still there, its
    /// state (or `done`), and puts it in place of the old one: temp file, fsync, rename, fsync of
    /// the directory. A message missing from the bookkeeping had its file deleted; the queue
    /// directory is synced first so that such a deletion is durable before its entries are gone.
    /// The caller must keep every other writer out.
    fn rewrite(
        &self,
        messages: HashMap<u128, Replayed>,
        live: &LiveFiles,
    ) -> io::Result<(File, u64)> {
        let mut kept: Vec<(u128, Replayed)> = messages
            .into_iter()
            .filter(|(id, _)| live.holds(*id))
            .collect();
        kept.sort_unstable_by_key(|(id, _)| *id);
        live.sync()?;
        let temp = self.dir.join("journal.new");
        let file = File::create(&temp)?;
        let mut out = BufWriter::with_capacity(64 * 1024, &file);
        out.write_all(format::LINE.as_bytes())?;
        let mut line = Vec::with_capacity(256);
        for (key, replayed) in &kept {
            let id = QueueId::from_key(*key);
            line.clear();
            if replayed.done {
                state::encode(&id, &Entry::Done, &mut line);
            } else {
                for entry in replayed.state.entries() {
                    state::encode(&id, &entry, &mut line);
                }
            }
            out.write_all(&line)?;
        }
        out.flush()?;
        drop(out);
        file.sync_all()?;
        let len = file.metadata()?.len();
        fs::rename(&temp, &self.path)?;
        sync_dir(&self.dir)?;
        Ok((file, len))
    }
}

impl Inner {
    /// Takes the compacted journal as the one to append to.
    fn compacted(&mut self, file: File, len: u64) {
        self.file = Some((file, len));
        self.compact_at = self.compact_min.max(2 * len);
    }
}

/// The version a journal's first line names, if it is a version line.
fn version_line(line: &[u8]) -> Option<Result<u32, String>> {
    let text = std::str::from_utf8(line.strip_suffix(b"\n")?).ok()?;
    format::parse_line(text)
}

/// Where the last complete line of a file of `size` bytes ends (0 when there is none).
fn end_of_last_line(file: &File, size: u64) -> io::Result<u64> {
    let mut end = size;
    let mut chunk = vec![0; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let piece = &mut chunk[..(end - start) as usize];
        file.read_exact_at(piece, start)?;
        if let Some(at) = piece.iter().rposition(|&b| b == b'\n') {
            return Ok(start + at as u64 + 1);
        }
        end = start;
    }
    Ok(0)
}
