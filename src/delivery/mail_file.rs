//! The rule a file must pass before mail goes into it, a mailbox or a `/file` alias target: the delivery threads
//! and the privileged helper that opens files for them apply this one.

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

/// Why a file cannot take mail.
#[derive(Debug)]
pub enum Unfit {
    /// The file is not as a mailbox must be; the message names it and what is wrong. The admin must look.
    Refused(String),
    /// Opening it failed.
    Io(io::Error),
}

/// Opens the file at `path` for appending, and for reading (the check after a crash reads it), never through a
/// symbolic link and without blocking on a FIFO planted there. With `create`, makes a missing one (mode 0600) and
/// fails when it exists, so the caller knows the file is new.
pub fn open(path: &Path, create: bool) -> Result<File, Unfit> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create_new(create)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => Unfit::Refused(refusal(path, "is a symbolic link")),
            _ => Unfit::Io(e),
        })
}

/// Checks the open file at `path` (`meta` is its fstat): a regular file with one link and, when `owner` is given,
/// belonging to that uid (the user whose mail goes in). Returns the refusal otherwise.
pub fn check(path: &Path, meta: &Metadata, owner: Option<u32>) -> Result<(), String> {
    if !meta.file_type().is_file() {
        return Err(refusal(path, "is not a regular file"));
    }
    if meta.nlink() != 1 {
        return Err(refusal(path, &format!("has {} hard links", meta.nlink())));
    }
    match owner {
        Some(uid) if meta.uid() != uid => Err(refusal(
            path,
            &format!("belongs to uid {} instead of uid {uid}", meta.uid()),
        )),
        _ => Ok(()),
    }
}

/// What a refused file's message says: the path, the problem, and that no mail goes in.
pub fn refusal(path: &Path, problem: &str) -> String {
    format!("{}: {problem}; refusing to deliver into it", path.display())
}
