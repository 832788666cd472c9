//! Delivery to a command named by an alias (`|command`, only with `alias_commands = true`): the command runs
//! under /bin/sh with the message on stdin, LF line ends. Nothing from the client reaches the command line or
//! the environment; the command comes from the admin's aliases file alone.

use std::io::{BufRead, BufWriter, Read, Write};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::copy::{self, CopyError, Format};
use crate::delivery::transport::Delivery;

/// How long a command may take before it is killed and the delivery deferred.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// sysexits.h EX_TEMPFAIL: the command asks to be tried again later.
const EX_TEMPFAIL: i32 = 75;

/// Runs `command` with `trace_headers` and then the message on stdin.
pub fn deliver(command: &str, trace_headers: &[u8], body: &mut dyn BufRead) -> Delivery {
    let mut child = match Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(child) => child,
        Err(e) => return Delivery::temporary("4.3.0", format!("cannot run '{command}': {e}")),
    };
    let mut stdin = child.stdin.take().expect("stdin is piped");
    let mut stderr = child.stderr.take().expect("stderr is piped");
    let errors = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.by_ref().take(4096).read_to_string(&mut text);
        text
    });
    // A command that exits without reading everything closes the pipe: its exit status tells what happened.
    let _ = copy::copy(
        Format::PIPE,
        trace_headers,
        body,
        BufWriter::new(&mut stdin),
    )
    .and_then(|(mut out, _)| out.flush().map_err(CopyError::Write));
    drop(stdin);
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Delivery::temporary(
                    "4.3.0",
                    format!(
                        "'{command}' took longer than {}s and was killed",
                        COMMAND_TIMEOUT.as_secs()
                    ),
                );
            }
            Err(e) => {
                return Delivery::temporary("4.3.0", format!("cannot wait for '{command}': {e}"));
            }
        }
    };
    let said = errors.join().unwrap_or_default();
    let said = said.lines().next().unwrap_or("").trim();
    match status.code() {
        Some(0) => Delivery::Done,
        Some(EX_TEMPFAIL) => Delivery::temporary(
            "4.3.0",
            format!("'{command}' asked to try again later: {said}"),
        ),
        Some(code) => Delivery::permanent(
            "5.3.0",
            format!("'{command}' failed with exit status {code}: {said}"),
        ),
        None => Delivery::temporary("4.3.0", format!("'{command}' was killed by a signal")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        );
        assert_eq!(outcome, Delivery::Done);
        assert_eq!(
            std::fs::read(&out).unwrap(),
            b"Received: x\nSubject: hi\n\nbody\n"
        );
        assert!(matches!(
            deliver("exit 75", b"", &mut &b""[..]),
            Delivery::Temporary(_)
        ));
        match deliver("echo no such list >&2; exit 1", b"", &mut &b"x\r\n"[..]) {
            Delivery::Permanent(problem) => {
                assert_eq!(problem.status, "5.3.0");
                assert!(problem.diagnostic.contains("no such list"), "{problem:?}");
            }
            other => panic!("{other:?}"),
        }
    }
}
