//! The privileged helper process (`postel privileged-helper`, started by the daemon: see
//! [`crate::privilege::helper`] for the requests): it stays root, checks every request and does only what needs
//! another identity than the server's.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::RwLock;

use log::{error, info, warn};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, Uid, User, fchown};
use rustix::thread;

use crate::config::Config;
use crate::delivery::aliases::{Aliases, Target};
use crate::delivery::mail_file::{self, Unfit};
use crate::delivery::terminal;
use crate::logging;
use crate::privilege::helper::{self, MAX_MESSAGE};

/// The account commands run as when the aliases file belongs to root or to the server's account (as Postfix's
/// `default_privs`).
const NOBODY: &str = "nobody";

/// What the helper knows: the daemon's configuration and the aliases, which say what commands may run and what
/// files may be written.
struct State {
    config: Config,
    aliases: RwLock<Aliases>,
}

impl State {
    /// Whether some alias lists `target`.
    fn lists(&self, target: Target) -> bool {
        self.aliases
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .lists(&target)
    }
}

/// Serves the daemon on the socket that is stdin until the daemon goes away.
pub fn run() -> io::Result<()> {
    let socket = io::stdin().as_fd().try_clone_to_owned()?;
    let (text, _) = helper::receive(&socket, MAX_MESSAGE)?;
    let config = Config::parse(
        &String::from_utf8_lossy(&text),
        "the daemon's configuration",
    )
    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    logging::route(&config);
    let aliases = Aliases::configured(&config).unwrap_or_else(|e| {
        warn!("privileged helper: no alias commands run until the aliases load: {e}");
        Aliases::empty()
    });
    let state = State {
        config,
        aliases: RwLock::new(aliases),
    };
    loop {
        let (request, mut fds) = helper::receive(&socket, 64 * 1024)?;
        if request.is_empty() {
            return Ok(());
        }
        if fds.is_empty() {
            error!("privileged helper: a request without a reply socket; ignored");
            continue;
        }
        let reply = fds.remove(0);
        let sent = match answer(&state, &request, fds) {
            Ok(Answer::Now(text, fd)) => {
                let fds: Vec<_> = fd.iter().map(|fd| fd.as_fd()).collect();
                helper::send(&reply, &[b"O".as_slice(), &text].concat(), &fds)
            }
            Ok(Answer::Later(child, command)) => {
                let sent = helper::send(&reply, b"O", &[]);
                std::thread::spawn(move || watch(child, &command, &reply));
                sent
            }
            Err(why) => {
                warn!("privileged helper: refused: {why}");
                helper::send(&reply, format!("E{why}").as_bytes(), &[])
            }
        };
        if let Err(e) = sent {
            warn!("privileged helper: cannot reply: {e}");
        }
    }
}

/// A request's answer: right away (text and maybe a descriptor), or once a command ends.
enum Answer {
    Now(Vec<u8>, Option<OwnedFd>),
    Later(Child, String),
}

/// Checks and carries out one request, or says why not.
fn answer(state: &State, request: &[u8], fds: Vec<OwnedFd>) -> Result<Answer, String> {
    let words: Vec<&[u8]> = request.split(|&b| b == 0).collect();
    match words.as_slice() {
        [b"mailbox", name] => {
            let file = mailbox(&state.config, name)?;
            Ok(Answer::Now(Vec::new(), Some(file.into())))
        }
        [b"file", path] => {
            let file = alias_file(state, path)?;
            Ok(Answer::Now(Vec::new(), Some(file.into())))
        }
        [b"command", command] => {
            let command = String::from_utf8_lossy(command).into_owned();
            let child = command_child(state, &command, fds)?;
            Ok(Answer::Later(child, command))
        }
        [b"reload"] => Ok(Answer::Now(reload(state)?, None)),
        [b"terminal", name, line] => {
            let tty = terminal(&state.config, name, line)?;
            Ok(Answer::Now(Vec::new(), Some(tty.into())))
        }
        _ => Err(format!(
            "unknown request '{}'",
            String::from_utf8_lossy(words[0]).escape_debug()
        )),
    }
}

