//! Delivery to a command named by an alias (`|command`, only with `alias_commands = true`): the command runs
//! under /bin/sh with the message on stdin, LF line ends. Nothing from the client reaches the command line or
//! the environment; the command comes from the admin's aliases file alone.
//!
//! One deadline covers the whole delivery: writing the message, the command's run and its exit. A command
//! that stops reading, never exits or talks endlessly on stderr is killed at the deadline with everything it
//! started (it runs in a process group of its own), so it cannot hold a delivery worker.

use std::fs::File;
use std::io::{self, BufRead, BufWriter, ErrorKind, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{Pid, pipe2};

use crate::config::format_duration;
use crate::copy::{self, CopyError, Format};
use crate::delivery::transport::Delivery;
use crate::privilege::helper::{self, Ended, RunningCommand};
use crate::smtp::Detail;

/// sysexits.h EX_TEMPFAIL: the command asks to be tried again later.
const EX_TEMPFAIL: i32 = 75;

/// How much of what the command says on stderr is kept for the log and the bounce; the rest is read and
/// dropped, so a chatty command never blocks on a full pipe.
const STDERR_KEPT: usize = 4096;

/// How often the exit of a command that closed its pipes is looked for.
const EXIT_POLL: Duration = Duration::from_millis(20);

/// Runs `command` with `trace_headers` and then the message `body` on stdin, and kills it if it has not exited
/// `timeout` after its start; its exit status says what became of the message.
pub fn deliver(
    command: &str,
    trace_headers: &[u8],
    body: &mut dyn BufRead,
    timeout: Duration,
) -> Delivery {
    let deadline = Instant::now() + timeout;
    let (mut process, stdin, stderr) = match start(command) {
        Ok(started) => started,
        Err(e) => {
            return Delivery::temporary(
                Detail::OtherMailSystem,
                format!("cannot run '{command}': {e}"),
            );
        }
    };
    let (ended, said) = match run(&mut process, stdin, stderr, trace_headers, body, deadline) {
        Ok(done) => done,
        Err(e) => {
            process.kill();
            return if e.kind() == ErrorKind::TimedOut {
                Delivery::temporary(
                    Detail::OtherMailSystem,
                    format!(
                        "'{command}' took longer than {} and was killed",
                        format_duration(timeout)
                    ),
                )
            } else {
                Delivery::temporary(
                    Detail::OtherMailSystem,
                    format!("cannot run '{command}': {e}"),
                )
            };
        }
    };
    let said = String::from_utf8_lossy(&said);
    let said = said.split_whitespace().collect::<Vec<_>>().join(" ");
    match ended {
        Ended::Exited(0) => Delivery::Done,
        Ended::Exited(EX_TEMPFAIL) => Delivery::temporary(
            Detail::OtherMailSystem,
            format!("'{command}' asked to try again later: {said}"),
        ),
        Ended::Exited(code) => Delivery::permanent(
            Detail::OtherMailSystem,
            format!("'{command}' failed with exit status {code}: {said}"),
        ),
        Ended::Signalled => Delivery::temporary(
            Detail::OtherMailSystem,
            format!("'{command}' was killed by a signal"),
        ),
    }
}

/// The command's process: a child of ours, or, under the `user` account, the privileged helper's, which runs it
/// as the owner of the aliases file.
enum Process {
    Ours(Child),
    Helper(RunningCommand),
}

impl Process {
    /// How it ended, without waiting; None while it runs.
    fn try_wait(&mut self) -> io::Result<Option<Ended>> {
        match self {
            Process::Ours(child) => Ok(child
                .try_wait()?
                .map(|status| status.code().map_or(Ended::Signalled, Ended::Exited))),
            Process::Helper(command) => command
                .wait_timeout(Duration::ZERO)
                .map_err(io::Error::other),
        }
    }

    /// Kills the command and everything it started, and reaps it (the helper does both once its reply socket
    /// is closed).
    fn kill(self) {
        if let Process::Ours(mut child) = self {
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = child.wait();
        }
    }
}

/// Starts the command in a process group of its own, with its stdin and stderr piped to us.
fn start(command: &str) -> io::Result<(Process, File, File)> {
    if let Some(helper) = helper::installed() {
        let (stdin, to_stdin) = pipe2(OFlag::O_CLOEXEC)?;
        let (from_stderr, stderr) = pipe2(OFlag::O_CLOEXEC)?;
        let running = helper
            .run_command(command, stdin, stderr)
            .map_err(io::Error::other)?;
        return Ok((
            Process::Helper(running),
            File::from(to_stdin),
            File::from(from_stderr),
        ));
    }
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let stdin = OwnedFd::from(child.stdin.take().expect("stdin is piped"));
    let stderr = OwnedFd::from(child.stderr.take().expect("stderr is piped"));
    Ok((Process::Ours(child), File::from(stdin), File::from(stderr)))
}

/// Feeds the message to the child and waits for its exit, draining stderr all along; Err(TimedOut) at the
/// deadline. Returns the exit status and the start of what the command said on stderr.
fn run(
    process: &mut Process,
    stdin: File,
    stderr: File,
    trace_headers: &[u8],
    body: &mut dyn BufRead,
    deadline: Instant,
) -> io::Result<(Ended, Vec<u8>)> {
    set_nonblocking(&stdin)?;
    set_nonblocking(&stderr)?;
    let mut input = Input {
        stdin,
        stderr: Stderr::new(stderr),
        deadline,
    };
    // A command that exits without reading everything closes the pipe (EPIPE): its exit status tells what
    // happened. Only the deadline ends the delivery here.
    let written = copy::copy(
        Format::PIPE,
        trace_headers,
        body,
        BufWriter::new(&mut input),
    )
    .and_then(|(mut out, _)| out.flush().map_err(CopyError::Write));
    if let Err(CopyError::Write(e)) = written
        && e.kind() == ErrorKind::TimedOut
    {
        return Err(e);
    }
    let Input {
        stdin, mut stderr, ..
    } = input;
    drop(stdin);
    loop {
        if let Some(status) = process.try_wait()? {
            // What is still in the pipe; a background process the command left may keep it open, and is
            // not waited for.
            stderr.drain()?;
            return Ok((status, stderr.kept));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ErrorKind::TimedOut.into());
        }
        if stderr.open {
            stderr.wait_and_drain(left.min(EXIT_POLL))?;
        } else {
            thread::sleep(left.min(EXIT_POLL));
        }
    }
}

