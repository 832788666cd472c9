//! Who the server runs as: the `user` account it switches to once it has bound its sockets and read what only
//! root may read, the directories it owns (created with their owner and mode at start-up), and the warning when
//! it serves as root. glibc changes the credentials of every thread at once, so the switch happens once, before
//! any thread starts; work that needs another identity goes to the privileged helper ([`helper`]).

pub mod helper;

use std::ffi::CString;
use std::fmt;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use log::warn;
use nix::errno::Errno;
use nix::unistd::{
    AccessFlags, Gid, Uid, User, access, chown, getegid, geteuid, getgid, getgroups, getuid,
    initgroups, setegid, seteuid, setgroups, setresgid, setresuid,
};

use crate::config::Config;

/// The account named by `user`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
}

/// Why the server cannot take the identity or the directories it needs.
#[derive(Debug)]
pub enum PrivilegeError {
    /// `user` names no account.
    NoSuchAccount(String),
    /// `user` names an account with uid 0.
    IsRoot(String),
    /// `user` is set, but the process is neither root nor that account.
    NotRoot { name: String, uid: Uid },
    /// A credential call failed.
    Switch { name: String, source: Errno },
    /// The privileged helper could not be started.
    Helper(String),
    /// A directory the server needs is missing and cannot be made, or is not as it must be.
    Directory { path: PathBuf, problem: String },
}

impl fmt::Display for PrivilegeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PrivilegeError::NoSuchAccount(name) => write!(
                f,
                "user: no such account '{name}' (create it, e.g. useradd --system --no-create-home \
                 --shell /usr/sbin/nologin {name})"
            ),
            PrivilegeError::IsRoot(name) => {
                write!(f, "user: '{name}' is root; name an unprivileged account")
            }
            PrivilegeError::NotRoot { name, uid } => write!(
                f,
                "user = \"{name}\": switching to that account needs Postel started as root (it runs as uid {uid})"
            ),
            PrivilegeError::Switch { name, source } => {
                write!(f, "cannot switch to the account '{name}': {source}")
            }
            PrivilegeError::Helper(e) => write!(f, "cannot start the privileged helper: {e}"),
            PrivilegeError::Directory { path, problem } => {
                write!(f, "{}: {problem}", path.display())
            }
        }
    }
}

impl std::error::Error for PrivilegeError {}

impl Account {
    /// The account `user` names; None when it is not set.
    pub fn configured(config: &Config) -> Result<Option<Account>, PrivilegeError> {
        let Some(name) = &config.user else {
            return Ok(None);
        };
        let user = User::from_name(name)
            .ok()
            .flatten()
            .ok_or_else(|| PrivilegeError::NoSuchAccount(name.clone()))?;
        if user.uid.is_root() {
            return Err(PrivilegeError::IsRoot(name.clone()));
        }
        Ok(Some(Account {
            name: name.clone(),
            uid: user.uid,
            gid: user.gid,
        }))
    }

    /// Whether this process already runs as the account (real and effective ids).
    pub fn is_current(&self) -> bool {
        getuid() == self.uid && geteuid() == self.uid
    }

    /// Becomes the account for good, having started the privileged helper first when this process is root: what
    /// only root may do later (open a user's 0600 mailbox, run an alias command as its owner) is then asked of the
    /// helper. Every path that drops to the account goes through here. Must run before any thread starts.
    fn take(&self, config: &Config) -> Result<(), PrivilegeError> {
        if self.is_current() {
            return Ok(());
        }
        if geteuid().is_root() {
            helper::install(config).map_err(|e| PrivilegeError::Helper(e.to_string()))?;
        }
        self.switch()
    }

    /// Becomes the account for good: its groups (from /etc/group, so that an admin who adds it to group mail
    /// lets it write Debian's /var/mail), then its gid and uid, real, effective and saved alike.
    fn switch(&self) -> Result<(), PrivilegeError> {
        if !geteuid().is_root() {
            return Err(PrivilegeError::NotRoot {
                name: self.name.clone(),
                uid: geteuid(),
            });
        }
        let failed = |source| PrivilegeError::Switch {
            name: self.name.clone(),
            source,
        };
        let name = CString::new(self.name.as_str()).map_err(|_| failed(Errno::EINVAL))?;
        let _ = STARTED_AS.set(getuid());
        initgroups(&name, self.gid).map_err(failed)?;
        setresgid(self.gid, self.gid, self.gid).map_err(failed)?;
        setresuid(self.uid, self.uid, self.uid).map_err(failed)?;
        if nix::unistd::setuid(Uid::from_raw(0)).is_ok() {
            return Err(failed(Errno::EPERM));
        }
        Ok(())
    }
}

