//! The group-commit thread: appends the small records of every session waiting at the same moment
//! to one segment file in queue/, with one write and one `fdatasync` for them all.

use std::fs::{self, File};
use std::io::{self, IoSlice};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::warn;
use nix::errno::Errno;
use nix::sys::uio::pwritev;

use super::id::QueueId;
use super::live::LiveFiles;
use super::{SpoolError, copy_io_error, sync_dir};
use crate::{events, step};

/// A segment takes no more batches once it is this long. A segment stays on disk while any message
/// in it waits, for days if one is deferred, so segments are kept small: a new one costs only a
/// create and a directory sync.
pub(super) const SEGMENT_LIMIT: u64 = 1024 * 1024;

/// The most records in one batch (two buffers each, well under the kernel's IOV_MAX of 1024, with the
/// few of a segment's new room).
const MAX_BATCH: usize = 256;

/// A segment grows by this much at a time: a batch that passes its end writes zeros after its records up to
/// the next multiple of it. The batches after it then write over blocks the file already has, so that their
/// `fdatasync` writes the data and flushes the disk's cache but commits no new file length to the file
/// system's journal: on the development VM that costs about 40 % less CPU and time a sync. A scan reads
/// the zeros after the last record as room, not as a torn record (doc/spool.md, "A record").
const ROOM_STEP: u64 = 256 * 1024;

/// What the zeros of a segment's new room are written from.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// The handle sessions use to reach the group-commit thread. Dropping it stops the thread once it
/// has answered every request.
pub(super) struct GroupCommit {
    requests: Sender<Request>,
    queue: PathBuf,
}

/// One record to append, and where to send the answer: its file and the record's offset in it.
struct Request {
    id: QueueId,
    head: Vec<u8>,
    body: Vec<u8>,
    reply: Reply,
}

/// Where a record was put, or why it was not.
type Placed = Result<(PathBuf, u64), SpoolError>;

/// The answer to one request, and the session thread that waits for it, parked. A channel's receive would
/// spin and yield the CPU a dozen times first, all in vain for a sync that takes a tenth of a millisecond.
struct Answer {
    state: Mutex<AnswerState>,
    waiter: Thread,
}

enum AnswerState {
    Waiting,
    Given(Placed),
    /// The request was dropped unanswered: the commit thread has stopped.
    Abandoned,
}

impl Answer {
    /// An answer for the calling thread to wait for, and the reply that gives it.
    fn for_this_thread() -> (Arc<Answer>, Reply) {
        let answer = Arc::new(Answer {
            state: Mutex::new(AnswerState::Waiting),
            waiter: thread::current(),
        });
        let reply = Reply(Some(Arc::clone(&answer)));
        (answer, reply)
    }

    fn set(&self, state: AnswerState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
        self.waiter.unpark();
    }

    fn take(&self) -> AnswerState {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::replace(&mut *state, AnswerState::Waiting)
    }
}

/// The commit thread's end of an [`Answer`]; dropped unanswered, it says so, so that no session waits for ever.
struct Reply(Option<Arc<Answer>>);

impl Reply {
    fn send(mut self, placed: Placed) {
        if let Some(answer) = self.0.take() {
            answer.set(AnswerState::Given(placed));
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(answer) = self.0.take() {
            answer.set(AnswerState::Abandoned);
        }
    }
}

/// The segment file being appended to.
struct Segment {
    file: File,
    path: PathBuf,
    /// The length of the records acknowledged so far.
    len: u64,
    /// The length of the file: its records, then zeros.
    room: u64,
    /// When it takes no more batches, so that it can go once its messages are finished.
    close_at: Instant,
}

impl GroupCommit {
    /// Starts the thread; it creates its segments in `queue`, enters them and their records in
    /// `live`, and closes each one `segment_age` after it was created.
    pub(super) fn start(
        queue: &Path,
        live: Arc<LiveFiles>,
        segment_age: Duration,
    ) -> Result<GroupCommit, SpoolError> {
        let (requests, incoming) = crossbeam_channel::unbounded();
        let thread_queue = queue.to_path_buf();
        thread::Builder::new()
            .name("spool-commit".to_string())
            .spawn(move || run(&thread_queue, &live, &incoming, segment_age))
            .map_err(SpoolError::io(queue))?;
        Ok(GroupCommit {
            requests,
            queue: queue.to_path_buf(),
        })
    }