/// Opens (creating if missing) the mailbox of the system user `name`: never a path outside `mailbox_dir`, never
/// through a symbolic link, and never a file with more than one link or that belongs to someone else.
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
    let file = match mail_file::open(&path, false) {
        Ok(file) => file,
        Err(Unfit::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
            let file = mail_file::open(&path, true).map_err(|unfit| match unfit {
                Unfit::Refused(why) => why,
                Unfit::Io(e) => failed("creating", e),
            })?;
            fchown(&file, Some(user.uid), Some(user.gid))
                .map_err(|e| failed("giving it to its user", e.into()))?;
            File::open(config.mailbox_dir.as_path())
                .and_then(|dir| dir.sync_all())
                .map_err(|e| failed("syncing its directory", e))?;
            info!("{}: created for {name}", path.display());
            file
        }
        Err(Unfit::Refused(why)) => return Err(why),
        Err(Unfit::Io(e)) => return Err(failed("opening", e)),
    };
    let meta = file.metadata().map_err(|e| failed("fstat", e))?;
    mail_file::check(&path, &meta, Some(user.uid.as_raw()))?;
    Ok(file)
}

/// Opens (creating if missing) the file an alias names, as the owner of the aliases file: only a file some alias
/// lists, only with `alias_files = true`, and with the rule of mailboxes: never through a symbolic link, never a
/// file with more than one link or that belongs to someone else than that owner.
fn alias_file(state: &State, path: &[u8]) -> Result<File, String> {
    if !state.config.alias_files {
        return Err("delivery to files is disabled (alias_files = false)".into());
    }
    let path =
        std::str::from_utf8(path).map_err(|_| "a file name that is not UTF-8".to_string())?;
    if !path.starts_with('/') || !state.lists(Target::File(path.to_string())) {
        return Err(format!("no alias lists the file '{}'", path.escape_debug()));
    }
    let user = alias_user(&state.config)?;
    let path = Path::new(path);
    let failed = |what: &str, e: io::Error| format!("{}: {what}: {e}", path.display());
    let (file, created) = open_as(&user, path).map_err(|unfit| match unfit {
        Unfit::Refused(why) => why,
        Unfit::Io(e) => failed(&format!("opening as {}", user.name), e),
    })?;
    let meta = file.metadata().map_err(|e| failed("fstat", e))?;
    mail_file::check(path, &meta, Some(user.uid.as_raw()))?;
    if created {
        if let Some(dir) = path.parent() {
            File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| failed("syncing its directory", e))?;
        }
        info!("{}: created for {}", path.display(), user.name);
    }
    Ok(file)
}

/// Opens, or creates, `path` as `user` would, so that the kernel checks every directory on the way with the
/// user's rights; true when the file is new. A thread of its own takes the user's groups, gid and uid for itself
/// alone and ends with the open: Linux keeps credentials per thread, and rustix makes the plain system calls
/// (glibc's wrappers would change every thread of the helper), so the helper's other threads stay root.
fn open_as(user: &User, path: &Path) -> Result<(File, bool), Unfit> {
    let uid = rustix::process::Uid::from_raw(user.uid.as_raw());
    let gid = rustix::process::Gid::from_raw(user.gid.as_raw());
    let become_user = || -> io::Result<()> {
        thread::set_thread_groups(&[gid])?;
        thread::set_thread_res_gid(gid, gid, gid)?;
        thread::set_thread_res_uid(uid, uid, uid)?;
        Ok(())
    };
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                become_user().map_err(Unfit::Io)?;
                match mail_file::open(path, false) {
                    Ok(file) => Ok((file, false)),
                    Err(Unfit::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                        mail_file::open(path, true).map(|file| (file, true))
                    }
                    Err(unfit) => Err(unfit),
                }
            })
            .join()
            .unwrap_or_else(|_| Err(Unfit::Io(io::Error::other("the opening thread panicked"))))
    })
}

