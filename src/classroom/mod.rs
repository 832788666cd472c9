//! The classroom: explain mode (`postel demo`, `postel serve --explain`) shows every session live, each command
//! and reply with what it means and where the RFC says so, the server's steps indented between them, and a
//! teaching note where a client made a common mistake. It is a reader of the event stream ([`crate::events`]);
//! the words for commands come from the verb table, those for replies from [`codes`].

pub mod codes;

use std::collections::HashMap;
use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use crate::events::{self, Event, Kind, Listener, Registration};
use crate::smtp::{State, Verb, find_verb as find};

/// How many queue ids explain mode keeps the session of.
const MESSAGES_REMEMBERED: usize = 4096;

/// Colours for session tags on a terminal, one per session in turn.
const COLOURS: &[&str] = &["36", "33", "35", "32", "34", "31"];

/// Writes the explained view to `out` until the returned registration is dropped. `colour`: tag each session
/// in a colour of its own (for a terminal).
pub fn explain(out: Box<dyn Write + Send>, colour: bool) -> Registration {
    events::listen(Arc::new(Explain {
        inner: Mutex::new(View {
            out,
            colour,
            sessions: HashMap::new(),
            messages: HashMap::new(),
        }),
    }))
}

/// Whether explain mode on standard output should use colour: on a terminal, unless NO_COLOR is set.
pub fn colour_wanted() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

struct Explain {
    inner: Mutex<View>,
}

struct View {
    out: Box<dyn Write + Send>,
    colour: bool,
    /// The last command line of each open session, without its line end.
    sessions: HashMap<String, String>,
    /// Queue id -> the session that sent the message.
    messages: HashMap<String, String>,
}

impl Listener for Explain {
    fn event(&self, event: &Event) {
        let mut view = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        view.show(event);
    }
}

impl View {
    fn show(&mut self, event: &Event) {
        let text = event.text.to_string();
        let tag = self.tag(event);
        let mut lines: Vec<String> = Vec::new();
        match event.kind {
            Kind::Connect => {
                self.sessions.insert(event.scope.to_string(), String::new());
                lines.push(format!("{tag} --- {text}"));
            }
            Kind::Disconnect => {
                lines.push(format!("{tag} --- {text}"));
                self.sessions.remove(event.scope);
            }
            Kind::Command(raw) => {
                lines.push(format!("{tag} C: {text}"));
                lines.push(format!("{tag}      {}", explain_command(&text)));
                if !raw.ends_with(b"\r\n") && raw.ends_with(b"\n") {
                    lines.push(format!("{tag}      ! {BARE_LF_COMMAND}"));
                }
                if let Some(command) = self.sessions.get_mut(event.scope) {
                    *command = text;
                }
            }
            Kind::Reply(code) => {
                lines.push(format!("{tag} S: {text}"));
                lines.push(format!("{tag}      {}", codes::explain_reply(&text)));
                let command = self.sessions.get(event.scope).map_or("", String::as_str);
                if let Some(lesson) = mistake(command, code, &text) {
                    lines.push(format!("{tag}      ! {lesson}"));
                }
            }
            Kind::Message { id } => {
                // Delivery goes on after the session; a long demo forgets its oldest messages' sessions.
                if self.messages.len() >= MESSAGES_REMEMBERED {
                    self.messages.clear();
                }
                self.messages
                    .insert(id.to_string(), event.scope.to_string());
                lines.push(format!("{tag}    . {text}"));
            }
            Kind::Step | Kind::Disclosure => lines.push(format!("{tag}    . {text}")),
            Kind::Attempted { recipient } => {
                lines.push(format!("{tag}    . {recipient}: delivery attempt: {text}"))
            }
        }
        let mut block = lines.join("\n");
        block.push('\n');
        let _ = self.out.write_all(block.as_bytes());
        let _ = self.out.flush();
    }

    /// `[s1]` for a session's events, `[s1 <queue id>]` for its message's, in the session's colour on a terminal.
    fn tag(&self, event: &Event) -> String {
        let (session, label) = match self.messages.get(event.scope) {
            Some(session) => (session.as_str(), format!("[{session} {}]", event.scope)),
            None => (event.scope, format!("[{}]", event.scope)),
        };
        if !self.colour {
            return label;
        }
        // Session ids count up ("s41", "s42"): neighbours get different colours.
        let number: usize = session.bytes().filter(u8::is_ascii_digit).fold(0, |n, d| {
            n.wrapping_mul(10).wrapping_add(usize::from(d - b'0'))
        });
        let colour = COLOURS[number % COLOURS.len()];
        format!("\x1b[{colour}m{label}\x1b[0m")
    }
}

