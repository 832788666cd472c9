//! The privileged helper: a small process that stays root when the daemon becomes the `user` account, and does
//! only what needs another identity, each request checked before it is carried out.
//!
//! The daemon starts it before any thread of its own (it is the same binary, run as `postel privileged-helper`
//! with a Unix socket of type SOCK_SEQPACKET as its stdin) and sends it the configuration as the first message.
//! Every request is then one message on that socket: a word, NUL-separated arguments, and as its first file
//! descriptor (SCM_RIGHTS) the socket the reply goes to, so that requests from many threads never wait for each
//! other. Requests:
//!
//! | request | arguments | reply |
//! |---|---|---|
//! | `mailbox` | a system user's name | the user's mailbox in `mailbox_dir`, open for appending (and reading), created 0600 and owned by the user when missing; refused when it is a symbolic link, has more than one link, is not a regular file or belongs to someone else |
//! | `terminal` | a user's name, a terminal (`pts/3`) | reserved for writing to a user's terminal; answered "not available" |
//!
//! A reply is `O` (with the descriptor asked for, if any) or `E` and a message saying why not. The helper exits
//! when the daemon's end of the socket closes.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use log::{error, warn};
use nix::unistd::{User, fchown};
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, SocketFlags, SocketType, recvmsg, sendmsg, socketpair,
};

use crate::config::Config;

/// The longest request or reply; a configuration is sent in one message too.
const MAX_MESSAGE: usize = 64 * 1024;

/// The daemon's end of the helper's socket.
#[derive(Debug)]
pub struct Helper {
    socket: OwnedFd,
}

/// The helper of this process, once [`install`]ed.
static INSTALLED: OnceLock<Helper> = OnceLock::new();

/// The helper this process was given at start-up, if any: only a daemon started as root with `user` set has one.
pub fn installed() -> Option<&'static Helper> {
    INSTALLED.get()
}

/// Starts the helper as root, before the process drops its privileges and before any thread starts, and makes it
/// the process's helper.
pub fn install(config: &Config) -> io::Result<()> {
    let (ours, theirs) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )?;
    Command::new(std::env::current_exe()?)
        .arg("privileged-helper")
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .spawn()?;
    send(&ours, config.to_toml().as_bytes(), None)?;
    INSTALLED
        .set(Helper { socket: ours })
        .map_err(|_| io::Error::other("a privileged helper is installed already"))
}

impl Helper {
    /// The system user `name`'s mailbox, opened by the helper (see the module's table).
    pub fn open_mailbox(&self, name: &str) -> Result<File, String> {
        self.ask(&["mailbox", name]).map(File::from)
    }

    /// Sends one request and waits for its reply; the descriptor it carries.
    fn ask(&self, words: &[&str]) -> Result<OwnedFd, String> {
        let failed = |e: io::Error| format!("the privileged helper cannot be reached: {e}");
        let (reply, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| failed(e.into()))?;
        send(&self.socket, words.join("\0").as_bytes(), Some(&theirs)).map_err(failed)?;
        drop(theirs);
        let (text, fd) = receive(&reply).map_err(failed)?;
        match (text.split_first(), fd) {
            (Some((b'O', _)), Some(fd)) => Ok(fd),
            (Some((b'E', why)), _) => Err(String::from_utf8_lossy(why).into_owned()),
            _ => Err("the privileged helper gave no answer".into()),
        }
    }
}

/// `postel privileged-helper`: serves the daemon on the socket that is its stdin until the daemon goes away.
pub fn run() -> io::Result<()> {
    let socket = io::stdin().as_fd().try_clone_to_owned()?;
    let (text, _) = receive(&socket)?;
    let text = String::from_utf8_lossy(&text);
    let config = Config::parse(&text, "the daemon's configuration")
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    loop {
        let (request, reply) = match receive(&socket) {
            Ok((request, _)) if request.is_empty() => return Ok(()),
            Ok((request, Some(reply))) => (request, reply),
            Ok((_, None)) => {
                error!("privileged helper: a request without a reply socket; ignored");
                continue;
            }
            Err(e) => return Err(e),
        };
        let answer = answer(&config, &request);
        let sent = match &answer {
            Ok(fd) => send(&reply, b"O", Some(fd)),
            Err(why) => {
                warn!("privileged helper: refused: {why}");
                send(&reply, format!("E{why}").as_bytes(), None)
            }
        };
        if let Err(e) = sent {
            warn!("privileged helper: cannot reply: {e}");
        }
    }
}

/// Carries out one request, or says why not.
fn answer(config: &Config, request: &[u8]) -> Result<OwnedFd, String> {
    let words: Vec<&[u8]> = request.split(|&b| b == 0).collect();
    match words.as_slice() {
        [b"mailbox", name] => mailbox(config, name).map(OwnedFd::from),
        [b"terminal", _, _] => Err("writing to terminals is not available".into()),
        _ => Err(format!(
            "unknown request '{}'",
            String::from_utf8_lossy(words[0]).escape_debug()
        )),
    }
}

/// Opens (creating if missing) the mailbox of the system user `name`, as the module's table says.
fn mailbox(config: &Config, name: &[u8]) -> Result<File, String> {
    let name =
        std::str::from_utf8(name).map_err(|_| "a user name that is not UTF-8".to_string())?;
    if name.is_empty()
        || name.starts_with('.')
        || name.contains(|c: char| c == '/' || c.is_control())
    {
        return Err(format!("'{}' cannot name a mailbox", name.escape_debug()));
    }
    let user = User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no such user: {name}"))?;
    let path = config.mailbox_dir.join(OsStr::from_bytes(name.as_bytes()));
    let failed = |what: &str, e: io::Error| format!("{}: {what}: {e}", path.display());
    let mut options = OpenOptions::new();
    options
        .read(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    let file = match options.open(&path) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(refused(&path, "is a symbolic link"));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let file = options
                .create_new(true)
                .open(&path)
                .map_err(|e| failed("creating", e))?;
            fchown(&file, Some(user.uid), Some(user.gid))
                .map_err(|e| failed("giving it to its user", e.into()))?;
            File::open(config.mailbox_dir.as_path())
                .and_then(|dir| dir.sync_all())
                .map_err(|e| failed("syncing its directory", e))?;
            file
        }
        Err(e) => return Err(failed("opening", e)),
    };
    let meta = file.metadata().map_err(|e| failed("fstat", e))?;
    if !meta.file_type().is_file() {
        return Err(refused(&path, "is not a regular file"));
    }
    if meta.nlink() != 1 {
        return Err(refused(&path, &format!("has {} hard links", meta.nlink())));
    }
    if meta.uid() != user.uid.as_raw() {
        return Err(refused(
            &path,
            &format!("belongs to uid {}, not to {name}", meta.uid()),
        ));
    }
    Ok(file)
}

fn refused(path: &Path, problem: &str) -> String {
    format!("{}: {problem}; refusing to deliver into it", path.display())
}

/// Sends one message, with `fd` attached when given.
fn send(socket: &OwnedFd, bytes: &[u8], fd: Option<&OwnedFd>) -> io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds;
    if let Some(fd) = fd {
        fds = [fd.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
    }
    sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    Ok(())
}

/// Receives one message and the first descriptor attached to it; an empty message means the other end closed.
fn receive(socket: &OwnedFd) -> io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut bytes = vec![0; MAX_MESSAGE];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(2))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let received = recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut bytes)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    bytes.truncate(received.bytes);
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for received in fds {
                fd.get_or_insert(received);
            }
        }
    }
    Ok((bytes, fd))
}