/// The start-up warning when sessions would parse network input as root: `user` unset and the process is root.
pub fn root_warning(config: &Config) -> Option<&'static str> {
    (config.user.is_none() && geteuid().is_root()).then_some(
        "running as root: every session and delivery runs as root; set user = \"postel\" (an unprivileged \
         account) in the configuration",
    )
}

/// Takes the identity the configuration asks for, with the directories the server owns made ready first: the
/// spool (0700, or as the admin made it for local submission, but never open to others) and the mailbox
/// directory when it is missing. With `user` unset the process stays who it is, and says so when that is root.
/// Run as root, this creates the directories for `account`, the one [`Account::configured`] found; run before any
/// thread starts. A user's set-id `sendmail -bs` stays the user and touches nothing but the spool: it only queues.
pub fn settle(config: &Config, account: Option<Account>) -> Result<(), PrivilegeError> {
    if untrusted_caller() {
        set_spool_umask(config);
        return Ok(());
    }
    if let Some(warning) = root_warning(config) {
        warn!("{warning}");
    }
    let owner = account.as_ref().map(|a| (a.uid, a.gid));
    if !create_missing_dir(&config.spool_dir, 0o700, owner)? {
        close_spool(&config.spool_dir, account.as_ref())?;
    }
    create_missing_dir(&config.mailbox_dir, 0o755, owner)?;
    if let Some(account) = &account {
        account.take(config)?;
    }
    set_spool_umask(config);
    for dir in [&config.spool_dir, &config.mailbox_dir] {
        check_writable(dir, account.as_ref())?;
    }
    Ok(())
}

fn dir_problem(path: &Path, problem: String) -> PrivilegeError {
    PrivilegeError::Directory {
        path: path.to_path_buf(),
        problem,
    }
}

/// Creates `path` (and its parents) with exactly `mode`, given to `owner` when one is named, if it is missing;
/// false when it exists.
fn create_missing_dir(
    path: &Path,
    mode: u32,
    owner: Option<(Uid, Gid)>,
) -> Result<bool, PrivilegeError> {
    let problem = |what: &str, e: &dyn fmt::Display| dir_problem(path, format!("{what}: {e}"));
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => return Ok(false),
        Ok(_) => return Err(dir_problem(path, "is not a directory".into())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(dir_problem(path, e.to_string())),
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| problem("cannot create its parent", &e))?;
    }
    DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| problem("cannot create", &e))?;
    // The umask may have taken bits from the mode.
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| problem("cannot set its mode", &e))?;
    if let Some((uid, gid)) = owner {
        chown(path, Some(uid), Some(gid))
            .map_err(|e| problem("cannot give it to its owner", &e))?;
    }
    Ok(true)
}

