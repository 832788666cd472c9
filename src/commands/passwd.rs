//! `postel passwd NAME`: sets a user's password in the `auth_users` file and tells the running daemon to
//! read the file again.

use std::io::{self, BufRead, IsTerminal, Write};

use nix::sys::signal::{Signal, kill};
use nix::sys::termios::{self, LocalFlags, SetArg};
use nix::unistd::Pid;

use crate::auth::{password, users};
use crate::config::Config;
use crate::spool::Spool;

/// Reads the new password from stdin (asking twice, without echo, on a terminal), writes its hash for `name`
/// and sends SIGHUP to the daemon serving this spool, if one runs.
pub fn run(config: &Config, name: &str, out: &mut dyn Write) -> Result<(), String> {
    let Some(path) = &config.auth_users else {
        return Err("auth_users is not set in the configuration: name the file to write".into());
    };
    users::valid_name(name)?;
    let stdin = io::stdin();
    let secret = if stdin.is_terminal() {
        let first = prompt(&format!("New password for {name}: "))?;
        if prompt("Retype it: ")? != first {
            return Err("the passwords differ; nothing changed".into());
        }
        first
    } else {
        read_line(&mut stdin.lock())?
    };
    if secret.is_empty() {
        return Err("an empty password is not allowed; nothing changed".into());
    }
    let hash = password::hash(secret.as_bytes())?;
    users::set_password(path, name, &hash)?;
    let said = match daemon(config) {
        Some(pid) => match kill(Pid::from_raw(pid), Signal::SIGHUP) {
            Ok(()) => format!("; the running daemon (pid {pid}) reads it again"),
            Err(e) => {
                format!("; the running daemon (pid {pid}) could not be told ({e}): send it SIGHUP")
            }
        },
        None => String::new(),
    };
    writeln!(out, "password of {name} set in {}{said}", path.display()).map_err(|e| e.to_string())
}

/// The PID of the daemon serving the configured spool, if one runs.
fn daemon(config: &Config) -> Option<i32> {
    if !config.spool_dir.is_dir() {
        return None;
    }
    let pid = Spool::open(&config.spool_dir).ok()?.owner()?;
    i32::try_from(pid).ok()
}

/// One line from `input`, without its line end.
fn read_line(input: &mut dyn BufRead) -> Result<String, String> {
    let mut line = String::new();
    input
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the password: {e}"))?;
    let trimmed = line.strip_suffix('\n').unwrap_or(&line);
    Ok(trimmed.strip_suffix('\r').unwrap_or(trimmed).to_string())
}

/// Asks on stderr and reads a line from the terminal with echo off, restoring the terminal afterwards.
fn prompt(question: &str) -> Result<String, String> {
    let stdin = io::stdin();
    let saved = termios::tcgetattr(&stdin).map_err(|e| format!("cannot read the terminal: {e}"))?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    eprint!("{question}");
    termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet)
        .map_err(|e| format!("cannot turn off echo: {e}"))?;
    let line = read_line(&mut stdin.lock());
    let _ = termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, &saved);
    eprintln!();
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_loses_its_line_end_only() {
        let cases: [(&[u8], &str); 5] = [
            (b"secret\n", "secret"),
            (b"secret\r\n", "secret"),
            (b"  spaced  \n", "  spaced  "),
            (b"no newline", "no newline"),
            (b"first\nsecond\n", "first"),
        ];
        for (input, expected) in cases {
            assert_eq!(read_line(&mut &input[..]).unwrap(), expected);
        }
    }
}
