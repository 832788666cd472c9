//! Reading the queue back: every record checked, and the repair of what a crash left behind.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crc32fast::Hasher;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

use super::envelope::{self, Envelope};
use super::erase;
use super::format;
use super::live::{self, FoundFile};
use super::record::{self, HEADER_LEN, Header};
use super::state::DeliveryState;
use super::{Queued, Scan, SpoolError, sync_dir};

/// What a scan of queue files found.
#[derive(Default)]
pub(super) struct Found {
    /// The sound records (each with a fresh delivery state) and the problems.
    pub scan: Scan,
    /// Each queue file read, with the ids of its sound records (none of them done yet).
    pub files: Vec<FoundFile>,
    /// The files that are not queue files.
    pub foreign: Vec<PathBuf>,
    /// The first record found in a format version this Postel does not read: its file and version.
    pub unreadable: Option<(PathBuf, u32)>,
}

impl Found {
    /// Reports a file that is not a queue file.
    fn foreign(&mut self, path: &Path) {
        self.scan
            .problems
            .push(format!("{}: not a queue file; left alone", path.display()));
        self.foreign.push(path.to_path_buf());
    }
}

/// Scans tmp/ and queue/ (see [`Spool::scan`](super::Spool::scan)).
pub(super) fn scan(tmp: &Path, queue: &Path, repair: bool) -> Result<Found, SpoolError> {
    let mut found = Found::default();
    if repair {
        for path in entries(tmp)? {
            if remove_unless_locked(&path).map_err(SpoolError::io(&path))? {
                found
                    .scan
                    .problems
                    .push(format!("{}: unfinished message removed", path.display()));
            }
        }
    }
    for path in entries(queue)? {
        scan_file(&path, repair, &mut found).map_err(SpoolError::io(&path))?;
    }
    if repair && !found.scan.problems.is_empty() {
        sync_dir(queue).map_err(SpoolError::io(queue))?;
    }
    Ok(found)
}

/// Scans the files of queue/ that `wanted` selects, changing nothing.
pub(super) fn scan_some(queue: &Path, wanted: impl Fn(&Path) -> bool) -> Result<Found, SpoolError> {
    let mut found = Found::default();
    for path in entries(queue)?.into_iter().filter(|p| wanted(p)) {
        scan_file(&path, false, &mut found).map_err(SpoolError::io(&path))?;
    }
    Ok(found)
}

/// Removes a file left in tmp/, unless a program that is still writing it holds its flock (`postel
/// sendmail` or `postel inetd` take in messages without the spool lock). Returns whether it was
/// removed.
fn remove_unless_locked(path: &Path) -> io::Result<bool> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Between the open and the lock its writer may have committed it (renamed it into queue/).
        Ok(_locked) => match fs::remove_file(path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        },
        Err((_, Errno::EWOULDBLOCK)) => Ok(false),
        Err((_, errno)) => Err(errno.into()),
    }
}

