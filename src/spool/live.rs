//! Which queue files this process knows, and which of their records are still live: a file is
//! deleted when its last message is finished (and, for a segment, once nothing appends to it).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use log::warn;

use super::id::QueueId;
use super::sync_dir;

/// The bookkeeping, shared by the spool's callers and the group-commit thread. It costs a few dozen
/// bytes per record and per file; bodies and envelopes are never kept.
pub(super) struct LiveFiles {
    queue: PathBuf,
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Every queue file known, by the key of the id that names it.
    files: HashMap<u128, FileEntry>,
    /// Every record in those files, by the key of its message's id.
    records: HashMap<u128, Record>,
    /// Files in queue/ that are not queue files, so that they are reported only once.
    foreign: HashSet<PathBuf>,
    /// Whether a repairing scan filled the table, so that it knows every queue file whose messages
    /// this process may record results for (the journal's compaction relies on that).
    complete: bool,
}

#[derive(Default)]
struct FileEntry {
    /// The keys of the file's records.
    ids: Vec<u128>,
    /// How many of them are not finished.
    live: usize,
    /// The group-commit thread is still appending to it.
    appending: bool,
    /// It holds a record that cannot be read (a bad envelope), so it is never deleted.
    pinned: bool,
}

#[derive(Clone, Copy)]
struct Record {
    file: u128,
    done: bool,
}

/// What a scan found in one queue file.
pub(super) struct FoundFile {
    pub path: PathBuf,
    /// The ids of its sound records, each with whether the journal says it is done.
    pub records: Vec<(QueueId, bool)>,
    /// Whether it holds a record that cannot be read.
    pub pinned: bool,
}