/// Opens the terminal `line` (under /dev) for a message to the system user `name` (SEND, SOML, SAML): only a
/// terminal the utmp file lists for a login session of that user, a character device that belongs to the user and
/// accepts messages (`mesg y`).
fn terminal(config: &Config, name: &[u8], line: &[u8]) -> Result<File, String> {
    let (Ok(name), Ok(line)) = (std::str::from_utf8(name), std::str::from_utf8(line)) else {
        return Err("a user or terminal name that is not UTF-8".into());
    };
    let user = User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| format!("no such user: {}", name.escape_debug()))?;
    let path = Path::new("/dev").join(line);
    let utmp = &config.utmp_file;
    let listed = terminal::sessions(utmp, name)
        .map_err(|e| format!("{}: {e}", utmp.display()))?
        .contains(&path);
    if !listed {
        return Err(format!(
            "{} lists no login session of {name} on {}",
            utmp.display(),
            line.escape_debug()
        ));
    }
    terminal::open(&path, Some(user.uid.as_raw())).map_err(|e| format!("{}: {e}", path.display()))
}

/// Starts an alias command as the owner of the aliases file, with the message on `fds[0]` and its stderr on
/// `fds[1]`: only a command some alias lists, only with `alias_commands = true`, never as root or the server's
/// account (those become `nobody`).
fn command_child(state: &State, command: &str, fds: Vec<OwnedFd>) -> Result<Child, String> {
    let config = &state.config;
    if !config.alias_commands {
        return Err("alias commands are disabled (alias_commands = false)".into());
    }
    if !state.lists(Target::Command(command.to_string())) {
        return Err(format!(
            "no alias lists the command '{}'",
            command.escape_debug()
        ));
    }
    let user = alias_user(config)?;
    let [stdin, stderr]: [OwnedFd; 2] = fds
        .try_into()
        .map_err(|_| "a command request needs its stdin and stderr".to_string())?;
    // std drops the supplementary groups when it changes the uid of a child of root.
    Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", &user.dir)
        .env("USER", &user.name)
        .env("LOGNAME", &user.name)
        .current_dir("/")
        .uid(user.uid.as_raw())
        .gid(user.gid.as_raw())
        .stdin(Stdio::from(stdin))
        .stdout(Stdio::null())
        .stderr(Stdio::from(stderr))
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run '{command}' as {}: {e}", user.name))
}

/// Who alias commands run as and alias files are written as: the owner of the aliases file, unless that is root or
/// the server's account.
fn alias_user(config: &Config) -> Result<User, String> {
    let path = config
        .aliases
        .as_deref()
        .ok_or_else(|| "no aliases file".to_string())?;
    let owner = fs::metadata(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .uid();
    let service = config
        .user
        .as_deref()
        .and_then(|name| User::from_name(name).ok().flatten())
        .map(|user| user.uid);
    let user = if owner == 0 || Some(Uid::from_raw(owner)) == service {
        User::from_name(NOBODY).ok().flatten()
    } else {
        User::from_uid(Uid::from_raw(owner)).ok().flatten()
    };
    user.filter(|user| !user.uid.is_root() && Some(user.uid) != service)
        .ok_or_else(|| {
            format!(
                "no account for alias commands and files (owner of {}: uid {owner})",
                path.display()
            )
        })
}

/// Waits for a command to end and tells the daemon how; kills it when the daemon hangs up its reply socket (it
/// gave up on the command).
fn watch(mut child: Child, command: &str, reply: &OwnedFd) {
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                warn!("privileged helper: cannot wait for '{command}': {e}");
                return;
            }
        }
        let mut fds = [PollFd::new(reply.as_fd(), PollFlags::POLLIN)];
        let hung_up = poll(&mut fds, PollTimeout::from(20u8)).is_ok_and(|n| n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP));
        if hung_up {
            // The command and everything it started.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
            return;
        }
    };
    let text = match status.code() {
        Some(code) => format!("X{code}"),
        None => "S".to_string(),
    };
    let _ = helper::send(reply, text.as_bytes(), &[]);
}