/// The paths in a directory, sorted.
fn entries(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let mut paths = fs::read_dir(dir)
        .and_then(|entries| {
            entries
                .map(|entry| entry.map(|e| e.path()))
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(SpoolError::io(dir))?;
    paths.sort();
    Ok(paths)
}

/// What the next bytes of a queue file hold.
enum Next {
    /// A sound record.
    Record(Box<Queued>),
    /// A record `postel queue remove` erased; it ends at `end`.
    Erased { end: u64 },
    /// A record whose checksum matches but whose envelope does not parse; it ends at `end`.
    BadEnvelope { end: u64, what: String },
    /// A sound record in a format version this Postel does not read; it ends at `end`.
    Unreadable { end: u64, version: u32 },
    /// Nothing but zero bytes to the end of the file: the room a segment's writer set aside for more
    /// records.
    Room,
    /// No whole record: the rest of the file is a torn tail.
    Torn(String),
}

/// Scans one file of queue/: adds its records to `found`, reports what is wrong, and with `repair`
/// cuts a torn tail off (removing the file if nothing is left). A file that vanished meanwhile is
/// skipped.
fn scan_file(path: &Path, repair: bool, found: &mut Found) -> io::Result<()> {
    let named_by_id = live::file_key(path).is_some();
    let vanished = |e: &io::Error| e.kind() == io::ErrorKind::NotFound;
    let is_file = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata.is_file(),
        Err(e) if vanished(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !(named_by_id && is_file) {
        found.foreign(path);
        return Ok(());
    }
    let mut reader = match File::open(path) {
        Ok(file) => BufReader::with_capacity(64 * 1024, file),
        Err(e) if vanished(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !record::may_start_queue_file(reader.fill_buf()?) {
        found.foreign(path);
        return Ok(());
    }
    let size = reader.get_ref().metadata()?.len();
    let mut this = FoundFile {
        path: path.to_path_buf(),
        records: Vec::new(),
        pinned: false,
    };
    let mut offset = 0;
    let torn = loop {
        if size == 0 {
            break "the file is empty".to_string();
        }
        if offset == size {
            found.files.push(this);
            return Ok(());
        }
        match read_record(&mut reader, path, offset, size)? {
            Next::Record(queued) => {
                offset = queued.body_offset + queued.len;
                this.records.push((queued.envelope.id.clone(), false));
                found.scan.messages.push(*queued);
            }
            Next::Erased { end } => {
                if repair && erase::finish_erasing(path, offset, end)? {
                    found.scan.problems.push(format!(
                        "{}: record erased at byte {offset} still held its bytes after a crash; zeroed",
                        path.display()
                    ));
                }
                offset = end;
            }
            Next::BadEnvelope { end, what } => {
                let problem = format!(
                    "{}: bad envelope at byte {offset} ({what}); record skipped",
                    path.display()
                );
                found.scan.problems.push(problem);
                this.pinned = true;
                offset = end;
            }
            Next::Unreadable { end, version } => {
                let problem = format!(
                    "{}: record at byte {offset} is in spool format version {version}, which this \
                     Postel does not read; record skipped",
                    path.display()
                );
                found.scan.problems.push(problem);
                found
                    .unreadable
                    .get_or_insert((path.to_path_buf(), version));
                this.pinned = true;
                offset = end;
            }
            Next::Room => {
                found.files.push(this);
                return Ok(());
            }
            Next::Torn(what) => break what,
        }
    };
    let problem = match (repair, offset) {
        (false, _) => format!("{}: torn record at byte {offset} ({torn})", path.display()),
        (true, 0) => {
            fs::remove_file(path)?;
            found.scan.problems.push(format!(
                "{}: torn record at byte 0 cut off ({torn}); file removed",
                path.display()
            ));
            return Ok(());
        }
        (true, _) => {
            let file = File::options().write(true).open(path)?;
            file.set_len(offset)?;
            file.sync_all()?;
            format!(
                "{}: torn record at byte {offset} cut off ({torn})",
                path.display()
            )
        }
    };
    found.scan.problems.push(problem);
    found.files.push(this);
    Ok(())
}

/// Whether the next `count` bytes of `reader` are all zero bytes. Reads them.
fn zeros_to_the_end(reader: &mut BufReader<File>, count: u64) -> io::Result<bool> {
    let mut rest = reader.take(count);
    loop {
        let piece = rest.fill_buf()?;
        if piece.is_empty() {
            return Ok(rest.limit() == 0);
        }
        if piece.iter().any(|&b| b != 0) {
            return Ok(false);
        }
        let n = piece.len();
        rest.consume(n);
    }
}

/// Reads and checks the record at `offset`, where `reader` stands, in a file of `size` bytes.
/// The body is read in pieces, never held whole.
fn read_record(
    reader: &mut BufReader<File>,
    path: &Path,
    offset: u64,
    size: u64,
) -> io::Result<Next> {
    let torn = |what: &str| Ok(Next::Torn(what.to_string()));
    if size - offset < HEADER_LEN as u64 {
        if zeros_to_the_end(reader, size - offset)? {
            return Ok(Next::Room);
        }
        return torn("the header is cut short");
    }
    let mut line = [0; HEADER_LEN];
    reader.read_exact(&mut line)?;
    let (header, erased) = match Header::parse(&line) {
        Ok(header) => (header, false),
        Err(what) => match record::parse_erased(&line) {
            Some(header) => (header, true),
            None if line.iter().all(|&b| b == 0)
                && zeros_to_the_end(reader, size - offset - HEADER_LEN as u64)? =>
            {
                return Ok(Next::Room);
            }
            None => return torn(what),
        },
    };
    let body_offset = offset + HEADER_LEN as u64 + u64::from(header.envelope_len);
    let end = body_offset.saturating_add(header.body_len);
    if end > size {
        return torn("the record runs past the end of the file");
    }
    if erased {
        let skip = end - offset - HEADER_LEN as u64;
        reader.seek_relative(i64::try_from(skip).map_err(io::Error::other)?)?;
        return Ok(Next::Erased { end });
    }
    let mut envelope = vec![0; header.envelope_len as usize];
    reader.read_exact(&mut envelope)?;
    let mut crc = Hasher::new();
    crc.update(&envelope);
    let mut body = reader.take(header.body_len);
    loop {
        let piece = body.fill_buf()?;
        if piece.is_empty() {
            break;
        }
        crc.update(piece);
        let n = piece.len();
        body.consume(n);
    }
    if body.limit() > 0 {
        return torn("the file shrank while being read");
    }
    if crc.finalize() != header.crc {
        return torn("checksum mismatch");
    }
    if let Some(version) = envelope::version(&envelope).filter(|v| !format::readable(*v)) {
        return Ok(Next::Unreadable { end, version });
    }
    Ok(match Envelope::parse(&envelope) {
        Ok(envelope) => Next::Record(Box::new(Queued {
            envelope,
            len: header.body_len,
            file: path.to_path_buf(),
            record_offset: offset,
            body_offset,
            state: DeliveryState::default(),
        })),
        Err(what) => Next::BadEnvelope { end, what },
    })
}
