//! How much room the spool's file system has left, for the reserve that `spool_min_free` keeps.

use std::path::Path;

/// Bytes an unprivileged writer may still use on the file system of `dir`; None when it cannot be asked.
pub fn free_space(dir: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(dir).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}
