//! Requests to the running daemon from the `postel queue` and `postel sendmail` commands: a file in
//! `<spool>/control/` says what to do, and SIGUSR1 (the doorbell) says to look now. Without permission to
//! signal the daemon, the request still takes effect at its next periodic look.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::spool::QueueId;

/// What the daemon is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Try every queued message now, whatever its retry time; with a node (ETRN's "example.org", or
    /// "@example.org" for it and its subdomains), only the messages with recipients there.
    RunQueue(Option<String>),
    /// Drop a message from the queue.
    Remove(QueueId),
}

fn control_dir(spool_dir: &Path) -> PathBuf {
    spool_dir.join("control")
}

/// Leaves `request` for the daemon.
pub fn send(spool_dir: &Path, request: &Request) -> io::Result<()> {
    let dir = control_dir(spool_dir);
    fs::create_dir_all(&dir)?;
    let name = match request {
        Request::RunQueue(None) => "run".to_string(),
        Request::RunQueue(Some(node)) => format!("run.{node}"),
        Request::Remove(id) => format!("remove.{id}"),
    };
    fs::write(dir.join(name), b"")
}

/// Rings the daemon's doorbell; Err when it may not be signalled (it will look within a few seconds anyway).
pub fn ring(pid: u32) -> nix::Result<()> {
    let pid = i32::try_from(pid).map_err(|_| nix::errno::Errno::ESRCH)?;
    kill(Pid::from_raw(pid), Signal::SIGUSR1)
}

/// Takes every waiting request (the daemon's side). Unknown files are left alone.
pub fn take(spool_dir: &Path) -> Vec<Request> {
    let Ok(entries) = fs::read_dir(control_dir(spool_dir)) else {
        return Vec::new();
    };
    let mut requests = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let request = match name.to_str() {
            Some("run") => Request::RunQueue(None),
            Some(name) => {
                if let Some(node) = name.strip_prefix("run.") {
                    Request::RunQueue(Some(node.to_string()))
                } else if let Some(id) = name.strip_prefix("remove.").and_then(|id| id.parse().ok())
                {
                    Request::Remove(id)
                } else {
                    continue;
                }
            }
            None => continue,
        };
        if fs::remove_file(entry.path()).is_ok() && !requests.contains(&request) {
            requests.push(request);
        }
    }
    requests
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_taken_once() {
        let temp = crate::testing::TempDir::new("control");
        let dir = temp.0.clone();
        let id: QueueId = "19AB5D7C5E3F1001A3F2".parse().unwrap();
        send(&dir, &Request::RunQueue(None)).unwrap();
        send(&dir, &Request::RunQueue(Some("@example.org".into()))).unwrap();
        send(&dir, &Request::Remove(id.clone())).unwrap();
        fs::write(control_dir(&dir).join("junk"), b"").unwrap();
        let mut taken = take(&dir);
        taken.sort_by_key(|r| format!("{r:?}"));
        assert_eq!(
            taken,
            [
                Request::Remove(id),
                Request::RunQueue(None),
                Request::RunQueue(Some("@example.org".into()))
            ]
        );
        assert!(take(&dir).is_empty());
    }
}
