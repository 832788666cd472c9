//! The verb table: every verb parses, has HELP, answers bad arguments with its syntax, is carried out in
//! the states its row names and refused in the others, and EHLO lists the table's keywords.

use super::*;
use crate::smtp::harness::{STATES, TestPolicy, params, run};

/// One or more lines for every verb of the table, one case a line: the state (one of the harness's STATES), the
/// command line, and what the last reply line starts with, separated by `|`.
const EVERY_VERB: &str = "
fresh | HELO client.example       | 250 mx.test
fresh | ehlo [127.0.0.1]          | 250 STARTTLS
ehlo  | MAIL FROM:<alice@example.org> SIZE=100 BODY=8bitmime SMTPUTF8 | 250 2.1.0 Ok
ehlo  | mail from: <>             | 250 2.1.0 Ok
ehlo  | Mail From:<josé@example.org> SMTPUTF8 | 250 2.1.0
mail  | RCPT TO:<alice@localhost> | 250 2.1.5 Ok
mail  | rcpt to:<Postmaster>      | 250 2.1.5 Ok
rcpt  | DATA                      | 354 End data with
rcpt  | DaTa                      | 354
rcpt  | BDAT 0 LAST               | 250 2.0.0 Ok: queued as Q1
rcpt  | bdat 0 last               | 250 2.0.0 Ok: queued as Q1
rcpt  | BDAT 0                    | 250 2.0.0 Ok: 0 octets received
fresh | RSET                      | 250 2.0.0 Ok
fresh | NOOP                      | 250 2.0.0 Ok
fresh | NOOP anything at all      | 250 2.0.0 Ok
fresh | quit                      | 221 2.0.0 Bye
fresh | VRFY alice                | 252 2.1.5 maybe alice
fresh | EXPN staff list           | 550 5.1.1 no such list staff list
fresh | HELP                      | 214 2.0.0 HELP <command>
fresh | HELP mail                 | 214 2.0.0 See RFC 5321 section 4.1.1.2
fresh | ETRN example.org          | 458 4.3.0 not now for example.org
fresh | ETRN @example.org         | 458 4.3.0 not now for @example.org
fresh | VERB                      | 250 2.0.0 Ok: narration (VERB) is for local, trusted
fresh | TURN                      | 502 5.5.1 Error: TURN is refused
fresh | ATRN example.org          | 502 5.5.1 Error: ATRN is answered only on the On-Demand Mail Relay port
fresh | SEND FROM:<a@b.c>         | 502 5.5.1 Error: SEND (delivery
fresh | SOML FROM:<a@b.c>         | 502 5.5.1 Error: SOML (delivery
fresh | saml FROM:<a@b.c>         | 502 5.5.1 Error: SAML (delivery
ehlo  | starttls                  | 220 2.0.0 Ready to start TLS
ehlo  | AUTH PLAIN                | 538 5.7.11 Error: authentication needs an encrypted connection
";

/// The cases of [`EVERY_VERB`]: `(state, line, expected)`.
fn every_verb() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
    EVERY_VERB
        .lines()
        .filter(|case| !case.is_empty())
        .map(|case| {
            let mut fields = case.splitn(3, '|').map(str::trim);
            let mut next = || {
                fields
                    .next()
                    .unwrap_or_else(|| panic!("not a case: {case:?}"))
            };
            (next(), next(), next())
        })
}

/// The input that brings a session to `state` (one of the harness's STATES).
fn prefix(state: &str) -> &'static str {
    STATES
        .iter()
        .find(|(name, _)| *name == state)
        .map(|(_, prefix)| *prefix)
        .unwrap_or_else(|| panic!("no state {state}"))
}

/// Whether the command `line` gives `verb`.
fn names(line: &str, verb: &Verb) -> bool {
    line.split(' ')
        .next()
        .is_some_and(|name| name.eq_ignore_ascii_case(verb.name))
}

/// The last reply line after `line` in `state`.
fn answer(state: &str, line: &str) -> String {
    let result = run(format!("{}{line}\r\n", prefix(state)).as_bytes());
    result.lines.last().cloned().unwrap_or_default()
}

#[test]
fn every_verb_parses_in_any_case() {
    for (state, line, expected) in every_verb() {
        let got = answer(state, line);
        assert!(
            got.starts_with(expected),
            "{line:?} in state {state}: got {got:?}, expected {expected:?}"
        );
    }
    for verb in VERBS {
        assert!(
            every_verb().any(|(_, line, _)| names(line, verb)),
            "no test line for {}",
            verb.name
        );
    }
}

#[test]
fn help_for_every_verb_and_extension() {
    for verb in VERBS {
        for topic in [verb.name.to_string(), verb.name.to_lowercase()] {
            let result = run(format!("HELP {topic}\r\n").as_bytes());
            let got = &result.lines[1];
            let reference = verb.reference.replace('§', "section ");
            assert_eq!(got, &format!("214 2.0.0 See {reference}"), "HELP {topic}");
        }
        let lines = help_lines(verb.name).unwrap();
        assert_eq!(lines[..2], [verb.syntax, verb.help]);
        for line in &lines {
            assert!(line.is_ascii(), "HELP {}: {line:?} is not ASCII", verb.name);
        }
        assert!(
            verb.reference.starts_with("RFC ") || verb.reference.starts_with("Sendmail"),
            "{}: {}",
            verb.name,
            verb.reference
        );
        assert!(verb.help.ends_with('.'), "{}: {}", verb.name, verb.help);
        assert!(verb.syntax.starts_with(verb.name), "{}", verb.syntax);
    }
    for extension in EXTENSIONS {
        let lines = help_lines(&extension.keyword.to_lowercase()).unwrap();
        assert_eq!(lines[..2], [extension.keyword, extension.help]);
        assert!(lines.iter().all(|line| line.is_ascii()));
    }
    assert_eq!(
        answer("fresh", "HELP nonsense"),
        "504 5.5.1 HELP: no such command 'nonsense'"
    );
    // The overview lists what is carried out, not what is only known (TURN), nor what a setting turns off.
    let names = |terminals| {
        let policy = TestPolicy {
            terminals,
            ..TestPolicy::default()
        };
        offered_names(&Session::new(params(), Box::new(policy)))
    };
    assert_eq!(
        names(false),
        "HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN ETRN HELP VERB STARTTLS AUTH"
    );
    assert_eq!(
        names(true),
        "HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN ETRN HELP VERB SEND SOML SAML STARTTLS AUTH"
    );
    // ATRN only on an ODMR port.
    let mut odmr = params();
    odmr.odmr = true;
    assert_eq!(
        offered_names(&Session::new(odmr, Box::new(TestPolicy::default()))),
        "HELO EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY EXPN ETRN HELP VERB ATRN STARTTLS AUTH"
    );
}

#[test]
fn ehlo_lists_the_extensions_then_the_verbs_keywords() {
    let mut plain = params();
    plain.tls_offered = false;
    let session = Session::new(plain, Box::new(TestPolicy::default()));
    let keywords: Vec<String> = ehlo_keywords(&session).map(String::from).collect();
    assert_eq!(
        keywords,
        [
            "PIPELINING",
            "SIZE 1000",
            "8BITMIME",
            "SMTPUTF8",
            "ENHANCEDSTATUSCODES",
            "CHUNKING",
            "ETRN",
            "HELP"
        ]
    );
    // Without TLS to offer, the keywords of the verbs that need it stay out.
    let from_table: Vec<&str> = EXTENSIONS
        .iter()
        .map(|extension| extension.keyword)
        .chain(
            VERBS
                .iter()
                .filter(|verb| verb.announce.is_none())
                .filter_map(|verb| verb.ehlo),
        )
        .collect();
    let announced: Vec<&str> = keywords
        .iter()
        .map(|k| k.split(' ').next().unwrap())
        .collect();
    assert_eq!(announced, from_table);
}

/// `(line, what the reply starts with)`: arguments that do not fit, verb by verb.
const SYNTAX_ERRORS: &[(&str, &str)] = &[
    ("", "500 5.5.2 Error: empty command line"),
    (" NOOP", "500 5.5.2 Error: empty command line"),
    ("XYZZY", "500 5.5.2 Error: command not recognized"),
    ("MAIL\0 FROM:<a@b>", "500 5.5.2 Error: NUL"),
    ("HELO", "501 5.5.4 Syntax: HELO <your host name>"),
    ("EHLO two words", "501 5.5.4 Syntax: EHLO <your host name>"),
    ("DATA now", "501 5.5.4 Syntax: DATA"),
    ("RSET x", "501 5.5.4 Syntax: RSET"),
    ("QUIT now", "501 5.5.4 Syntax: QUIT"),
    ("VRFY", "501 5.5.4 Syntax: VRFY <user>"),
    ("EXPN", "501 5.5.4 Syntax: EXPN <list>"),
    ("ETRN", "501 5.5.4 Syntax: ETRN <domain>"),
    ("ETRN a b", "501 5.5.4 Syntax: ETRN <domain>"),
    ("MAIL", "501 5.5.4 Syntax: MAIL FROM:<address>"),
    ("MAIL TO:<a@b.c>", "501 5.5.4 Syntax: MAIL"),
    (
        "MAIL FROM:a@b.c",
        "501 5.1.7 Error: bad sender address: an address must be in angle brackets",
    ),
    ("MAIL FROM:<a@b.c", "501 5.1.7"),
    (
        "MAIL FROM:<a@b.c> FOO=bar",
        "555 5.5.4 Error: FOO is not supported here",
    ),
    ("MAIL FROM:<a@b.c> SIZE=big", "501 5.5.4 Syntax: SIZE"),
    (
        "MAIL FROM:<a@b.c> SIZE=1 SIZE=2",
        "501 5.5.4 Syntax: bad or repeated SIZE",
    ),
    (
        "MAIL FROM:<a@b.c> BODY=BINARYMIME",
        "555 5.5.4 Unsupported BODY",
    ),
    ("MAIL FROM:<a@b.c> SMTPUTF8=yes", "501 5.5.4"),
    ("MAIL FROM:<a@b.c>SIZE=1", "501 5.5.4 Syntax: a space"),
    ("MAIL FROM:<a@b.c> =x", "501 5.5.4 Syntax: bad parameter"),
    (
        "MAIL FROM:<a@b.c> \u{ff}",
        "501 5.5.4 Syntax: bad parameter",
    ),
    ("RCPT", "501 5.5.4 Syntax: RCPT TO:<address>"),
    ("RCPT TO:<>", "501 5.1.3 Error: bad recipient address"),
    (
        "RCPT TO:<a@b.c> NOTIFY=NEVER",
        "555 5.5.4 Error: NOTIFY is not supported here",
    ),
    ("BDAT", "501 5.5.4 Syntax: BDAT"),
    ("BDAT x", "501 5.5.4"),
    ("BDAT -1", "501 5.5.4"),
    ("BDAT 10 FIRST", "501 5.5.4"),
    ("BDAT 10 LAST more", "501 5.5.4"),
    ("BDAT 999999999999999999999", "501 5.5.4"),
];

#[test]
fn bad_arguments_get_the_verbs_syntax() {
    for &(line, expected) in SYNTAX_ERRORS {
        // Arguments are checked before the state: the same answer before HELO and inside a transaction.
        for state in ["fresh", "rcpt"] {
            let got = answer(state, line);
            assert!(
                got.starts_with(expected),
                "{line:?} in state {state}: got {got:?}, expected {expected:?}"
            );
        }
    }
    let result = run(b"MAIL FROM:<a@b.c> \xff\r\n");
    assert!(result.lines[1].starts_with("500 5.5.2") && result.lines[1].contains("UTF-8"));
    // Every verb that can get its arguments wrong answers with the syntax of its row.
    for verb in VERBS {
        let bad = match verb.handler {
            Handler::NoArgument(_) => format!("{} extra", verb.name),
            Handler::Word(_) => format!("{} two words", verb.name),
            Handler::Text(_) | Handler::Mail(_) | Handler::Rcpt(_) | Handler::Chunk(_) => {
                verb.name.to_string()
            }
            Handler::AnyArgument(_) | Handler::OptionalText(_) | Handler::NotOffered(_) => continue,
        };
        assert_eq!(
            answer("fresh", &bad),
            format!("501 5.5.4 Syntax: {}", verb.syntax),
            "{bad:?}"
        );
    }
}

#[test]
fn verbs_are_carried_out_in_the_states_of_their_row_and_refused_in_the_others() {
    // The harness's states, as the table names them.
    let states = [
        ("fresh", State::Connected),
        ("ehlo", State::Greeted),
        ("helo", State::Greeted),
        ("mail", State::Mail),
        ("rcpt", State::Rcpt),
        ("chunking", State::Chunking),
    ];
    for verb in VERBS {
        let (_, line, _) = every_verb().find(|(_, line, _)| names(line, verb)).unwrap();
        for (name, state) in states {
            let got = answer(name, line);
            let refused = got.starts_with("503 5.5.1") || got.starts_with("554 5.5.1");
            assert_eq!(
                refused,
                !verb.allowed_in(state),
                "{line:?} in state {name}: {got:?}"
            );
        }
    }
    let refusals = [
        (
            "fresh",
            "MAIL FROM:<>",
            "503 5.5.1 Error: send HELO or EHLO first",
        ),
        (
            "rcpt",
            "MAIL FROM:<>",
            "503 5.5.1 Error: nested MAIL command",
        ),
        (
            "ehlo",
            "RCPT TO:<alice@localhost>",
            "503 5.5.1 Error: need MAIL command",
        ),
        ("fresh", "DATA", "503 5.5.1 Error: need MAIL command"),
        ("mail", "DATA", "554 5.5.1 Error: no valid recipients"),
        (
            "chunking",
            "DATA",
            "503 5.5.1 Error: DATA cannot follow BDAT",
        ),
        (
            "mail",
            "BDAT 0 LAST",
            "554 5.5.1 Error: no valid recipients",
        ),
        (
            "mail",
            "ETRN example.org",
            "503 5.5.1 Error: ETRN is not allowed during a mail transaction",
        ),
    ];
    for (state, line, expected) in refusals {
        assert_eq!(answer(state, line), expected, "{line:?} in state {state}");
    }
}

#[test]
fn rows_are_unique_and_upper_case() {
    for (i, verb) in VERBS.iter().enumerate() {
        assert_eq!(verb.name, verb.name.to_ascii_uppercase());
        assert!(!verb.states.is_empty(), "{}", verb.name);
        assert!(
            VERBS[i + 1..].iter().all(|other| other.name != verb.name),
            "{} twice",
            verb.name
        );
        assert_eq!(
            find(&verb.name.to_lowercase()).map(|v| v.name),
            Some(verb.name)
        );
    }
    for state in [
        State::Connected,
        State::Greeted,
        State::Mail,
        State::Rcpt,
        State::Chunking,
    ] {
        assert!(!state.describe().is_empty());
    }
}
