//! How much room the spool's file system has left, for the reserve that `spool_min_free` keeps.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a reading of the free space stands in for a new one, when it was far above what is asked.
const READING_LIFE: Duration = Duration::from_secs(1);

/// How far above what is asked a reading must be to stand in for a new one: more than the spool could take
/// in [`READING_LIFE`] at the rates Postel is measured at, with room to spare.
const PLENTY: u64 = 256 * 1024 * 1024;

/// The last reading: the folder, when it was taken, the bytes free then.
static LAST: Mutex<Option<(PathBuf, Instant, u64)>> = Mutex::new(None);

/// Bytes an unprivileged writer may still use on the file system of `dir`; None when it cannot be asked.
fn free_space(dir: &Path) -> Option<u64> {
    let stats = rustix::fs::statvfs(dir).ok()?;
    Some(stats.f_bavail.saturating_mul(stats.f_frsize))
}

/// Whether the file system of `dir` has `needed` bytes free, as [`free_space`] says (yes when it cannot be
/// asked); Err holds the bytes free. Far from full, a reading under a second old answers without asking the
/// file system again, so that a MAIL costs no `statfs`; near full, every call asks.
pub fn has_room(dir: &Path, needed: u64) -> Result<(), u64> {
    let now = Instant::now();
    let mut last = LAST.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((folder, taken, free)) = &*last
        && folder == dir
        && now.duration_since(*taken) < READING_LIFE
        && *free >= needed.saturating_add(PLENTY)
    {
        return Ok(());
    }
    let Some(free) = free_space(dir) else {
        return Ok(());
    };
    *last = Some((dir.to_path_buf(), now, free));
    if free < needed { Err(free) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_is_free_is_refused_every_time_however_recent_the_last_reading() {
        let dir = std::env::temp_dir();
        assert!(
            free_space(&dir).is_some(),
            "the temporary folder's file system answers"
        );
        assert_eq!(has_room(&dir, 0), Ok(()));
        assert_eq!(has_room(&dir, 0), Ok(()));
        for _ in 0..3 {
            assert!(has_room(&dir, u64::MAX).is_err());
        }
        assert_eq!(has_room(&dir, 0), Ok(()));
    }
}
