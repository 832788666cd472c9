//! The `postel` command: `serve`, `inetd`, `check`, `passwd`, `queue`, `atrn` and `sendmail` — and `sendmail`, `mailq`
//! and `newaliases` when the binary is called by those names.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use nix::sys::signal::{SigSet, Signal};
use postel::classroom;
use postel::commands::{CliError, Exit, atrn, check, passwd, queue, sendmail};
use postel::config::{Config, LocalUsers};
use postel::logging;
use postel::privilege;
use postel::server;

const USAGE: &str = "\
usage: postel serve [--config FILE] [--listen ADDR]... [--spool DIR] [--mailboxes DIR] [--explain]
       postel demo [--listen ADDR]...
       postel inetd [--config FILE] [--spool DIR] [--mailboxes DIR]
       postel check [--config FILE]
       postel passwd NAME [--config FILE]
       postel queue list|run [--domain D]|show ID|remove ID|deliver ID... [--config FILE]
       postel atrn --server HOST[:PORT] --domain D[,D...] [--config FILE]
       postel sendmail [--config FILE] [sendmail options] [recipient...]

  serve     run the SMTP server (127.0.0.1:2525, ./spool and ./mailboxes unless configured); --explain
            shows every session on stdout, each command and reply explained
  demo      the server for a class: built-in defaults, any user name accepted, every session explained
  inetd     run one SMTP session on stdin/stdout, for inetd, xinetd or systemd socket activation
  check     validate the configuration and the files it names (aliases, TLS, auth_users) and print it,
            with every default, as TOML
  passwd    set NAME's password in the auth_users file (read from stdin; asked twice on a terminal)
  queue     list the queued messages, run the queue now, show or remove one message, deliver some now
  atrn      ask an On-Demand Mail Relay provider (RFC 2645, port 366) for the mail it holds for our
            domains, logging in with smarthost_credentials over verified TLS, and take it in here
  sendmail  submit a message from a local program, as /usr/sbin/sendmail does

Called as 'sendmail', 'mailq' or 'newaliases' the binary acts as 'postel sendmail', 'postel queue list'
or 'postel sendmail -bi' (check the aliases file and have the daemon read it again).
Logging goes to stderr or syslog (the log key); RUST_LOG=debug shows every SMTP dialogue.";

/// Options every subcommand but sendmail takes.
#[derive(Default)]
struct Options {
    config: Option<PathBuf>,
    listen: Vec<String>,
    spool: Option<PathBuf>,
    mailboxes: Option<PathBuf>,
    /// Words that are not options: the queue command's action and id.
    words: Vec<String>,
    /// `queue run --domain D`, `atrn --domain D`.
    domain: Option<String>,
    /// `atrn --server HOST:PORT`.
    server: Option<String>,
    /// `serve --explain`.
    explain: bool,
}