const BARE_LF_COMMAND: &str = "this line ended with a bare LF, not CR LF (RFC 5321 §2.3.8). The server takes it \
for a command, but inside a message only CR LF . CR LF ends the data: a lone LF never does, or a message \
could smuggle a second one past a filter (SMTP smuggling). Use nc -C, or telnet, which send CR LF.";

/// A command line explained from its verb's row: what it does and where it is defined.
fn explain_command(line: &str) -> String {
    let name = line.split([' ', ':']).next().unwrap_or("");
    match find(name) {
        Some(verb) => format!("{}: {} ({})", verb.name, verb.help, verb.reference),
        None => format!("'{name}' is no SMTP command this server knows; HELP lists them"),
    }
}

/// The teaching note for a reply that shows a common mistake in `command`, the line it answers.
fn mistake(command: &str, code: u16, reply: &str) -> Option<String> {
    let (name, args) = command.split_once(' ').unwrap_or((command, ""));
    let verb = find(name);
    if reply.contains("line too long") {
        return Some(
            "the line is longer than the server takes: RFC 5321 §4.5.3.1.4 promises only 512 octets for a \
             command line, CR LF included; the rest of the line was thrown away"
                .into(),
        );
    }
    if reply.contains("bare LF in the message") {
        return Some(
            "a line of the message ended in LF alone: SMTP lines end with CR LF (RFC 5321 §2.3.8), and \
             the server refuses such a message rather than guess where it ends (SMTP smuggling)"
                .into(),
        );
    }
    match (code, verb) {
        (501, Some(verb)) if matches!(verb.name, "MAIL" | "RCPT") && !args.contains(':') => {
            Some(format!(
                "missing colon: write it as {} (RFC 5321 §4.1.1); the colon and the angle brackets belong to the command",
                verb.syntax
            ))
        }
        (501, Some(verb)) => Some(format!(
            "the arguments do not fit; {} is written: {}",
            verb.name, verb.syntax
        )),
        (503 | 554, Some(verb)) if verb.name == "DATA" => Some(
            "DATA without an accepted recipient: the message has nowhere to go; give MAIL FROM:<...> and \
             at least one RCPT TO:<...> that gets 250 first"
                .into(),
        ),
        (503 | 554, Some(verb)) => Some(format!(
            "command out of order: {} is allowed only {}; the reply says what the server expected first \
             (RFC 5321 §4.1.4 gives the order: EHLO, MAIL, RCPT, DATA)",
            verb.name,
            allowed(verb)
        )),
        (500, None) if !name.is_empty() => Some(format!(
            "'{name}' is not a command: check the spelling; HELP lists the commands"
        )),
        _ => None,
    }
}

/// The states a verb is allowed in, in words.
fn allowed(verb: &Verb) -> String {
    let states: Vec<&str> = verb.states.iter().map(|s: &State| s.describe()).collect();
    states.join(", or ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mistakes_get_a_lesson() {
        let lesson = mistake(
            "MAIL FROM <a@b>",
            501,
            "501 5.5.4 Syntax: MAIL FROM:<address>",
        )
        .unwrap();
        assert!(lesson.starts_with("missing colon"), "{lesson}");
        let lesson = mistake("DATA", 554, "554 5.5.1 Error: no valid recipients").unwrap();
        assert!(
            lesson.starts_with("DATA without an accepted recipient"),
            "{lesson}"
        );
        let lesson = mistake("RCPT TO:<a@b>", 503, "503 5.5.1 Error: need MAIL command").unwrap();
        assert!(lesson.contains("after MAIL"), "{lesson}");
        assert_eq!(mistake("NOOP", 250, "250 2.0.0 Ok"), None);
    }

    #[test]
    fn commands_are_explained_from_the_verb_table() {
        let text = explain_command("RCPT TO:<alice@localhost>");
        assert!(
            text.contains("Names one recipient") && text.contains("RFC 5321 §4.1.1.3"),
            "{text}"
        );
    }
}