    /// Appends a record (`head`, then `body`) and returns once it is durable: the segment file it is
    /// in and its offset there.
    pub(super) fn append(
        &self,
        id: &QueueId,
        head: Vec<u8>,
        body: Vec<u8>,
    ) -> Result<(PathBuf, u64), SpoolError> {
        let (answer, reply) = Answer::for_this_thread();
        // A request the thread never takes is dropped here, and its reply says so.
        let _ = self.requests.send(Request {
            id: id.clone(),
            head,
            body,
            reply,
        });
        loop {
            match answer.take() {
                AnswerState::Given(placed) => return placed,
                AnswerState::Abandoned => return Err(self.stopped()),
                AnswerState::Waiting => thread::park(),
            }
        }
    }

    fn stopped(&self) -> SpoolError {
        let source = io::Error::other("the group-commit thread has stopped");
        SpoolError::Io {
            path: self.queue.clone(),
            source,
        }
    }
}

/// The thread's loop. A batch is the request that ends the wait and every other one already queued
/// behind it. The current segment is closed when its time is up, whether or not more mail comes: a
/// segment that takes no more batches is deleted as soon as its last message is finished, so that
/// delivered mail does not stay on disk on a quiet host.
fn run(queue: &Path, live: &LiveFiles, incoming: &Receiver<Request>, segment_age: Duration) {
    let mut segment: Option<Segment> = None;
    loop {
        let received = match &segment {
            Some(current) => incoming.recv_deadline(current.close_at),
            None => incoming.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let first = match received {
            Ok(first) => first,
            Err(RecvTimeoutError::Timeout) => {
                close(live, &mut segment);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        if segment
            .as_ref()
            .is_some_and(|s| Instant::now() >= s.close_at)
        {
            close(live, &mut segment);
        }
        let mut batch = vec![first];
        batch.extend(incoming.try_iter().take(MAX_BATCH - 1));
        let started = events::enabled().then(Instant::now);
        match append(queue, live, &mut segment, &batch, segment_age) {
            Ok((path, mut offset)) => {
                let others = batch.len() - 1;
                for request in batch {
                    if let Some(started) = started {
                        step!(
                            request.id.as_str(),
                            "spooled in segment {} with {} other messages: one write and one fdatasync, {:.1} ms",
                            path.file_name().unwrap_or_default().to_string_lossy(),
                            others,
                            started.elapsed().as_secs_f64() * 1e3
                        );
                    }
                    request.reply.send(Ok((path.clone(), offset)));
                    offset += (request.head.len() + request.body.len()) as u64;
                }
            }
            Err((path, e)) => {
                for request in batch {
                    request.reply.send(Err(SpoolError::Io {
                        path: path.clone(),
                        source: copy_io_error(&e),
                    }));
                }
            }
        }
    }
}

/// Closes the current segment: it takes no more batches, and goes once nothing in it is live.
fn close(live: &LiveFiles, segment: &mut Option<Segment>) {
    if let Some(segment) = segment.take() {
        live.retire(&segment.path);
    }
}

/// Appends a batch to the current segment (starting one if there is none), syncs it and enters its
/// records in `live`; returns the segment's path and the batch's offset. On failure the segment is
/// cut back to what was acknowledged and left for good, so that no later record follows a torn
/// one. A segment left (full, or after a failure) is deleted if its messages are all finished.
fn append(
    queue: &Path,
    live: &LiveFiles,
    current: &mut Option<Segment>,
    batch: &[Request],
    segment_age: Duration,
) -> Result<(PathBuf, u64), (PathBuf, io::Error)> {
    let segment = match current.take() {
        Some(segment) => segment,
        None => Segment::create(queue, live, &batch[0].id, segment_age)?,
    };
    let len = segment.len
        + batch
            .iter()
            .map(|r| (r.head.len() + r.body.len()) as u64)
            .sum::<u64>();
    let room = segment.room.max(len.next_multiple_of(ROOM_STEP));
    let mut buffers: Vec<IoSlice> = batch
        .iter()
        .flat_map(|r| [IoSlice::new(&r.head), IoSlice::new(&r.body)])
        .chain(zeros(room - len.max(segment.room)))
        .collect();
    let written = write_all_at(&segment.file, &mut buffers, segment.len)
        .and_then(|()| segment.file.sync_data());
    if let Err(e) = written {
        let path = segment.path.clone();
        segment.undo();
        live.retire(&path);
        return Err((path, e));
    }
    live.add(&segment.path, batch.iter().map(|r| &r.id));
    let placed = (segment.path.clone(), segment.len);
    if len < SEGMENT_LIMIT {
        *current = Some(Segment {
            len,
            room,
            ..segment
        });
    } else {
        live.retire(&segment.path);
    }
    Ok(placed)
}

impl Segment {
    /// Creates `queue/<id>` and syncs the directory, so that the file is there before any record
    /// in it is acknowledged. It is entered in `live` first, so that no one takes it for a file
    /// that another program queued.
    fn create(
        queue: &Path,
        live: &LiveFiles,
        id: &QueueId,
        age: Duration,
    ) -> Result<Segment, (PathBuf, io::Error)> {
        let close_at = Instant::now() + age;
        let path = queue.join(id.as_str());
        live.start_segment(&path);
        let file = match File::options().write(true).create_new(true).open(&path) {
            Ok(file) => file,
            Err(e) => {
                live.forget(&path);
                return Err((path, e));
            }
        };
        if let Err(e) = sync_dir(queue) {
            let _ = fs::remove_file(&path);
            live.forget(&path);
            return Err((queue.to_path_buf(), e));
        }
        Ok(Segment {
            file,
            path,
            len: 0,
            room: 0,
            close_at,
        })
    }

    /// Cuts off a failed append; removes the file if it holds nothing else. Failing that, the next
    /// start-up's scan cuts the torn tail.
    fn undo(self) {
        let undone = if self.len == 0 {
            fs::remove_file(&self.path)
        } else {
            self.file.set_len(self.len)
        };
        if let Err(e) = undone {
            warn!(
                "{}: cannot cut back a failed append: {e}",
                self.path.display()
            );
        }
    }
}

/// Buffers of `count` zero bytes.
fn zeros<'a>(mut count: u64) -> impl Iterator<Item = IoSlice<'a>> {
    std::iter::from_fn(move || {
        let n = count.min(ZEROS.len() as u64) as usize;
        count -= n as u64;
        (n > 0).then(|| IoSlice::new(&ZEROS[..n]))
    })
}

/// Writes all of `buffers` at `offset`, with as few system calls as the kernel allows.
fn write_all_at(file: &File, mut buffers: &mut [IoSlice], mut offset: u64) -> io::Result<()> {
    while !buffers.is_empty() {
        let at = i64::try_from(offset).map_err(|_| io::ErrorKind::FileTooLarge)?;
        match pwritev(file, buffers, at) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                IoSlice::advance_slices(&mut buffers, n);
                offset += n as u64;
            }
            Err(Errno::EINTR) => {}
            Err(errno) => return Err(errno.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_sent_from_another_thread_wakes_the_parked_waiter() {
        let (answer, reply) = Answer::for_this_thread();
        let sender = thread::spawn(move || {
            thread::sleep(Duration::from_millis(20));
            reply.send(Ok((PathBuf::from("queue/X"), 42)));
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let placed = loop {
            match answer.take() {
                AnswerState::Given(placed) => break placed,
                AnswerState::Abandoned => panic!("the reply was sent, not dropped"),
                AnswerState::Waiting => thread::park_timeout(deadline - Instant::now()),
            }
            assert!(Instant::now() < deadline, "no answer came");
        };
        sender.join().unwrap();
        assert_eq!(placed.unwrap(), (PathBuf::from("queue/X"), 42));
    }

    #[test]
    fn a_reply_dropped_unsent_says_the_request_was_abandoned() {
        let (answer, reply) = Answer::for_this_thread();
        drop(reply);
        assert!(matches!(answer.take(), AnswerState::Abandoned));
    }
}
