//! The queued message as a delivery worker reads it. A small message is read once into the worker's buffer and
//! served from there to every step that needs it (the header checks, the mailbox length, the append, a command,
//! every recipient of the message this worker delivers); a large one is streamed from the spool through the same
//! buffer each time. A worker thus keeps one buffer, at most [`IN_MEMORY`] bytes, instead of allocating one per
//! read. It also keeps the queue file it read last open until its work item is done ([`close_file`]): a mailbox
//! job's messages are mostly in one segment, read with one `pread` each.

use std::cell::RefCell;
use std::io::{self, BufRead, Read};
use std::path::PathBuf;

use crate::spool::{OpenQueueFile, Queued, Spool, SpoolError};

/// Messages up to this size are held in memory (the size up to which the spool keeps one in memory too).
const IN_MEMORY: u64 = 128 * 1024;

/// How much of a large message is read from the spool at a time.
const CHUNK: usize = 64 * 1024;

/// This thread's buffer, which queued message it holds whole, if any (a record never changes once committed,
/// so its file and offset name its bytes), and the queue file it read last, still open.
#[derive(Default)]
struct Buffer {
    holds: Option<(PathBuf, u64)>,
    bytes: Vec<u8>,
    file: Option<OpenQueueFile>,
}

thread_local! {
    static BUFFER: RefCell<Buffer> = RefCell::default();
}

/// Calls `read` with the whole body of `message`, to read from its start. `read` must not call this again.
pub fn read<R>(
    spool: &Spool,
    message: &Queued,
    read: impl FnOnce(&mut dyn BufRead) -> R,
) -> Result<R, SpoolError> {
    BUFFER.with_borrow_mut(|buffer| {
        if message.len > IN_MEMORY {
            buffer.holds = None;
            buffer.bytes.resize(CHUNK, 0);
            let mut chunks = Chunks {
                inner: spool.read_body(message)?,
                buf: &mut buffer.bytes,
                start: 0,
                end: 0,
            };
            return Ok(read(&mut chunks));
        }
        let held = buffer.holds.as_ref();
        if !held
            .is_some_and(|(file, offset)| *file == message.file && *offset == message.body_offset)
        {
            buffer.holds = None;
            spool.read_body_into(message, &mut buffer.file, &mut buffer.bytes)?;
            buffer.holds = Some((message.file.clone(), message.body_offset));
        }
        Ok(read(&mut &buffer.bytes[..]))
    })
}

/// Closes the queue file this thread keeps open, so that a finished segment's blocks are freed once it is deleted.
pub fn close_file() {
    BUFFER.with_borrow_mut(|buffer| buffer.file = None);
}

/// A reader buffered in a borrowed buffer.
struct Chunks<'a, R> {
    inner: R,
    buf: &'a mut [u8],
    start: usize,
    end: usize,
}

impl<R: Read> Read for Chunks<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let n = {
            let mut available = self.fill_buf()?;
            available.read(out)?
        };
        self.consume(n);
        Ok(n)
    }
}

impl<R: Read> BufRead for Chunks<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.start == self.end {
            self.end = self.inner.read(self.buf)?;
            self.start = 0;
        }
        Ok(&self.buf[self.start..self.end])
    }

    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }
}
