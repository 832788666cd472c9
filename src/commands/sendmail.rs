//! `postel sendmail` (and the binary called as `sendmail`): the interface cron, mail(1), mutt and git send-email
//! use to submit mail, with the options they pass.

use std::io::{self, BufRead};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::{DateTime, Utc};
use log::info;
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::commands::{CliError, Exit, queue};
use crate::config::Config;
use crate::delivery::aliases::Aliases;
use crate::delivery::attempt::Deliverer;
use crate::delivery::control;
use crate::privilege;
use crate::server::connection::{Client, Port};
use crate::server::inetd;
use crate::smtp::parse_mailbox;
use crate::spool::{self, QueueId, Queued, Spool};
use crate::submit::{self, Options, Prepared};

#[derive(Debug, Default, PartialEq, Eq)]
enum Mode {
    /// Read a message from stdin and queue it (-bm, the default).
    #[default]
    Deliver,
    /// An SMTP session on stdin/stdout (-bs).
    Smtp,
    /// The queue listing (-bp, or called as mailq).
    List,
    /// Run the queue (-q).
    RunQueue,
    /// Check the aliases file and have the daemon read it again (-bi, or called as newaliases).
    Aliases,
}

/// The parsed command line.
#[derive(Debug, Default)]
pub struct Invocation {
    mode: Mode,
    /// --config, right after `sendmail`.
    config: Option<PathBuf>,
    /// -C: sendmail's own way to name a configuration file.
    dash_c: Option<PathBuf>,
    sender: Option<String>,
    options: Options,
    recipients: Vec<String>,
    /// -v: tell what happened.
    pub verbose: bool,
}

/// Reads sendmail's options. Options sendmail knows but that change nothing here (-oem, -odb, -B8BITMIME, -N...)
/// are accepted and ignored, as other mailers do.
pub fn parse(args: &[String]) -> Result<Invocation, CliError> {
    let mut invocation = Invocation::default();
    let mut args = args.iter().peekable();
    if args.peek().is_some_and(|a| *a == "--config") {
        args.next();
        invocation.config = Some(args.next().ok_or(usage("--config needs a file"))?.into());
    }
    while let Some(arg) = args.next() {
        if arg == "--" {
            invocation.recipients.extend(args.by_ref().cloned());
            break;
        }
        let Some(flag) = arg.strip_prefix('-').filter(|f| !f.is_empty()) else {
            invocation.recipients.push(arg.clone());
            continue;
        };
        // Options with a value take it from the same word (-fsender) or the next (-f sender).
        let mut value = |rest: &str| -> Result<String, CliError> {
            if rest.is_empty() {
                args.next()
                    .cloned()
                    .ok_or_else(|| usage(&format!("-{flag} needs a value")))
            } else {
                Ok(rest.to_string())
            }
        };
        // The option letter and what follows it in the same word; the letter may be any character.
        let letter = flag.chars().next().map_or(0, char::len_utf8);
        match flag.split_at(letter) {
            ("t", "") => invocation.options.recipients_from_headers = true,
            ("i", "") => invocation.options.ignore_dots = true,
            ("o", "i") => invocation.options.ignore_dots = true,
            ("v", "") => invocation.verbose = true,
            ("f" | "r", rest) => invocation.sender = Some(value(rest)?),
            ("F", rest) => invocation.options.full_name = Some(value(rest)?),
            ("C", rest) => invocation.dash_c = Some(value(rest)?.into()),
            ("b", "s") => invocation.mode = Mode::Smtp,
            ("b", "p") => invocation.mode = Mode::List,
            ("b", "m") => invocation.mode = Mode::Deliver,
            ("b", "i") => invocation.mode = Mode::Aliases,
            ("b", other) => return Err(usage(&format!("-b{other} is not supported"))),
            ("q", _) => invocation.mode = Mode::RunQueue,
            ("o" | "B" | "N" | "R" | "X" | "h" | "L" | "O" | "V" | "e" | "m" | "n", _) => {}
            _ => return Err(usage(&format!("unknown option {arg}"))),
        }
    }
    Ok(invocation)
}

