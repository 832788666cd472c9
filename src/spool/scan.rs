//! Reading the queue back: every record checked, and the repair of what a crash left behind.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use crc32fast::Hasher;

use super::envelope::Envelope;
use super::id::QueueId;
use super::record::{self, HEADER_LEN, Header};
use super::{Queued, Scan, SpoolError, sync_dir};

/// Scans tmp/ and queue/ (see [`Spool::scan`](super::Spool::scan)).
pub(super) fn scan(tmp: &Path, queue: &Path, repair: bool) -> Result<Scan, SpoolError> {
    let mut scan = Scan::default();
    if repair {
        for path in entries(tmp)? {
            fs::remove_file(&path).map_err(SpoolError::io(&path))?;
            scan.problems
                .push(format!("{}: unfinished message removed", path.display()));
        }
    }
    for path in entries(queue)? {
        scan_file(&path, repair, &mut scan).map_err(SpoolError::io(&path))?;
    }
    if repair && !scan.problems.is_empty() {
        sync_dir(queue).map_err(SpoolError::io(queue))?;
    }
    Ok(scan)
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
enum Found {
    /// A sound record.
    Record(Box<Queued>),
    /// A record whose checksum matches but whose envelope does not parse; it ends at `end`.
    BadEnvelope { end: u64, what: String },
    /// No whole record: the rest of the file is a torn tail.
    Torn(String),
}

/// Scans one file of queue/: adds its records to `scan`, reports what is wrong, and with `repair`
/// cuts a torn tail off (removing the file if nothing is left).
fn scan_file(path: &Path, repair: bool, scan: &mut Scan) -> io::Result<()> {
    let named_by_id = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.parse::<QueueId>().is_ok());
    if !named_by_id || !fs::symlink_metadata(path)?.is_file() {
        scan.problems
            .push(format!("{}: not a queue file; left alone", path.display()));
        return Ok(());
    }
    let file = File::open(path)?;
    let size = file.metadata()?.len();
    let mut reader = BufReader::with_capacity(64 * 1024, file);
    if !record::may_start_queue_file(reader.fill_buf()?) {
        scan.problems
            .push(format!("{}: not a queue file; left alone", path.display()));
        return Ok(());
    }
    let mut offset = 0;
    let torn = loop {
        if size == 0 {
            break "the file is empty".to_string();
        }
        if offset == size {
            return Ok(());
        }
        match read_record(&mut reader, path, offset, size)? {
            Found::Record(queued) => {
                offset = queued.body_offset + queued.len;
                scan.messages.push(*queued);
            }
            Found::BadEnvelope { end, what } => {
                let problem = format!(
                    "{}: bad envelope at byte {offset} ({what}); record skipped",
                    path.display()
                );
                scan.problems.push(problem);
                offset = end;
            }
            Found::Torn(what) => break what,
        }
    };
    let problem = match (repair, offset) {
        (false, _) => format!("{}: torn record at byte {offset} ({torn})", path.display()),
        (true, 0) => {
            fs::remove_file(path)?;
            format!(
                "{}: torn record at byte 0 cut off ({torn}); file removed",
                path.display()
            )
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
    scan.problems.push(problem);
    Ok(())
}

/// Reads and checks the record at `offset`, where `reader` stands, in a file of `size` bytes.
/// The body is read in pieces, never held whole.
fn read_record(
    reader: &mut BufReader<File>,
    path: &Path,
    offset: u64,
    size: u64,
) -> io::Result<Found> {
    let torn = |what: &str| Ok(Found::Torn(what.to_string()));
    if size - offset < HEADER_LEN as u64 {
        return torn("the header is cut short");
    }
    let mut line = [0; HEADER_LEN];
    reader.read_exact(&mut line)?;
    let header = match Header::parse(&line) {
        Ok(header) => header,
        Err(what) => return torn(what),
    };
    let body_offset = offset + HEADER_LEN as u64 + u64::from(header.envelope_len);
    let end = body_offset.saturating_add(header.body_len);
    if end > size {
        return torn("the record runs past the end of the file");
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
    Ok(match Envelope::parse(&envelope) {
        Ok(envelope) => Found::Record(Box::new(Queued {
            envelope,
            len: header.body_len,
            file: path.to_path_buf(),
            body_offset,
        })),
        Err(what) => Found::BadEnvelope { end, what },
    })
}