impl LiveFiles {
    pub(super) fn new(queue: &Path) -> LiveFiles {
        LiveFiles {
            queue: queue.to_path_buf(),
            table: Mutex::default(),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // The table stays consistent even if a holder panicked: every change is a few plain stores.
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `path` is a file this process knows (committed, scanned, or reported as foreign).
    pub(super) fn knows(&self, path: &Path) -> bool {
        let table = self.table();
        match file_key(path) {
            Some(key) => table.files.contains_key(&key),
            None => table.foreign.contains(path),
        }
    }

    /// Whether the message's record is in a file that is still there.
    pub(super) fn holds(&self, id: u128) -> bool {
        self.table().records.contains_key(&id)
    }

    /// Whether the message's record is known to be the only one of its file, which nothing appends to: the
    /// file is deleted as soon as the message is finished.
    pub(super) fn alone(&self, id: &QueueId) -> bool {
        let table = self.table();
        let file = table
            .records
            .get(&id.key())
            .and_then(|record| table.files.get(&record.file));
        file.is_some_and(|file| file.ids.len() == 1 && !file.appending && !file.pinned)
    }

    /// Whether the group-commit thread is appending to `path`.
    pub(super) fn appending(&self, path: &Path) -> bool {
        file_key(path).is_some_and(|key| self.table().files.get(&key).is_some_and(|f| f.appending))
    }

    /// Whether a repairing scan filled the table.
    pub(super) fn complete(&self) -> bool {
        self.table().complete
    }

    /// Takes in what a scan found. `start_up` (the repairing scan) starts the table afresh but for
    /// the segment being appended to; otherwise files already known are left as they are. Foreign
    /// files are remembered, to be skipped.
    pub(super) fn load(&self, files: Vec<FoundFile>, foreign: Vec<PathBuf>, start_up: bool) {
        let mut table = self.table();
        if start_up {
            let old = std::mem::take(&mut *table);
            table.complete = true;
            for (key, entry) in old.files.into_iter().filter(|(_, f)| f.appending) {
                for id in &entry.ids {
                    if let Some(record) = old.records.get(id) {
                        table.records.insert(*id, *record);
                    }
                }
                table.files.insert(key, entry);
            }
        }
        table.foreign.extend(foreign);
        for found in files {
            let Some(key) = file_key(&found.path) else {
                continue;
            };
            if table.files.contains_key(&key) {
                continue;
            }
            let mut entry = FileEntry {
                pinned: found.pinned,
                ..FileEntry::default()
            };
            for (id, done) in found.records {
                entry.ids.push(id.key());
                entry.live += usize::from(!done);
                let record = Record { file: key, done };
                table.records.insert(id.key(), record);
            }
            table.files.insert(key, entry);
        }
    }

    /// A segment that the group-commit thread is about to create.
    pub(super) fn start_segment(&self, path: &Path) {
        if let Some(key) = file_key(path) {
            let entry = FileEntry {
                appending: true,
                ..FileEntry::default()
            };
            self.table().files.insert(key, entry);
        }
    }

    /// Records now durable in `path` (a segment, or a file of their own about to be renamed there).
    pub(super) fn add<'a>(&self, path: &Path, ids: impl IntoIterator<Item = &'a QueueId>) {
        let Some(key) = file_key(path) else {
            return;
        };
        let table = &mut *self.table();
        let entry = table.files.entry(key).or_default();
        for id in ids {
            entry.ids.push(id.key());
            entry.live += 1;
            let record = Record {
                file: key,
                done: false,
            };
            table.records.insert(id.key(), record);
        }
    }

    /// Forgets a file that is not there (a commit into it failed).
    pub(super) fn forget(&self, path: &Path) {
        if let Some(key) = file_key(path) {
            self.table().remove(key);
        }
    }

    /// The group-commit thread appends no more to `path`; it is deleted if nothing in it is live.
    pub(super) fn retire(&self, path: &Path) {
        let Some(key) = file_key(path) else {
            return;
        };
        let mut table = self.table();
        if let Some(entry) = table.files.get_mut(&key) {
            entry.appending = false;
            table.delete_if_finished(&self.queue, key);
        }
    }

    /// Marks the message done (its `done` entry is durable by now), and deletes its file if that
    /// was the file's last live record. Unknown ids are left alone: their file, if any, goes at the
    /// next start-up.
    pub(super) fn finish(&self, id: &QueueId) {
        let mut table = self.table();
        let Some(record) = table.records.get_mut(&id.key()) else {
            return;
        };
        if record.done {
            return;
        }
        record.done = true;
        let file = record.file;
        if let Some(entry) = table.files.get_mut(&file) {
            entry.live -= 1;
        }
        table.delete_if_finished(&self.queue, file);
    }

    /// Makes the deletions so far durable (before a compacted journal may forget their records).
    pub(super) fn sync(&self) -> io::Result<()> {
        sync_dir(&self.queue)
    }
}

impl Table {
    /// Deletes the file if none of its records is live and nothing appends to it. The file is
    /// unlinked before its records leave the table, so that a record missing from the table is one
    /// whose file is gone (once the directory is synced).
    fn delete_if_finished(&mut self, queue: &Path, key: u128) {
        let Some(entry) = self.files.get(&key) else {
            return;
        };
        if entry.live > 0 || entry.appending || entry.pinned {
            return;
        }
        let path = queue.join(QueueId::from_key(key).as_str());
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                // Left for the next start-up, which deletes files whose records are all done.
                warn!(
                    "{}: cannot delete a finished queue file: {e}",
                    path.display()
                );
                return;
            }
        }
        self.remove(key);
    }

    /// Forgets a file and its records.
    fn remove(&mut self, key: u128) {
        if let Some(entry) = self.files.remove(&key) {
            for id in &entry.ids {
                self.records.remove(id);
            }
        }
    }
}

/// The key of the id that names a queue file; None for a name that is not a queue id.
pub(super) fn file_key(path: &Path) -> Option<u128> {
    let name = path.file_name()?.to_str()?;
    name.parse::<QueueId>().ok().map(|id| id.key())
}