fn usage(what: &str) -> CliError {
    CliError::new(
        Exit::Usage,
        format!(
            "sendmail: {what}\nusage: sendmail [-t] [-i] [-f sender] [-F name] [-bm|-bs|-bp|-bi|-q] [-v] [-C file] [recipient...]"
        ),
    )
}

/// The configuration file sendmail runs with: --config, then -C, then $POSTEL_CONFIG, then the system file; None:
/// the built-in defaults. A set-id sendmail takes the system file (or the defaults) whatever its caller says.
fn config_path(invocation: &Invocation) -> Option<PathBuf> {
    let given = invocation
        .config
        .clone()
        .or_else(|| invocation.dash_c.clone());
    Config::find(given, !privilege::untrusted_caller())
}

fn config(invocation: &Invocation) -> Result<Config, CliError> {
    match config_path(invocation) {
        Some(path) => Ok(Config::load(&path)?),
        None => Ok(Config::builtin()),
    }
}

/// Runs sendmail as invoked.
pub fn run(
    invocation: Invocation,
    stdin: &mut dyn BufRead,
    out: &mut dyn io::Write,
) -> Result<(), CliError> {
    let config = config(&invocation)?;
    if !matches!(invocation.mode, Mode::Smtp | Mode::Deliver) {
        // -bs reads the TLS key first and becomes the account itself; a submission queues as the account and
        // leaves the delivery to a program of its own (see submit).
        privilege::become_account(&config)?;
    }
    match invocation.mode {
        Mode::List => queue::list(&config, out),
        Mode::RunQueue => queue::run(config, None, out),
        Mode::Smtp => {
            let client = Client {
                ip: None,
                label: "local".into(),
                trusted: true,
                port: Port::Smtp,
            };
            let session_id = format!("l{}", std::process::id());
            Ok(inetd::run_on_stdio(config, &client, &session_id)?)
        }
        Mode::Deliver => submit(config, &invocation, stdin),
        Mode::Aliases => newaliases(&config, out),
    }
}

/// -bi (newaliases): checks the aliases file, says how many aliases it holds, and has the running daemon read it
/// again (SIGHUP). There is no database to build: the daemon reads the text file itself.
fn newaliases(config: &Config, out: &mut dyn io::Write) -> Result<(), CliError> {
    let Some(path) = &config.aliases else {
        writeln!(
            out,
            "newaliases: no aliases file is configured (key 'aliases')"
        )?;
        return Ok(());
    };
    let aliases = Aliases::load(path).map_err(|e| CliError::from(e).context("newaliases: "))?;
    writeln!(out, "{}: {} aliases", path.display(), aliases.len())?;
    let daemon = Spool::open(&config.spool_dir)
        .ok()
        .and_then(|spool| spool.owner());
    if let Some(pid) = daemon {
        let signalled = i32::try_from(pid)
            .map_err(|_| Errno::ESRCH)
            .and_then(|pid| kill(Pid::from_raw(pid), Signal::SIGHUP));
        if let Err(e) = signalled {
            let exit = if e == Errno::EPERM {
                Exit::NoPerm
            } else {
                Exit::OsErr
            };
            let message =
                format!("newaliases: cannot tell the daemon (pid {pid}) to read it again: {e}");
            return Err(CliError::new(exit, message));
        }
        info!(
            "told the daemon (pid {pid}) to read {} again",
            path.display()
        );
    }
    Ok(())
}

/// Reads the message on stdin, queues it, and sees that it gets delivered. Run by root with `user` set, the message
/// is written into the spool as the account (whose files the spool holds), and the delivery is then started as
/// root, so that it too starts the privileged helper before it becomes the account.
fn submit(
    config: Config,
    invocation: &Invocation,
    stdin: &mut dyn BufRead,
) -> Result<(), CliError> {
    // The caller submits, whatever account the message is queued as.
    let submitter = Submitter::new(&config.hostname, invocation.sender.as_deref());
    let now = Utc::now();
    let prepared = submit::prepare(
        stdin,
        &invocation.options,
        &submitter.header_sender(),
        &submitter.message_id(now),
        now,
    )
    .map_err(read_error)?;
    let recipients = submitter.recipients(
        invocation
            .recipients
            .iter()
            .chain(&prepared.header_recipients),
    )?;
    let envelope = submitter.envelope(now, recipients);
    let ignore_dots = invocation.options.ignore_dots;
    let (deliverer, queued) = privilege::as_account(&config, || {
        let deliverer = Deliverer::open(config.clone())?;
        let queued = queue_message(&deliverer.spool, envelope, &prepared, stdin, ignore_dots)?;
        Ok::<_, CliError>((deliverer, queued))
    })?;
    hand_off(
        &deliverer,
        config_path(invocation).as_deref(),
        &queued.envelope.id,
    );
    Ok(())
}