/// Reads the aliases file again and returns the TLS certificate and key files' contents (empty without TLS).
fn reload(state: &State) -> Result<Vec<u8>, String> {
    let config = &state.config;
    match Aliases::configured(config) {
        Ok(aliases) => *state.aliases.write().unwrap_or_else(|p| p.into_inner()) = aliases,
        Err(e) => warn!("privileged helper: keeping the old aliases: {e}"),
    }
    let (Some(certificate), Some(key)) = (&config.tls_certificate, &config.tls_key) else {
        return Ok(Vec::new());
    };
    let read = |path: &Path| fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
    Ok([read(certificate)?, vec![0], read(key)?].concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(aliases: &str, alias_commands: bool) -> State {
        let mut config = Config::builtin();
        config.alias_commands = alias_commands;
        State {
            config,
            aliases: RwLock::new(Aliases::parse(aliases, "aliases").unwrap()),
        }
    }

    fn refusal(state: &State, request: &[u8]) -> String {
        match answer(state, request, Vec::new()) {
            Err(why) => why,
            Ok(_) => panic!("{request:?} was carried out"),
        }
    }

    #[test]
    fn only_commands_the_aliases_list_are_run() {
        let state = state("robot: \"|/usr/bin/robot --quiet\"\n", true);
        assert_eq!(
            refusal(&state, b"command\0rm -rf /"),
            "no alias lists the command 'rm -rf /'"
        );
        let disabled = self::state("robot: \"|/usr/bin/robot --quiet\"\n", false);
        assert!(refusal(&disabled, b"command\0/usr/bin/robot --quiet").contains("disabled"));
    }

    #[test]
    fn only_files_the_aliases_list_are_opened() {
        let state = state("archive: /var/spool/archive\n", false);
        assert!(refusal(&state, b"file\0/var/spool/archive").contains("disabled"));
        let mut state = state;
        state.config.alias_files = true;
        for path in [
            "/etc/shadow",
            "/var/spool/archive/../x",
            "var/spool/archive",
        ] {
            let request = [b"file\0".as_slice(), path.as_bytes()].concat();
            assert!(
                refusal(&state, &request).starts_with("no alias lists the file"),
                "{path}"
            );
        }
    }

    #[test]
    fn only_terminals_utmp_lists_for_the_user_are_opened() {
        let mut state = state("", false);
        let utmp = std::env::temp_dir().join(format!("postel-helper-utmp-{}", std::process::id()));
        fs::write(&utmp, b"").unwrap();
        state.config.utmp_file = utmp.clone();
        for line in ["pts/0", "../etc/passwd", "/dev/null"] {
            let request = [b"terminal\0root\0".as_slice(), line.as_bytes()].concat();
            assert!(
                refusal(&state, &request).contains("lists no login session of root"),
                "{line}"
            );
        }
        fs::remove_file(utmp).unwrap();
    }

    #[test]
    fn mailbox_names_stay_inside_the_mailbox_directory() {
        let state = state("", false);
        for name in ["../etc/passwd", ".profile", "a/b", "", "x\ny"] {
            let request = [b"mailbox\0".as_slice(), name.as_bytes()].concat();
            assert!(
                refusal(&state, &request).contains("cannot name a mailbox"),
                "{name:?}"
            );
        }
        assert!(refusal(&state, b"mailbox\0no-such-user-here").starts_with("no such user"));
    }

    #[test]
    fn unknown_requests_and_users_are_refused() {
        let state = state("", false);
        assert!(refusal(&state, b"shell\0id").starts_with("unknown request"));
        assert!(refusal(&state, b"terminal\0no-such-user-here\0pts/3").starts_with("no such user"));
    }
}
