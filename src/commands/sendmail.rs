//! `postel sendmail` (and the binary called as `sendmail`): the interface cron, mail(1), mutt and git send-email
//! use to submit mail, with the options they pass.

use std::io::{self, BufRead};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::Utc;
use log::info;

use crate::commands::queue;
use crate::config::Config;
use crate::delivery::attempt::Deliverer;
use crate::delivery::runner::{self, HandedTo};
use crate::server::connection::Client;
use crate::server::inetd;
use crate::smtp::parse_mailbox;
use crate::spool::{self, QueueId};
use crate::submit::{self, Options};

/// sysexits.h codes, as sendmail's callers expect them.
pub const EX_USAGE: u8 = 64;
pub const EX_DATAERR: u8 = 65;
pub const EX_SOFTWARE: u8 = 70;
pub const EX_TEMPFAIL: u8 = 75;
pub const EX_CONFIG: u8 = 78;

/// A failure: the exit status and what to say.
pub type Failure = (u8, String);

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
pub fn parse(args: &[String]) -> Result<Invocation, Failure> {
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
        let mut value = |rest: &str| -> Result<String, Failure> {
            if rest.is_empty() {
                args.next()
                    .cloned()
                    .ok_or_else(|| usage(&format!("-{flag} needs a value")))
            } else {
                Ok(rest.to_string())
            }
        };
        match flag.split_at(1) {
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
            ("b", other) => return Err(usage(&format!("-b{other} is not supported"))),
            ("q", _) => invocation.mode = Mode::RunQueue,
            ("o" | "B" | "N" | "R" | "X" | "h" | "L" | "O" | "V" | "e" | "m" | "n", _) => {}
            _ => return Err(usage(&format!("unknown option {arg}"))),
        }
    }
    Ok(invocation)
}

fn usage(what: &str) -> Failure {
    (
        EX_USAGE,
        format!(
            "sendmail: {what}\nusage: sendmail [-t] [-i] [-f sender] [-F name] [-bs|-bp|-q] [-v] [recipient...]"
        ),
    )
}

/// The configuration file sendmail runs with: --config, then -C, then $POSTEL_CONFIG, then the system file; None:
/// the built-in defaults.
fn config_path(invocation: &Invocation) -> Option<PathBuf> {
    Config::find(
        invocation
            .config
            .clone()
            .or_else(|| invocation.dash_c.clone()),
    )
}

fn config(invocation: &Invocation) -> Result<Config, Failure> {
    match config_path(invocation) {
        Some(path) => Config::load(&path).map_err(|e| (EX_CONFIG, e.to_string())),
        None => Ok(Config::builtin()),
    }
}

/// Runs sendmail as invoked.
pub fn run(
    invocation: Invocation,
    stdin: &mut dyn BufRead,
    out: &mut dyn io::Write,
) -> Result<(), Failure> {
    let config = config(&invocation)?;
    let software = |e: String| (EX_SOFTWARE, e);
    match invocation.mode {
        Mode::List => queue::list(&config, out).map_err(software),
        Mode::RunQueue => queue::run(config, None, out).map_err(software),
        Mode::Smtp => {
            let client = Client {
                ip: None,
                label: "local".into(),
                trusted: true,
            };
            let session_id = format!("l{}", std::process::id());
            inetd::run_on_stdio(config, &client, &session_id).map_err(|e| software(e.to_string()))
        }
        Mode::Deliver => submit(config, &invocation, stdin),
    }
}

fn submit(config: Config, invocation: &Invocation, stdin: &mut dyn BufRead) -> Result<(), Failure> {
    let login = nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map_or_else(|| "nobody".to_string(), |user| user.name);
    let hostname = config.hostname.clone();
    let qualify = |address: &str| {
        if address.contains('@') || address.is_empty() {
            address.to_string()
        } else {
            format!("{address}@{hostname}")
        }
    };
    let sender = match invocation.sender.as_deref() {
        Some(sender) => qualify(sender.trim_start_matches('<').trim_end_matches('>')),
        None => format!("{login}@{hostname}"),
    };
    let now = Utc::now();
    let message_id = format!(
        "{}.{}@{hostname}",
        now.timestamp_micros(),
        std::process::id()
    );
    let header_sender = if sender.is_empty() {
        format!("MAILER-DAEMON@{hostname}")
    } else {
        sender.clone()
    };
    let read_error = |e: io::Error| {
        (
            EX_TEMPFAIL,
            format!("sendmail: cannot read the message: {e}"),
        )
    };
    let prepared = submit::prepare(stdin, &invocation.options, &header_sender, &message_id, now)
        .map_err(read_error)?;
    let mut recipients = Vec::new();
    for address in invocation
        .recipients
        .iter()
        .chain(&prepared.header_recipients)
    {
        let address = qualify(address.trim_start_matches('<').trim_end_matches('>'));
        if parse_mailbox(&address, true).is_err() {
            return Err((
                EX_DATAERR,
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
    let deliverer = Arc::new(Deliverer::open(config).map_err(|e| (EX_CONFIG, e.to_string()))?);
    let spool = &deliverer.spool;
    let mut writer = spool.new_message(spool::Envelope {
        id: QueueId::default(),
        arrival: now,
        client: "unknown".into(),
        helo: login,
        protocol: "local".into(),
        sender,
        recipients,
        body: None,
        smtputf8: false,
        declared_size: None,
    });
    writer.write(&prepared.headers);
    if !prepared.ended {
        submit::copy_body(stdin, invocation.options.ignore_dots, &mut |bytes| {
            writer.write(bytes)
        })
        .map_err(read_error)?;
    }
    let queued = spool.commit(writer).map_err(|e| {
        (
            EX_TEMPFAIL,
            format!("sendmail: cannot queue the message: {e}"),
        )
    })?;
    let id = queued.envelope.id.clone();
    info!(
        "{id}: from=<{}>, size={}, nrcpt={} (queued by sendmail)",
        queued.envelope.sender,
        queued.len,
        queued.envelope.recipients.len()
    );
    match runner::hand_off(&deliverer, vec![queued]) {
        Ok(HandedTo::Daemon(pid)) => info!("{id}: handed to the daemon (pid {pid})"),
        Ok(HandedTo::Here) => info!("{id}: delivery attempted"),
        Ok(HandedTo::Nobody) => {
            info!("{id}: queued; the program that holds the spool will deliver it")
        }
        Err(e) => log::warn!("{id}: queued, but not delivered yet: {e}"),
    }
    Ok(())
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
        for bad in ["-f", "-Z", "-bz", "--config"] {
            assert_eq!(parse(&args(bad)).unwrap_err().0, EX_USAGE, "{bad}");
        }
    }
}