/// Who submits a message: the login running sendmail on this host, and the envelope sender.
struct Submitter {
    login: String,
    hostname: String,
    /// The bare envelope sender; empty for the null sender.
    sender: String,
}

impl Submitter {
    /// The sender is `-f`'s (qualified with the host name when it has no domain), else
    /// `<login>@<hostname>`.
    fn new(hostname: &str, sender: Option<&str>) -> Submitter {
        let login = nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map_or_else(|| "nobody".to_string(), |user| user.name);
        let mut submitter = Submitter {
            sender: format!("{login}@{hostname}"),
            login,
            hostname: hostname.to_string(),
        };
        if let Some(sender) = sender {
            submitter.sender = submitter.qualify(sender);
        }
        submitter
    }

    /// The bare address, with `@<hostname>` added when it has no domain.
    fn qualify(&self, address: &str) -> String {
        let address = address.trim_start_matches('<').trim_end_matches('>');
        if address.contains('@') || address.is_empty() {
            address.to_string()
        } else {
            format!("{address}@{}", self.hostname)
        }
    }

    /// The address for a From header the message lacks.
    fn header_sender(&self) -> String {
        if self.sender.is_empty() {
            format!("MAILER-DAEMON@{}", self.hostname)
        } else {
            self.sender.clone()
        }
    }

    /// A Message-ID for a message that lacks one.
    fn message_id(&self, now: DateTime<Utc>) -> String {
        format!(
            "{}.{}@{}",
            now.timestamp_micros(),
            std::process::id(),
            self.hostname
        )
    }

    /// The recipients, qualified, checked and without duplicates.
    fn recipients<'a>(
        &self,
        addresses: impl Iterator<Item = &'a String>,
    ) -> Result<Vec<String>, CliError> {
        let mut recipients = Vec::new();
        for address in addresses {
            let address = self.qualify(address);
            if parse_mailbox(&address, true).is_err() {
                return Err(CliError::new(
                    Exit::DataErr,
                    format!("sendmail: bad recipient address '{address}'"),
                ));
            }
            if !recipients.contains(&address) {
                recipients.push(address);
            }
        }
        if recipients.is_empty() {
            return Err(usage(
                "no recipients given (name them, or use -t to take them from the headers)",
            ));
        }
        Ok(recipients)
    }

    fn envelope(self, now: DateTime<Utc>, recipients: Vec<String>) -> spool::Envelope {
        spool::Envelope {
            helo: self.login,
            ..spool::Envelope::new(self.sender, recipients, now)
        }
    }
}

/// The message could not be read from stdin, so it is not queued.
fn read_error(e: io::Error) -> CliError {
    CliError::new(
        Exit::TempFail,
        format!("sendmail: cannot read the message: {e}"),
    )
}

/// Writes the prepared headers and the rest of stdin into the spool, durably.
fn queue_message(
    spool: &Spool,
    envelope: spool::Envelope,
    prepared: &Prepared,
    stdin: &mut dyn BufRead,
    ignore_dots: bool,
) -> Result<Queued, CliError> {
    let mut writer = spool.new_message(envelope);
    writer.write(&prepared.headers);
    if !prepared.ended {
        submit::copy_body(stdin, ignore_dots, &mut |bytes| writer.write(bytes))
            .map_err(read_error)?;
    }
    let queued = spool.commit(writer).map_err(|e| {
        CliError::new(
            Exit::TempFail,
            format!("sendmail: cannot queue the message: {e}"),
        )
    })?;
    info!(
        "{}: from=<{}>, size={}, nrcpt={} (queued by sendmail)",
        queued.envelope.id,
        queued.envelope.sender,
        queued.len,
        queued.envelope.recipients.len()
    );
    Ok(queued)
}

