//! The `postel` command: `serve`, `inetd` and `check`.

use std::path::PathBuf;
use std::process::ExitCode;

use postel::config::Config;
use postel::server;

const USAGE: &str = "\
usage: postel serve [--config FILE] [--listen ADDR]... [--spool DIR] [--mailboxes DIR]
       postel inetd [--config FILE] [--spool DIR] [--mailboxes DIR]
       postel check [--config FILE]

  serve   run the SMTP server (127.0.0.1:2525, ./spool and ./mailboxes unless configured)
  inetd   run one SMTP session on stdin/stdout, for inetd, xinetd or systemd socket activation
  check   validate the configuration and print it, with every default, as TOML

Logging goes to stderr; RUST_LOG=debug shows every SMTP dialogue.";

/// Options every subcommand takes.
#[derive(Default)]
struct Options {
    config: Option<PathBuf>,
    listen: Vec<String>,
    spool: Option<PathBuf>,
    mailboxes: Option<PathBuf>,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format(|out, record| {
            use std::io::Write;
            writeln!(
                out,
                "{} {:<5} {}",
                out.timestamp_millis(),
                record.level(),
                record.args()
            )
        })
        .init();
    match run(std::env::args().skip(1).collect()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
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
    let allowed_listen = command == "serve";
    if !allowed_listen && !options.listen.is_empty() {
        return Err(format!("--listen applies to 'serve' only\n{USAGE}"));
    }
    let config = load_config(&options)?;
    match command.as_str() {
        "serve" => server::serve(config).map_err(|e| e.to_string()),
        "inetd" => server::inetd::run(config).map_err(|e| e.to_string()),
        "check" => {
            print!("{}", config.to_toml());
            Ok(())
        }
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
            _ => return Err(format!("unknown option '{arg}'\n{USAGE}")),
        }
    }
    Ok(options)
}

/// The configuration file (or the built-in defaults), then the command-line overrides.
fn load_config(options: &Options) -> Result<Config, String> {
    let mut config = match &options.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
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