fn main() -> ExitCode {
    // SIGUSR1 is the daemon's doorbell, and programs ring whoever holds the spool: in any other program that
    // holds it (inetd, sendmail's delivery, queue run) it must not kill. They look for new mail before they let
    // go of the spool instead. Blocked before any thread starts, so that every thread inherits the mask.
    let mut doorbell = SigSet::empty();
    doorbell.add(Signal::SIGUSR1);
    let _ = doorbell.thread_block();
    let result = arguments().and_then(|args| match invoked(args) {
        Program::Sendmail(args) => run_sendmail(&args),
        Program::Postel(args) => {
            let mode = if args.first().is_some_and(|a| a == "inetd") {
                logging::Mode::Inetd
            } else {
                logging::Mode::Other
            };
            logging::init("info", mode);
            run(args)
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            logging::fatal(&e);
            ExitCode::from(e.exit.code())
        }
    }
}

/// The command line, every word of it UTF-8.
fn arguments() -> Result<Vec<String>, CliError> {
    std::env::args_os()
        .map(|arg| {
            arg.into_string().map_err(|arg| {
                let arg = arg.to_string_lossy();
                CliError::new(Exit::Usage, format!("argument '{arg}' is not UTF-8"))
            })
        })
        .collect()
}

/// Which program a command line runs, and its arguments.
#[derive(Debug, PartialEq, Eq)]
enum Program {
    Sendmail(Vec<String>),
    Postel(Vec<String>),
}

/// The program the binary runs as: sendmail when called `sendmail` or as `postel sendmail`, the
/// queue listing when called `mailq`, `sendmail -bi` when called `newaliases`, else `postel` with its subcommands. An empty command line (a
/// caller may exec with no argv[0]) is `postel` without a command.
fn invoked(args: Vec<String>) -> Program {
    let mut args = args.into_iter();
    let called_as = args.next().map(|arg0| {
        Path::new(&arg0)
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    let mut args: Vec<String> = args.collect();
    match called_as.as_deref() {
        Some("sendmail") => Program::Sendmail(args),
        Some("newaliases") => {
            Program::Sendmail(["-bi".to_string()].into_iter().chain(args).collect())
        }
        Some("mailq") => Program::Postel(
            ["queue", "list"]
                .map(String::from)
                .into_iter()
                .chain(args)
                .collect(),
        ),
        _ if args.first().is_some_and(|a| a == "sendmail") => {
            args.remove(0);
            Program::Sendmail(args)
        }
        _ => Program::Postel(args),
    }
}

/// sendmail is quiet unless -v: cron mails whatever a job prints.
fn run_sendmail(args: &[String]) -> Result<(), CliError> {
    let invocation = sendmail::parse(args)?;
    logging::init(
        if invocation.verbose { "info" } else { "warn" },
        logging::Mode::Other,
    );
    let stdin = std::io::stdin();
    sendmail::run(invocation, &mut stdin.lock(), &mut std::io::stdout())
}

/// A usage error, with the usage after it.
fn usage(what: &str) -> CliError {
    CliError::new(Exit::Usage, format!("{what}\n{USAGE}"))
}

fn run(args: Vec<String>) -> Result<(), CliError> {
    let Some((command, rest)) = args.split_first() else {
        return Err(usage("a command is needed"));
    };
    if matches!(command.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return Ok(());
    }
    if command == "privileged-helper" {
        return run_helper();
    }
    let options = parse_options(rest)?;
    if !matches!(command.as_str(), "serve" | "demo") && !options.listen.is_empty() {
        return Err(usage("--listen applies to 'serve' and 'demo' only"));
    }
    if command != "serve" && options.explain {
        return Err(usage("--explain applies to 'serve' only"));
    }
    if command == "demo" {
        if options.config.is_some() || options.spool.is_some() || options.mailboxes.is_some() {
            return Err(usage(
                "'demo' runs on the built-in defaults; use 'serve --explain' with a configuration",
            ));
        }
        return demo(&options);
    }
    if !matches!(command.as_str(), "queue" | "passwd") && !options.words.is_empty() {
        return Err(usage(&format!(
            "unexpected argument '{}'",
            options.words[0]
        )));
    }
    let config = load_config(&options, command != "serve")?;
    logging::route(&config);
    if command == "queue" {
        // Root working on the queue does so as the server's account, which owns the spool.
        privilege::become_account(&config)?;
    }
    let mut out = std::io::stdout();
    match command.as_str() {
        "serve" if options.explain => {
            let _explain = classroom::explain(Box::new(out), classroom::colour_wanted());
            Ok(server::serve(config)?)
        }
        "serve" => Ok(server::serve(config)?),
        "inetd" => Ok(server::inetd::run(config)?),
        "atrn" => match (&options.server, &options.domain) {
            (Some(server), Some(domains)) => atrn::run(config, server, domains, &mut out),
            _ => Err(usage(
                "usage: postel atrn --server HOST[:PORT] --domain D[,D...] [--config FILE]",
            )),
        },
        "check" => check::run(&config, &mut out).map_err(|e| CliError::new(Exit::Config, e)),
        "passwd" => match options.words.as_slice() {
            [name] => {
                passwd::run(&config, name, &mut out).map_err(|e| CliError::new(Exit::DataErr, e))
            }
            _ => Err(usage("usage: postel passwd NAME [--config FILE]")),
        },
        "queue" => match options
            .words
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice()
        {
            ["list"] | [] => queue::list(&config, &mut out),
            ["run"] => queue::run(config, options.domain.as_deref(), &mut out),
            ["show", id] => queue::show(&config, id, &mut out),
            ["remove", id] => queue::remove(config, id, &mut out),
            ["deliver", ids @ ..] if !ids.is_empty() => queue::deliver(config, ids, &mut out),
            _ => Err(usage(
                "usage: postel queue list|run [--domain D]|show ID|remove ID|deliver ID...",
            )),
        },
        other => Err(usage(&format!("unknown command '{other}'"))),
    }
}

/// The privileged helper (see privilege::helper); not for a user who runs a set-id binary. Root may run it from
/// one: root's sendmail, a set-group-id copy, starts a delivery that starts the helper from the same file.
fn run_helper() -> Result<(), CliError> {
    if privilege::untrusted_caller() {
        return Err(CliError::new(
            Exit::NoPerm,
            "privileged-helper: not for set-id use",
        ));
    }
    postel::privileged::run()
        .map_err(|e| CliError::new(Exit::OsErr, format!("privileged helper: {e}")))
}

/// `postel demo`: the server on the built-in defaults, any local user name accepted, every session explained.
fn demo(options: &Options) -> Result<(), CliError> {
    let mut config = load_config(options, false)?;
    config.local_users = LocalUsers::Any;
    logging::route(&config);
    std::fs::create_dir_all(&config.mailbox_dir).map_err(|e| {
        CliError::new(
            Exit::IoErr,
            format!("cannot create {}: {e}", config.mailbox_dir.display()),
        )
    })?;
    let listen = config.listen[0];
    let (host, port) = (listen.ip(), listen.port());
    println!(
        "Postel demo: an SMTP server on {listen}, mail spooled in {} and delivered to {}/<user>.
Any user name is accepted at localhost. Connect from another terminal and type SMTP by hand:
    nc -C {host} {port}          (-C sends CR LF, as SMTP wants)
    telnet {host} {port}
    swaks --server {host}:{port} --to alice@localhost
Every session shows up below: C: the client's lines, S: the server's replies, and between them,
indented, what the server does. Stop with Ctrl-C.
",
        config.spool_dir.display(),
        config.mailbox_dir.display()
    );
    let _explain = classroom::explain(Box::new(std::io::stdout()), classroom::colour_wanted());
    Ok(server::serve(config)?)
}

fn parse_options(args: &[String]) -> Result<Options, CliError> {
    let mut options = Options::default();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag, Some(value.to_string())),
            _ => (arg.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next().cloned())
                .ok_or_else(|| usage(&format!("{flag} needs a value")))
        };
        match flag {
            "--config" => options.config = Some(value()?.into()),
            "--listen" => options.listen.push(value()?),
            "--spool" => options.spool = Some(value()?.into()),
            "--mailboxes" => options.mailboxes = Some(value()?.into()),
            "--domain" => options.domain = Some(value()?),
            "--server" => options.server = Some(value()?),
            "--explain" => options.explain = true,
            _ if !flag.starts_with('-') => options.words.push(arg.clone()),
            _ => return Err(usage(&format!("unknown option '{arg}'"))),
        }
    }
    Ok(options)
}

