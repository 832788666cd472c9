//! Erasing a removed message's record in place, in a queue file that stays on disk for the other messages in it.
//!
//! First the header's mark byte goes from live to erased and is made durable: from then on every scan skips the
//! record by its lengths and ignores its checksum. Then its envelope and body are overwritten with zeros and made
//! durable. The other records of the file, and where they start, are not touched. A crash between the two steps
//! leaves a marked record that still holds its bytes: the repairing scan at start-up zeroes them
//! ([`finish_erasing`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::record::{ERASED_MARK, ERASED_MARK_AT, HEADER_LEN, Header, parse_erased};

/// How many zeros are written at a time.
const ZEROS: usize = 64 * 1024;

/// Erases the record whose body starts at `body_offset` in the queue file at `path`.
pub(super) fn erase(path: &Path, body_offset: u64) -> io::Result<()> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let (start, end) = find(&file, body_offset)?;
    file.write_all_at(&[ERASED_MARK], start + ERASED_MARK_AT as u64)?;
    file.sync_data()?;
    zero(&file, start + HEADER_LEN as u64, end)
}

/// For the repairing scan: zeroes what is left of the erased record from `start` to `end` in the queue file at
/// `path`, when a crash came before its zeros were durable. Returns whether there was anything left.
pub(super) fn finish_erasing(path: &Path, start: u64, end: u64) -> io::Result<bool> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let mut piece = vec![0; ZEROS];
    let mut at = start + HEADER_LEN as u64;
    while at < end {
        let n = (end - at).min(ZEROS as u64) as usize;
        file.read_exact_at(&mut piece[..n], at)?;
        if piece[..n].iter().any(|&b| b != 0) {
            zero(&file, start + HEADER_LEN as u64, end)?;
            return Ok(true);
        }
        at += n as u64;
    }
    Ok(false)
}

/// Overwrites `from..to` with zeros, durably.
fn zero(file: &File, from: u64, to: u64) -> io::Result<()> {
    let zeros = vec![0; ZEROS];
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS as u64) as usize;
        file.write_all_at(&zeros[..n], at)?;
        at += n as u64;
    }
    file.sync_data()
}

/// Where the record whose body starts at `body_offset` begins and ends, found by walking the headers from the
/// start of the file.
fn find(file: &File, body_offset: u64) -> io::Result<(u64, u64)> {
    let mut start = 0;
    let mut line = [0; HEADER_LEN];
    loop {
        file.read_exact_at(&mut line, start)?;
        let header = Header::parse(&line)
            .or_else(|_| parse_erased(&line).ok_or("no header"))
            .map_err(|what| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{what} at byte {start} on the way to the record"),
                )
            })?;
        let body = start + HEADER_LEN as u64 + u64::from(header.envelope_len);
        let end = body + header.body_len;
        if body == body_offset {
            return Ok((start, end));
        }
        if body > body_offset {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("no record's body starts at byte {body_offset}"),
            ));
        }
        start = end;
    }
}
