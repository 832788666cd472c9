//! The `postel` command: `serve`, `inetd`, `check`, `passwd`, `queue` and `sendmail` — and `sendmail`/`mailq` when the
//! binary is called by those names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use postel::commands::{check, passwd, queue, sendmail};
use postel::config::Config;
use postel::server;

const USAGE: &str = "\
usage: postel serve [--config FILE] [--listen ADDR]... [--spool DIR] [--mailboxes DIR]
       postel inetd [--config FILE] [--spool DIR] [--mailboxes DIR]
       postel check [--config FILE]
       postel passwd NAME [--config FILE]
       postel queue list|run [--domain D]|show ID|remove ID [--config FILE]
       postel sendmail [--config FILE] [sendmail options] [recipient...]

  serve     run the SMTP server (127.0.0.1:2525, ./spool and ./mailboxes unless configured)
  inetd     run one SMTP session on stdin/stdout, for inetd, xinetd or systemd socket activation
  check     validate the configuration and the files it names (aliases, TLS, auth_users) and print it,
            with every default, as TOML
  passwd    set NAME's password in the auth_users file (read from stdin; asked twice on a terminal)
  queue     list the queued messages, run the queue now, show or remove one message
  sendmail  submit a message from a local program, as /usr/sbin/sendmail does

Called as 'sendmail' or 'mailq' the binary acts as 'postel sendmail' or 'postel queue list'.
Logging goes to stderr; RUST_LOG=debug shows every SMTP dialogue.";

/// Options every subcommand but sendmail takes.
#[derive(Default)]
struct Options {
    config: Option<PathBuf>,
    listen: Vec<String>,
    spool: Option<PathBuf>,
    mailboxes: Option<PathBuf>,
    /// Words that are not options: the queue command's action and id.
    words: Vec<String>,
    /// `queue run --domain D`.
    domain: Option<String>,
}

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().collect();
    let called_as = args
        .first()
        .map(|a| {
            Path::new(a)
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .unwrap_or_default();
    args.remove(0);
    match called_as.as_str() {
        "sendmail" => return run_sendmail(&args),
        "mailq" => {
            args = ["queue", "list"]
                .iter()
                .map(|a| a.to_string())
                .chain(args)
                .collect()
        }
        _ => {}
    }
    if args.first().is_some_and(|a| a == "sendmail") {
        return run_sendmail(&args[1..]);
    }
    init_logging("info");
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

fn init_logging(default: &str) {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(default))
        .format(|out, record| {
            writeln!(
                out,
                "{} {:<5} {}",
                out.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
}

/// sendmail is quiet unless -v: cron mails whatever a job prints.
fn run_sendmail(args: &[String]) -> ExitCode {
    let invocation = match sendmail::parse(args) {
        Ok(invocation) => invocation,
        Err((code, message)) => {
            eprintln!("{message}");
            return ExitCode::from(code);
        }
    };
    init_logging(if invocation.verbose { "info" } else { "warn" });
    let stdin = std::io::stdin();
    match sendmail::run(invocation, &mut stdin.lock(), &mut std::io::stdout()) {
        Ok(()) => ExitCode::SUCCESS,
        Err((code, message)) => {
            eprintln!("{message}");
            ExitCode::from(code)
        }
    }
}

fn run(args: Vec<String>) -> Result<(), String> {
    let Some((command, rest)) = args.split_first() else {
        return Err(format!("a command is needed\n{USAGE}"));
    };
    if matches!(command.as_str(), "-h" | "--help" | "help") {
        println!("{USAGE}");
        return Ok(());
    }
    let options = parse_options(rest)?;
    if command != "serve" && !options.listen.is_empty() {
        return Err(format!("--listen applies to 'serve' only\n{USAGE}"));
    }
    if !matches!(command.as_str(), "queue" | "passwd") && !options.words.is_empty() {
        return Err(format!(
            "unexpected argument '{}'\n{USAGE}",
            options.words[0]
        ));
    }
    let config = load_config(&options, command != "serve")?;
    let mut out = std::io::stdout();
    match command.as_str() {
        "serve" => server::serve(config).map_err(|e| e.to_string()),
        "inetd" => server::inetd::run(config).map_err(|e| e.to_string()),
        "check" => check::run(&config, &mut out),
        "passwd" => match options.words.as_slice() {
            [name] => passwd::run(&config, name, &mut out),
            _ => Err(format!(
                "usage: postel passwd NAME [--config FILE]\n{USAGE}"
            )),
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
            _ => Err(format!(
                "usage: postel queue list|run [--domain D]|show ID|remove ID\n{USAGE}"
            )),
        },
        other => Err(format!("unknown command '{other}'\n{USAGE}")),
    }
}

fn parse_options(args: &[String]) -> Result<Options, String> {
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
                .ok_or(format!("{flag} needs a value"))
        };
        match flag {
            "--config" => options.config = Some(value()?.into()),
            "--listen" => options.listen.push(value()?),
            "--spool" => options.spool = Some(value()?.into()),
            "--mailboxes" => options.mailboxes = Some(value()?.into()),
            "--domain" => options.domain = Some(value()?),
            _ if !flag.starts_with('-') => options.words.push(arg.clone()),
            _ => return Err(format!("unknown option '{arg}'\n{USAGE}")),
        }
    }
    Ok(options)
}

/// The configuration file (or the built-in defaults), then the command-line overrides. Commands other than
/// `serve` also find the file through $POSTEL_CONFIG and the system path, as sendmail does.
fn load_config(options: &Options, look_around: bool) -> Result<Config, String> {
    let path = if look_around {
        Config::find(options.config.clone())
    } else {
        options.config.clone()
    };
    let mut config = match path {
        Some(path) => Config::load(&path).map_err(|e| e.to_string())?,
        None => Config::builtin(),
    };
    if !options.listen.is_empty() {
        config.listen = options
            .listen
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|_| format!("--listen: '{a}' is not an ip:port address"))
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
