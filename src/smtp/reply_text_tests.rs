//! Replies never echo raw client bytes: whatever a client sends, every reply line is printable ASCII ended by
//! CRLF. The regression tests are named after what fuzzing from outside drew from the server.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::harness::{self, Run, assert_printable_replies};
use super::{Detail, Echo, Reply};

fn session(input: &[u8]) -> Run {
    harness::run(input)
}

fn last_reply(input: &str) -> String {
    let run = session(input.as_bytes());
    assert_printable_replies(&run.output);
    run.lines.last().cloned().unwrap_or_default()
}

#[test]
fn vrfy_x_cr_250_2_0_0_ok_is_not_read_as_a_second_reply() {
    let run = session(b"EHLO c.test\r\nVRFY x\r250 2.0.0 Ok\r\n");
    assert_printable_replies(&run.output);
    assert_eq!(run.replies.last().unwrap(), "500 5.5.2");
    assert!(!String::from_utf8_lossy(&run.output).contains("250 2.0.0 Ok\r\n"));
}

#[test]
fn expn_localhost_cr_bdat_3_last_gets_500_for_the_bare_cr() {
    assert_eq!(
        last_reply("EHLO c.test\r\nEXPN <localhost\rBDAT 3 LAST>\r\n"),
        "500 5.5.2 Error: bare CR in command line; SMTP lines end with CR LF"
    );
}

#[test]
fn help_localhost_cr_data_gets_500_for_the_bare_cr() {
    assert!(last_reply("HELP localhost\rDATA\r\n").starts_with("500 5.5.2 Error: bare CR"));
}

#[test]
fn bad_parameter_foo_bar_cr_quit_gets_500_for_the_bare_cr() {
    let run = session(b"EHLO c.test\r\nMAIL FROM:<a@remote.test> FOO=bar\rquit\r\n");
    assert_printable_replies(&run.output);
    assert_eq!(run.replies.last().unwrap(), "500 5.5.2");
    assert!(
        !run.closed,
        "the bare CR must not have been read as a line end before 'quit'"
    );
}

#[test]
fn control_character_x13_in_help_topic_is_shown_escaped() {
    assert_eq!(
        last_reply("HELP a\x13b\\c\r\n"),
        "504 5.5.1 HELP: no such command 'a\\x13b\\\\c'"
    );
}

#[test]
fn bad_parameter_with_control_characters_is_shown_escaped_and_cut_short() {
    let long = "y".repeat(300);
    let reply = last_reply(&format!(
        "EHLO c.test\r\nMAIL FROM:<a@remote.test> X=\x1b[2J{long}\r\n"
    ));
    assert!(
        reply.starts_with("501 5.5.4 Syntax: bad parameter 'X=\\x1b[2Jyyy"),
        "{reply}"
    );
    assert!(reply.ends_with("yyy...'") && reply.len() < 120, "{reply}");
}

#[test]
fn utf8_in_a_reply_is_escaped_byte_by_byte() {
    assert_eq!(
        last_reply("HELP é\r\n"),
        "504 5.5.1 HELP: no such command '\\xc3\\xa9'"
    );
}

#[test]
fn a_policy_answer_with_raw_bytes_goes_on_the_wire_escaped() {
    // The test policy echoes VRFY's argument without Echo; the wire is still clean.
    assert_eq!(
        last_reply("EHLO c.test\r\nVRFY tab\there\x7f\r\n"),
        "252 2.1.5 maybe tab\\there\\x7f"
    );
    let mut wire = Vec::new();
    Reply::new(250, Detail::Undefined, "a\rb\nc").write_to(&mut wire);
    assert_eq!(wire, b"250 2.0.0 a\\rb\\nc\r\n");
}

#[test]
fn echo_is_printable_and_bounded() {
    assert_eq!(Echo("plain text").to_string(), "plain text");
    assert_eq!(Echo("a\r\n\t\\").to_string(), "a\\r\\n\\t\\\\");
    let cut = Echo(&"z".repeat(1000)).to_string();
    assert_eq!(cut, format!("{}...", "z".repeat(super::reply::ECHO_LIMIT)));
}

/// Pieces a hostile client strings together: verbs that echo their arguments, line ends of every kind,
/// control characters, UTF-8 and arbitrary bytes.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::sample::select(vec![
            "EHLO c.test",
            "HELO c",
            "MAIL FROM:<a@remote.test>",
            "MAIL FROM:<",
            "RCPT TO:<alice@localhost>",
            "RCPT TO:<",
            "DATA",
            "BDAT 3",
            "BDAT 3 LAST",
            "VRFY ",
            "EXPN ",
            "HELP ",
            "ETRN ",
            "NOOP",
            "RSET",
            "QUIT",
            " FOO=bar",
            " SIZE=1",
            " SMTPUTF8",
            "<",
            ">",
            "@localhost",
            "\"",
            "\\",
            ".",
            " ",
        ])
        .prop_map(|s: &str| s.as_bytes().to_vec()),
        prop::sample::select(vec!["\r\n", "\r", "\n", "\r\r\n", "\n.\r\n", "\r\n.\r\n"])
            .prop_map(|s: &str| s.as_bytes().to_vec()),
        prop::sample::select(vec![0u8, 0x13, 0x1b, 0x7f, b'\t', 0x80, 0xff]).prop_map(|b| vec![b]),
        "[a-zé\u{2028}\u{7f}-\u{9f}]{1,6}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 1..8),
    ]
}

proptest! {
    // Inputs that once failed are kept beside this file and tried first.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::SourceParallel("proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn no_input_puts_a_byte_outside_printable_ascii_or_a_bare_cr_or_lf_into_a_reply(
        pieces in prop::collection::vec(piece(), 1..40),
        read_size in 1usize..64,
    ) {
        let input = pieces.concat();
        let mut params = harness::params();
        params.max_errors = 1000;
        let run = harness::run_with(params, true, &input, read_size);
        assert_printable_replies(&run.output);
    }
}