/// Sees that the queued message gets delivered: the program that holds the spool (the daemon) is rung, and
/// delivers it; with nobody holding it, a delivery is started in the background when this caller may deliver.
/// The message is queued either way, so what goes wrong here is only logged.
fn hand_off(deliverer: &Deliverer, config: Option<&Path>, id: &QueueId) {
    if deliverer.config.delivery_workers == 0 {
        info!("{id}: held in the queue (delivery_workers = 0)");
    } else if let Some(pid) = deliverer.spool.owner() {
        match control::ring(pid) {
            Ok(()) => info!("{id}: handed to the daemon (pid {pid})"),
            Err(e) => info!(
                "{id}: queued; the daemon (pid {pid}) picks it up within seconds (cannot signal it: {e})"
            ),
        }
    } else if privilege::may_deliver_in_process(&deliverer.config) {
        match start_delivery(config, id) {
            Ok(pid) => info!("{id}: queued; delivering in the background (pid {pid})"),
            Err(e) => log::warn!(
                "{id}: queued, but the delivery could not be started ({e}); it waits for 'postel queue run'"
            ),
        }
    } else {
        info!(
            "{id}: queued; no daemon runs, so it waits for the next 'postel queue run' (only root and the \
             spool's owner deliver from sendmail)"
        );
    }
}

/// Starts `postel queue deliver ID` detached from the caller: its own process group, no terminal, standard
/// streams on /dev/null, so that mail(1) or cron does not wait for it. Returns its pid.
fn start_delivery(config: Option<&Path>, id: &QueueId) -> io::Result<u32> {
    let mut command = Command::new(std::env::current_exe()?);
    // As `postel`, whatever this binary's file is called (the package's sendmail is a copy).
    command.arg0("postel").args(["queue", "deliver"]);
    if let Some(path) = config {
        command.arg("--config").arg(path);
    }
    let child = command
        .arg(id.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()?;
    Ok(child.id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split(' ')
            .filter(|a| !a.is_empty())
            .map(String::from)
            .collect()
    }

    #[test]
    fn the_options_cron_mutt_and_git_use() {
        let cron = parse(&args("-FCronDaemon -i -B8BITMIME -oem alice")).unwrap();
        assert_eq!(cron.options.full_name.as_deref(), Some("CronDaemon"));
        assert!(cron.options.ignore_dots);
        assert_eq!(cron.recipients, ["alice"]);
        let mutt = parse(&args("-oem -oi -- bob@x.test carol")).unwrap();
        assert!(mutt.options.ignore_dots);
        assert_eq!(mutt.recipients, ["bob@x.test", "carol"]);
        let git = parse(&args("-i -f me@x.test -t")).unwrap();
        assert_eq!(git.sender.as_deref(), Some("me@x.test"));
        assert!(git.options.recipients_from_headers);
        assert_eq!(parse(&args("-bs")).unwrap().mode, Mode::Smtp);
        assert_eq!(parse(&args("-bp")).unwrap().mode, Mode::List);
        assert_eq!(parse(&args("-bi")).unwrap().mode, Mode::Aliases);
        assert_eq!(parse(&args("-q")).unwrap().mode, Mode::RunQueue);
        assert_eq!(parse(&args("-q30m")).unwrap().mode, Mode::RunQueue);
        let configured = parse(&args("--config /x.toml -C /y.toml bob")).unwrap();
        assert_eq!(config_path(&configured), Some(PathBuf::from("/x.toml")));
        assert_eq!(
            config_path(&parse(&args("-C /y.toml bob")).unwrap()),
            Some(PathBuf::from("/y.toml"))
        );
    }

    #[test]
    fn bad_options_are_usage_errors() {
        for bad in ["-f", "-Z", "-bz", "--config", "-é", "-bé", "-€x"] {
            let error = parse(&args(bad)).unwrap_err();
            assert_eq!(error.exit, Exit::Usage, "{bad}");
            assert!(error.message.starts_with("sendmail: "), "{bad}: {error}");
        }
        assert!(
            parse(&args("-é"))
                .unwrap_err()
                .message
                .contains("unknown option -é")
        );
    }
}
