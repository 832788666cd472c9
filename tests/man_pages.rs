//! The man pages in doc/man: postel.toml(5) is made from the configuration's key table, so a key cannot exist
//! undocumented; postel(8) is written by hand and must name every subcommand and option the binary's usage lists.
//!
//! `POSTEL_UPDATE_MAN=1 cargo test --test man_pages` (or `make man`) writes postel.toml.5 anew.

use std::path::Path;
use std::process::Command;

use postel::config::{self, SYSTEM_CONFIG};

const CONFIG_PAGE: &str = "doc/man/postel.toml.5";
const COMMAND_PAGE: &str = "doc/man/postel.8";

/// Text for a roff body line: backslashes and hyphens escaped, and a leading dot or quote made harmless.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) {
        format!("\\&{escaped}")
    } else {
        escaped
    }
}

/// The reference's Markdown as roff text: `code` in bold, a link as its text (a README section named as such).
fn markdown(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(['`', '[']) {
        out.push_str(&roff(&rest[..at]));
        rest = &rest[at..];
        if let Some(code) = rest.strip_prefix('`') {
            let end = code.find('`').unwrap_or(code.len());
            out.push_str(&format!("\\fB{}\\fR", roff(&code[..end])));
            rest = code.get(end + 1..).unwrap_or("");
            continue;
        }
        let link = rest
            .find("](")
            .and_then(|mid| Some((mid, mid + rest[mid..].find(')')?)));
        match link {
            Some((mid, end)) => {
                let (label, target) = (&rest[1..mid], &rest[mid + 2..end]);
                let label = if target.starts_with('#') {
                    format!("README: {label}")
                } else {
                    label.to_string()
                };
                out.push_str(&markdown(&label));
                rest = &rest[end + 1..];
            }
            None => {
                out.push('[');
                rest = &rest[1..];
            }
        }
    }
    out.push_str(&roff(rest));
    out
}

/// A key's doc as a sentence: capital first letter, full stop at the end.
fn sentence(doc: &str) -> String {
    let mut chars = doc.chars();
    let first = chars.next().map(|c| c.to_ascii_uppercase()).into_iter();
    let mut text: String = first.chain(chars).collect();
    if !text.ends_with('.') {
        text.push('.');
    }
    text
}

fn config_page() -> String {
    let mut page = format!(
        r#".\" Made from the key table in src/config.rs by tests/man_pages.rs; do not edit.
.TH POSTEL.TOML 5 "" "Postel" "File Formats"
.SH NAME
postel.toml \- configuration file of the Postel mail server
.SH SYNOPSIS
.I {config}
.SH DESCRIPTION
.BR postel (8)
reads its configuration from a TOML file: the one given with
.BR \-\-config ,
else the file named by
.BR POSTEL_CONFIG ,
else
.IR {config} .
Every key is optional and top\-level; a key that is not set has the default
shown below.
A key the table does not know, or a value of the wrong kind, is an error that
names the file and the line, and
.B postel check
prints the configuration in effect, every default included.
.PP
Durations are a number and a unit:
.BR ms ,
.BR s ,
.BR m ,
.B h
or
.BR d ,
as in
.BR \(dq30s\(dq .
Sizes are in bytes.
The built\-in defaults are those of
.B postel serve
run with no file; the configuration the package installs sets
.BR listen ,
.BR spool_dir ,
.B mailbox_dir
and
.B aliases
for a system mail server.
.SH KEYS
"#,
        config = roff(SYSTEM_CONFIG)
    );
    for key in config::reference() {
        page.push_str(&format!(
            ".TP\n.B {}\n({}; default: {})\n.br\n{}\n",
            roff(key.name),
            roff(key.kind),
            markdown(&key.default),
            markdown(&sentence(key.doc))
        ));
    }
    page.push_str(&format!(
        r#".SH FILES
.TP
.I {config}
the configuration of a system install
.TP
.I /etc/aliases
the aliases file the installed configuration names
.SH SEE ALSO
.BR postel (8),
.BR aliases (5)
"#,
        config = roff(SYSTEM_CONFIG)
    ));
    page
}

#[test]
fn the_configuration_page_is_made_from_the_key_table() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(CONFIG_PAGE);
    let made = config_page();
    if std::env::var_os("POSTEL_UPDATE_MAN").is_some() {
        std::fs::write(&path, &made).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == made,
        "{CONFIG_PAGE} is not what the key table makes: run `make man` and commit it"
    );
    for key in config::KEYS {
        assert!(
            committed.contains(&format!(".B {}\n", roff(key.name))),
            "{}",
            key.name
        );
    }
}

/// The words of `postel --help` and `sendmail`'s usage that a reader looks up: subcommands and options.
fn usage_words() -> Vec<String> {
    let binary = env!("CARGO_BIN_EXE_postel");
    let help = Command::new(binary).arg("--help").output().unwrap();
    let sendmail = Command::new(binary)
        .args(["sendmail", "-Z"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    let sendmail = String::from_utf8(sendmail.stderr).unwrap();
    assert!(help.contains("usage: postel"), "{help}");
    assert!(sendmail.contains("usage: sendmail"), "{sendmail}");
    let mut words = Vec::new();
    for line in help.lines().filter(|l| l.contains("postel ")) {
        let mut tokens = line
            .split_whitespace()
            .skip_while(|t| *t != "postel")
            .skip(1);
        if let Some(command) = tokens.next() {
            words.push(command.to_string());
            if command == "queue" {
                let actions = tokens.next().unwrap_or_default();
                words.extend(actions.split('|').map(str::to_string));
            }
        }
    }
    let options = help
        .lines()
        .chain(sendmail.lines())
        .filter(|l| l.contains("usage:") || l.starts_with("  "));
    for token in options.flat_map(|l| l.split(|c: char| c.is_whitespace() || "[]|".contains(c))) {
        if token.starts_with('-') && token.len() > 1 && !token.ends_with('.') {
            words.push(token.to_string());
        }
    }
    words.sort();
    words.dedup();
    words
}

#[test]
fn the_command_page_names_every_subcommand_and_option() {
    let page =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(COMMAND_PAGE)).unwrap();
    let words = usage_words();
    for expected in [
        "serve", "inetd", "check", "queue", "sendmail", "--config", "-bs", "-t",
    ] {
        assert!(
            words.iter().any(|w| w == expected),
            "usage lacks {expected}: {words:?}"
        );
    }
    // Each gets an entry of its own: a word of a line that follows `.TP`.
    let lines: Vec<&str> = page.lines().collect();
    let entries: Vec<&str> = lines
        .windows(2)
        .filter(|pair| pair[0] == ".TP")
        .flat_map(|pair| pair[1].split(|c: char| c.is_whitespace() || c == '"' || c == ','))
        .collect();
    let missing: Vec<_> = words
        .iter()
        .filter(|w| !entries.contains(&roff(w).as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{COMMAND_PAGE} has no entry for {missing:?}"
    );
}