/// The child's stdin as a writer that gives up at the deadline and drains stderr while it waits.
struct Input {
    stdin: File,
    stderr: Stderr,
    deadline: Instant,
}

impl Write for Input {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.stdin.write(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                other => return other,
            }
            let left = self.deadline.saturating_duration_since(Instant::now());
            let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
            let mut fds = [
                PollFd::new(self.stdin.as_fd(), PollFlags::POLLOUT),
                PollFd::new(self.stderr.pipe.as_fd(), PollFlags::POLLIN),
            ];
            if !self.stderr.open {
                fds[1].set_events(PollFlags::empty());
            }
            if left.is_zero() || poll(&mut fds, timeout)? == 0 {
                return Err(ErrorKind::TimedOut.into());
            }
            if fds[1].any().unwrap_or(false) {
                self.stderr.drain()?;
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The child's stderr, read as it comes; the first [`STDERR_KEPT`] bytes are kept.
struct Stderr {
    pipe: File,
    kept: Vec<u8>,
    /// Until end of file.
    open: bool,
}

impl Stderr {
    fn new(pipe: File) -> Stderr {
        Stderr {
            pipe,
            kept: Vec::new(),
            open: true,
        }
    }

    /// Reads what is in the pipe now.
    fn drain(&mut self) -> io::Result<()> {
        let mut chunk = [0; 4096];
        while self.open {
            match self.pipe.read(&mut chunk) {
                Ok(0) => self.open = false,
                Ok(n) => {
                    let room = STDERR_KEPT - self.kept.len();
                    self.kept.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Waits up to `timeout` for something to read, and reads it.
    fn wait_and_drain(&mut self, timeout: Duration) -> io::Result<()> {
        let timeout = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.pipe.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, timeout)? > 0 {
            self.drain()?;
        }
        Ok(())
    }
}

fn set_nonblocking(fd: &impl AsFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOON: Duration = Duration::from_secs(30);

    #[test]
    fn the_command_gets_the_message_and_its_exit_status_decides() {
        let temp = crate::testing::TempDir::new("pipe");
        let dir = temp.0.clone();
        let out = dir.join("out");
        let command = format!("cat > {}", out.display());
        let outcome = deliver(
            &command,
            b"Received: x\r\n",
            &mut &b"Subject: hi\r\n\r\nbody\r\n"[..],
            SOON,
        );
        assert_eq!(outcome, Delivery::Done);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"Received: x\nSubject: hi\n\nbody\n"
        );
        assert!(matches!(
            deliver("exit 75", b"", &mut &b""[..], SOON),
            Delivery::Temporary(_)
        ));
        match deliver(
            "echo no such list >&2; exit 1",
            b"",
            &mut &b"x\r\n"[..],
            SOON,
        ) {
            Delivery::Permanent(problem) => {
                assert_eq!(problem.status, "5.3.0");
                assert!(problem.diagnostic.contains("no such list"), "{problem:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// A message far bigger than a pipe holds, to a command that never reads it.
    #[test]
    fn a_command_that_never_reads_is_killed_at_the_deadline() {
        let message = vec![b'x'; 4 << 20];
        match deliver(
            "sleep 60",
            b"",
            &mut &message[..],
            Duration::from_millis(500),
        ) {
            Delivery::Temporary(problem) => {
                assert!(problem.diagnostic.contains("was killed"), "{problem:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_command_that_never_exits_is_killed_at_the_deadline() {
        let timeout = Duration::from_millis(500);
        match deliver("cat >/dev/null; sleep 60", b"", &mut &b"x\r\n"[..], timeout) {
            Delivery::Temporary(problem) => {
                assert!(problem.diagnostic.contains("was killed"), "{problem:?}")
            }
            other => panic!("{other:?}"),
        }
    }

    /// 1 MiB on stderr while the message goes in: stderr is read all along, the first bytes kept.
    #[test]
    fn a_chatty_command_is_drained_and_its_first_words_kept() {
        let message = vec![b'y'; 1 << 20];
        // Exit status 9 if writing stderr failed (a reader that stopped early: SIGPIPE).
        let command =
            "cat >/dev/null; head -c 1048576 /dev/zero | tr '\\0' e >&2 && exit 1; exit 9";
        match deliver(command, b"", &mut &message[..], SOON) {
            Delivery::Permanent(problem) => {
                assert!(
                    problem.diagnostic.contains("exit status 1: eeee"),
                    "{problem:?}"
                );
                assert!(problem.diagnostic.len() < 2 * STDERR_KEPT, "{problem:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}