/// An existing spool must belong to the account the server runs as; one open to others (an older Postel made it
/// 0755) is closed to them. Group bits stay: a local-submission install shares the spool with a group.
fn close_spool(path: &Path, account: Option<&Account>) -> Result<(), PrivilegeError> {
    let meta = fs::metadata(path).map_err(|e| dir_problem(path, e.to_string()))?;
    if let Some(account) = account
        && meta.uid() != account.uid.as_raw()
    {
        return Err(dir_problem(
            path,
            format!(
                "owned by uid {}, not by the account '{}' the server runs as (chown -R {} it)",
                meta.uid(),
                account.name,
                account.name
            ),
        ));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o007 != 0 {
        let closed = mode & !0o007;
        fs::set_permissions(path, fs::Permissions::from_mode(closed)).map_err(|e| {
            dir_problem(
                path,
                format!("open to other users, and cannot be closed: {e}"),
            )
        })?;
        warn!(
            "{}: was open to other users (mode {mode:o}); now {closed:o}",
            path.display()
        );
    }
    Ok(())
}

/// For the commands that work on the spool (queue, sendmail's delivery and its other modes): run by root with
/// `user` set, they become the account, so that root never parses a message and every spool file stays the
/// server's, with the privileged helper started first, as the daemon does, for the users' mailboxes.
pub fn become_account(config: &Config) -> Result<(), PrivilegeError> {
    if let Some(account) = Account::configured(config)?
        && geteuid().is_root()
    {
        account.take(config)?;
    }
    set_spool_umask(config);
    Ok(())
}

/// Runs `work` as the account `user` names when root runs this — its uid, gid and group as the effective ids
/// only — and is root again afterwards: sendmail run by root queues a message as the server (the spool's files are
/// the account's) and then starts the delivery as root, which becomes the account for good with the helper
/// started first. Anyone else, or root with `user` unset, runs `work` as who they are.
pub fn as_account<T, E: From<PrivilegeError>>(
    config: &Config,
    work: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    set_spool_umask(config);
    let Some(account) = Account::configured(config)?.filter(|_| geteuid().is_root()) else {
        return work();
    };
    let failed = |source| PrivilegeError::Switch {
        name: account.name.clone(),
        source,
    };
    let (groups, gid) = (getgroups().map_err(failed)?, getegid());
    setgroups(&[account.gid]).map_err(failed)?;
    setegid(account.gid).map_err(failed)?;
    seteuid(account.uid).map_err(failed)?;
    let worked = work();
    let back = |source| PrivilegeError::Switch {
        name: "root".into(),
        source,
    };
    seteuid(Uid::from_raw(0)).map_err(back)?;
    setegid(gid).map_err(back)?;
    setgroups(&groups).map_err(back)?;
    worked
}

/// Files in the spool are the server's alone (0600, directories 0700). Where the admin shares the spool with a
/// submission group (a group-writable spool, for the set-group-id sendmail), the group shares them (0660, 0770):
/// the daemon reads what users queued, users' sendmail writes into tmp/ and queue/ and finds the daemon's PID in
/// the lock file. Others never.
fn set_spool_umask(config: &Config) {
    let shared = fs::metadata(&config.spool_dir).is_ok_and(|meta| meta.mode() & 0o020 != 0);
    let umask = if shared { 0o007 } else { 0o077 };
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
}

/// The real uid this process started with, before a switch to the account: who ran it.
static STARTED_AS: OnceLock<Uid> = OnceLock::new();

/// Who ran this program: root stays root here after the process became the account.
fn caller() -> Uid {
    STARTED_AS.get().copied().unwrap_or_else(getuid)
}

/// Whether a user (not root) runs this as a set-user-id or set-group-id binary (real and effective ids differ):
/// such a caller must not choose the configuration or deliver with it. Root is trusted whatever the binary.
pub fn untrusted_caller() -> bool {
    !getuid().is_root() && (getuid() != geteuid() || getgid() != getegid())
}

/// Whether this process may deliver by itself when no daemon runs: only root and the account that owns the spool
/// (the server's own), and never a set-id program run by someone else: delivery reads the aliases and writes
/// every user's mailbox, which is not a user's business. Anyone else only queues, and wakes the daemon.
pub fn may_deliver_in_process(config: &Config) -> bool {
    let uid = caller();
    !untrusted_caller()
        && (uid.is_root()
            || fs::metadata(&config.spool_dir).is_ok_and(|spool| spool.uid() == uid.as_raw()))
}

/// Whether the caller may see or remove a queued message in `file`: root, or whoever wrote the queue file (its
/// submitter: sendmail writes a file of its own, owned by the user who ran it); the daemon's own files hold the
/// messages of network clients and belong to the server's account.
pub fn may_touch_message(file: &Path) -> bool {
    let uid = caller();
    uid.is_root() || fs::metadata(file).is_ok_and(|meta| meta.uid() == uid.as_raw())
}

/// Checks that the process (already the account, if one is named) may create files in `dir`.
fn check_writable(dir: &Path, account: Option<&Account>) -> Result<(), PrivilegeError> {
    access(dir, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
        let who = account.map_or_else(
            || format!("uid {}", geteuid()),
            |a| format!("the account '{}'", a.name),
        );
        PrivilegeError::Directory {
            path: dir.to_path_buf(),
            problem: format!(
                "{who} cannot create files in it ({e}); for a system mail spool such as Debian's \
                 /var/mail (2775 root:mail), add the account to its group"
            ),
        }
    })
}