/// The configuration file (or the built-in defaults), then the command-line overrides. Commands other than
/// `serve` also find the file through $POSTEL_CONFIG and the system path, as sendmail does.
fn load_config(options: &Options, look_around: bool) -> Result<Config, CliError> {
    // A set-id binary's caller chooses no configuration, nor the directories.
    let trusted = !privilege::untrusted_caller();
    if !trusted && (options.spool.is_some() || options.mailboxes.is_some()) {
        return Err(usage(
            "--spool and --mailboxes are for root and the server's account",
        ));
    }
    let path = if look_around {
        Config::find(options.config.clone(), trusted)
    } else {
        options.config.clone().filter(|_| trusted)
    };
    let mut config = match path {
        Some(path) => Config::load(&path)?,
        None => Config::builtin(),
    };
    if !options.listen.is_empty() {
        config.listen = options
            .listen
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|_| usage(&format!("--listen: '{a}' is not an ip:port address")))
            })
            .collect::<Result<_, _>>()?;
    }
    if let Some(dir) = &options.spool {
        config.spool_dir = dir.clone();
    }
    if let Some(dir) = &options.mailboxes {
        config.mailbox_dir = dir.clone();
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn the_name_and_the_first_word_choose_the_program() {
        let cases = [
            ("/usr/sbin/sendmail -t", Program::Sendmail(words("-t"))),
            ("postel sendmail -t", Program::Sendmail(words("-t"))),
            ("mailq -v", Program::Postel(words("queue list -v"))),
            ("/usr/bin/newaliases", Program::Sendmail(words("-bi"))),
            ("./postel queue run", Program::Postel(words("queue run"))),
        ];
        for (line, program) in cases {
            assert_eq!(invoked(words(line)), program, "{line}");
        }
    }

    #[test]
    fn an_empty_command_line_asks_for_a_command() {
        assert_eq!(invoked(Vec::new()), Program::Postel(Vec::new()));
        let error = run(Vec::new()).unwrap_err();
        assert_eq!(error.exit, Exit::Usage);
        assert!(
            error.message.starts_with("a command is needed\nusage:"),
            "{error}"
        );
    }
}
