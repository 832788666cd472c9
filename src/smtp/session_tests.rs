//! The session state machine: every command in every state, and the rules around messages.

use super::*;
use crate::smtp::harness::{STATES, TestPolicy, params, run, run_with};

#[test]
fn every_command_in_every_state() {
    // The expected reply, state by state: fresh, ehlo, helo, mail, rcpt, chunking.
    let table: &[(&str, [&str; 6])] = &[
        (
            "HELO other.test",
            ["250", "250", "250", "250", "250", "250"],
        ),
        (
            "EHLO other.test",
            ["250", "250", "250", "250", "250", "250"],
        ),
        (
            "MAIL FROM:<b@remote.test>",
            [
                "503 5.5.1",
                "250 2.1.0",
                "250 2.1.0",
                "503 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
            ],
        ),
        (
            "MAIL FROM:<b@remote.test> SIZE=10",
            [
                "503 5.5.1",
                "250 2.1.0",
                "555 5.5.4",
                "503 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
            ],
        ),
        (
            "RCPT TO:<bob@localhost>",
            [
                "503 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
                "250 2.1.5",
                "250 2.1.5",
                "250 2.1.5",
            ],
        ),
        (
            "DATA",
            [
                "503 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
                "554 5.5.1",
                "354",
                "503 5.5.1",
            ],
        ),
        (
            "BDAT 0 LAST",
            [
                "503 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
                "554 5.5.1",
                "250 2.0.0",
                "250 2.0.0",
            ],
        ),
        ("RSET", ["250 2.0.0"; 6]),
        ("NOOP", ["250 2.0.0"; 6]),
        ("QUIT", ["221 2.0.0"; 6]),
        ("VRFY alice", ["252 2.1.5"; 6]),
        ("EXPN staff", ["550 5.1.1"; 6]),
        ("HELP", ["214 2.0.0"; 6]),
        ("HELP rcpt", ["214 2.0.0"; 6]),
        ("HELP nonsense", ["504 5.5.1"; 6]),
        (
            "ETRN remote.test",
            [
                "458 4.3.0",
                "458 4.3.0",
                "458 4.3.0",
                "503 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
            ],
        ),
        ("VERB", ["250 2.0.0"; 6]),
        ("TURN", ["502 5.5.1"; 6]),
        (
            "ATRN remote.test",
            [
                "502 5.5.1",
                "502 5.5.1",
                "502 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
            ],
        ),
        ("SEND FROM:<a@remote.test>", ["502 5.5.1"; 6]),
        ("SOML FROM:<a@remote.test>", ["502 5.5.1"; 6]),
        ("SAML FROM:<a@remote.test>", ["502 5.5.1"; 6]),
        (
            "STARTTLS",
            [
                "503 5.5.1",
                "220 2.0.0",
                "220 2.0.0",
                "503 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
            ],
        ),
        (
            "AUTH PLAIN AGFsaWNl",
            [
                "503 5.5.1",
                "538 5.7.11",
                "538 5.7.11",
                "503 5.5.1",
                "503 5.5.1",
                "503 5.5.1",
            ],
        ),
        ("XYZZY", ["500 5.5.2"; 6]),
        ("", ["500 5.5.2"; 6]),
        ("MAIL FROM:bad", ["501 5.1.7"; 6]),
        ("RCPT TO:<no-at>", ["501 5.1.3"; 6]),
    ];
    for (command, expected) in table {
        for ((state, prefix), expected) in STATES.iter().zip(expected) {
            let input = format!("{prefix}{command}\r\n");
            let result = run(input.as_bytes());
            let last = result.replies.last().unwrap();
            assert!(
                last.starts_with(expected),
                "{command:?} in state {state}: got {last:?}, expected {expected:?}"
            );
        }
    }
}

#[test]
fn a_whole_transaction_pipelined_in_one_write() {
    let input = b"EHLO client.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@localhost>\r\n\
                  RCPT TO:<nobody@localhost>\r\nRCPT TO:<Bob@localhost>\r\nDATA\r\n\
                  Subject: hi\r\n\r\n..dot\r\nbody\r\n.\r\nQUIT\r\n";
    for piece in [1, 7, input.len()] {
        let result = run_with(params(), false, input, piece);
        assert_eq!(
            result.codes(),
            [
                "220", "250", "250", "250", "550", "250", "354", "250", "221"
            ],
            "piece {piece}"
        );
        assert_eq!(result.replies[7], "250 2.0.0");
        assert_eq!(result.messages.len(), 1);
        let (content, recipients) = &result.messages[0];
        assert_eq!(content, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
        assert_eq!(recipients, &["alice@localhost", "Bob@localhost"]);
        assert!(result.closed);
    }
}

#[test]
fn the_greeting_and_ehlo_keywords() {
    let mut session = Session::new(params(), Box::new(TestPolicy::default()));
    session.greeting();
    session.step(b"EHLO client.test\r\n");
    let output = String::from_utf8(session.output().to_vec()).unwrap();
    assert_eq!(
        output,
        "220 mx.test ESMTP Postel\r\n250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n\
         250-SMTPUTF8\r\n250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-ETRN\r\n250-HELP\r\n\
         250 STARTTLS\r\n"
    );
    assert_eq!(session.helo(), Some("client.test"));
    assert_eq!(session.envelope().protocol, Protocol::Esmtp);
}

#[test]
fn recipients_unknown_relayed_and_too_many() {
    let prefix = "EHLO c\r\nMAIL FROM:<>\r\n";
    let cases = [
        ("RCPT TO:<nobody@localhost>", false, "550 5.1.1"),
        ("RCPT TO:<someone@remote.test>", false, "550 5.7.1"),
        ("RCPT TO:<someone@remote.test>", true, "250 2.1.5"),
        ("RCPT TO:<postmaster>", false, "250 2.1.5"),
        ("RCPT TO:<POSTMASTER@localhost>", false, "250 2.1.5"),
        ("RCPT TO:<josé@localhost>", false, "553 5.6.7"),
    ];
    for (command, trusted, expected) in cases {
        let result = run_with(
            params(),
            trusted,
            format!("{prefix}{command}\r\n").as_bytes(),
            4096,
        );
        assert!(
            result.replies.last().unwrap().starts_with(expected),
            "{command}: {:?}",
            result.replies
        );
    }
    let utf8 = run(
        "EHLO c\r\nMAIL FROM:<josé@remote.test> SMTPUTF8\r\nRCPT TO:<alice@localhost>\r\n"
            .as_bytes(),
    );
    assert_eq!(utf8.codes(), ["220", "250", "250", "250"]);
    let no_utf8 = run("EHLO c\r\nMAIL FROM:<josé@remote.test>\r\n".as_bytes());
    assert_eq!(no_utf8.replies.last().unwrap(), "553 5.6.7");

    let many = "RCPT TO:<alice@localhost>\r\nRCPT TO:<bob@localhost>\r\nRCPT TO:<postmaster>\r\nRCPT TO:<bob@localhost>\r\n";
    let mut params = params();
    params.max_errors = 1;
    let result = run_with(
        params,
        false,
        format!("{prefix}{many}NOOP\r\n").as_bytes(),
        4096,
    );
    // The fourth recipient is one too many; that is no error of the client's, so the session goes on.
    assert_eq!(result.replies[6], "452 4.5.3");
    assert_eq!(result.replies[7], "250 2.0.0");
}

#[test]
fn message_size_is_enforced_at_mail_and_while_streaming() {
    let result = run(b"EHLO c\r\nMAIL FROM:<a@remote.test> SIZE=1001\r\n");
    assert_eq!(result.replies.last().unwrap(), "552 5.3.4");
    let big = format!(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n{}\r\n.\r\nNOOP\r\n",
        "x".repeat(1200)
    );
    let result = run(big.as_bytes());
    assert_eq!(result.codes()[5..], ["552", "250"]);
    assert_eq!((result.messages.len(), result.aborted), (0, 1));
    let exact = format!(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n{}\r\n.\r\n",
        "x".repeat(998)
    );
    assert_eq!(run(exact.as_bytes()).messages[0].0.len(), 1000);
    let chunked = format!(
        "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\nBDAT 1001 LAST\r\n{}RSET\r\n",
        "x".repeat(1001)
    );
    let result = run(chunked.as_bytes());
    assert_eq!(result.codes()[4..], ["552", "250"]);
    assert_eq!(result.aborted, 1);
}

/// Found by fuzzing: RSET (or HELO, EHLO) between BDAT chunks ended the transaction but left the
/// message open, so the next DATA started a message inside it and the connection kept the
/// abandoned one's spool file until then.
#[test]
fn mail_waits_while_the_spool_is_below_its_reserve() {
    let policy = TestPolicy {
        spool_full: true,
        ..TestPolicy::default()
    };
    let mut session = Session::new(params(), Box::new(policy));
    session
        .step(b"EHLO c\r\nMAIL FROM:<> SIZE=10\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nQUIT\r\n");
    let output = String::from_utf8(session.output().to_vec()).unwrap();
    let replies: Vec<&str> = output.lines().filter(|l| !l.starts_with("250-")).collect();
    assert_eq!(
        replies,
        [
            "250 STARTTLS",
            "452 4.3.1 Error: insufficient system storage",
            "503 5.5.1 Error: need MAIL command",
            "503 5.5.1 Error: need MAIL command",
            "221 2.0.0 Bye"
        ]
    );
}

#[test]
fn rset_helo_or_ehlo_between_bdat_chunks_abandons_the_message() {
    for reset in ["RSET", "HELO c", "EHLO c"] {
        let input = format!(
            "EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\nBDAT 1\r\nx{reset}\r\n\
             MAIL FROM:<>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nsecond\r\n.\r\n"
        );
        let result = run(input.as_bytes());
        assert_eq!(result.aborted, 1, "{reset}");
        assert_eq!(
            result.codes()[4..],
            ["250", "250", "250", "250", "354", "250"],
            "{reset}"
        );
        assert_eq!(result.messages.len(), 1);
        assert_eq!(result.messages[0].0, b"second\r\n");
    }
}

#[test]
fn bdat_chunks_make_one_message() {
    let input = b"EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@localhost>\r\nBDAT 5\r\nhelloBDAT 8 LAST\r\n world\r\nQUIT\r\n";
    for piece in [1, 3, input.len()] {
        let result = run_with(params(), false, input, piece);
        assert_eq!(result.replies[4..], ["250 2.0.0", "250 2.0.0", "221 2.0.0"]);
        assert_eq!(result.messages[0].0, b"hello world\r\n");
    }
    // A chunk sent outside a transaction is read and thrown away, and the session stays in step.
    let result = run(b"EHLO c\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n");
    assert_eq!(result.replies[2..], ["503 5.5.1", "250 2.0.0"]);
    assert!(!result.closed);
    let result = run(b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\nBDAT 0\r\nDATA\r\n");
    assert_eq!(result.replies.last().unwrap(), "503 5.5.1");
}

#[test]
fn smuggled_commands_stay_in_the_message() {
    for smuggle in ["\n.\n", "\n.\r\n", "\r.\r", "\r\n.\r", "\r\n.\n"] {
        let input = format!(
            "EHLO c\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nfirst{smuggle}\
             MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\nsmuggled\r\n.\r\nQUIT\r\n"
        );
        let result = run(input.as_bytes());
        assert_eq!(
            result.messages.len(),
            1,
            "{smuggle:?}: {:?}",
            result.replies
        );
        assert_eq!(
            result.codes(),
            ["220", "250", "250", "250", "354", "250", "221"],
            "{smuggle:?}"
        );
        let content = String::from_utf8(result.messages[0].0.clone()).unwrap();
        assert!(
            content.contains("MAIL FROM:<evil@remote.test>") && content.ends_with("smuggled\r\n"),
            "{content:?}"
        );
    }
}

#[test]
fn bare_lf_can_be_refused() {
    let mut params = params();
    params.bare_lf = BareLf::Reject;
    let input =
        b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\na\nb\r\n.\r\nNOOP\r\n";
    let result = run_with(params, false, input, 4096);
    assert_eq!(result.replies[5..], ["550 5.6.0", "250 2.0.0"]);
    assert_eq!((result.messages.len(), result.aborted), (0, 1));
}

#[test]
fn over_long_lines_are_refused_and_the_session_stays_in_step() {
    let long = format!("NOOP {}\r\nNOOP\r\n", "x".repeat(600));
    for piece in [1, 100, long.len()] {
        let result = run_with(params(), false, long.as_bytes(), piece);
        assert_eq!(
            result.replies[1..],
            ["500 5.5.2", "250 2.0.0"],
            "piece {piece}"
        );
    }
    let just_fits = format!("NOOP {}\r\n", "x".repeat(505));
    assert_eq!(
        run(just_fits.as_bytes()).replies.last().unwrap(),
        "250 2.0.0"
    );
}

#[test]
fn too_many_errors_end_the_session() {
    let mut params = params();
    params.max_errors = 3;
    let result = run_with(params, false, b"bad\r\nworse\r\nworst\r\nNOOP\r\n", 4096);
    assert_eq!(result.codes(), ["220", "500", "500", "500", "421"]);
    assert!(result.closed);
}

#[test]
fn nul_bytes_and_garbage_are_errors() {
    let result = run(b"EHLO c\0x\r\n\xff\xfe\r\n\x01\x02\x03\r\nMAIL FROM:<a@b.c\0>\r\nNOOP\r\n");
    assert_eq!(result.codes(), ["220", "500", "500", "500", "500", "250"]);
}

#[test]
fn queue_failures_shutdown_and_lost_connections() {
    let mut session = Session::new(params(), Box::new(TestPolicy::default()));
    let input = b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\nhi\r\n.\r\n";
    let mut at = 0;
    loop {
        let (used, step) = session.step(&input[at..]);
        at += used;
        match step {
            Step::EndMessage => break,
            Step::NeedInput | Step::Close => panic!("the message should end"),
            _ => {}
        }
    }
    session.message_queued(Err("Error: cannot write the message to the queue"));
    session.shutdown(Reply::new(
        421,
        Detail::NotAcceptingMessages,
        "mx.test shutting down",
    ));
    let output = String::from_utf8(session.output().to_vec()).unwrap();
    assert!(output.ends_with("452 4.3.1 Error: cannot write the message to the queue\r\n421 4.3.2 mx.test shutting down\r\n"));
    assert_eq!(session.step(b"NOOP\r\n"), (0, Step::Close));
    assert_eq!(session.messages_accepted(), 0);

    let mut session = Session::new(params(), Box::new(TestPolicy::default()));
    session.step(b"HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\npart of a mess");
    session.input_closed();
    assert_eq!(session.step(b""), (0, Step::Close));
}

#[test]
fn a_new_transaction_after_each_message() {
    let input = b"EHLO c\r\nMAIL FROM:<a@remote.test> BODY=8BITMIME\r\nRCPT TO:<alice@localhost>\r\nDATA\r\none\r\n.\r\n\
                  MAIL FROM:<>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\ntwo\r\n.\r\nRCPT TO:<bob@localhost>\r\n";
    let result = run(input);
    assert_eq!(result.messages.len(), 2);
    assert_eq!(result.messages[1].1, ["bob@localhost"]);
    assert_eq!(result.replies.last().unwrap(), "503 5.5.1");
}

mod one_data_one_message {
    use proptest::prelude::*;

    use super::*;

    /// Content pieces that end a message for some server somewhere, smuggled commands among them.
    fn piece() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(vec![
                &b"\n.\n"[..],
                b"\n.\r\n",
                b"\r.\r",
                b"\r\n.\r",
                b"\r\n.\n",
                b"\r\n..\r\n",
                b".",
                b"\r",
                b"\n",
                b"\r\n",
                b"MAIL FROM:<evil@remote.test>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n",
                b"BDAT 5 LAST\r\n",
                b"QUIT\r\n",
            ])
            .prop_map(<[u8]>::to_vec),
            prop::collection::vec(any::<u8>(), 1..20),
        ]
    }

    proptest! {
        #[test]
        fn one_data_never_yields_two_messages(
            pieces in prop::collection::vec(piece(), 0..30),
            read_size in 1usize..64,
        ) {
            // The content up to its first end-of-data line, wherever the pieces put one.
            let mut content = b"Subject: one\r\n".to_vec();
            for piece in pieces {
                content.extend_from_slice(&piece);
                if let Some(end) = memchr::memmem::find(&content, b"\r\n.\r\n") {
                    content.truncate(end);
                }
            }
            let mut input = b"EHLO c.test\r\nMAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n".to_vec();
            input.extend_from_slice(&content);
            // The "x" keeps a "\r\n." at the content's end from making an end of data with it.
            input.extend_from_slice(b"x\r\n.\r\nNOOP\r\n");
            let mut params = params();
            params.max_message_size = 1 << 20;
            let run = run_with(params, false, &input, read_size);
            prop_assert_eq!(run.messages.len(), 1);
            prop_assert_eq!(run.replies.last().map(String::as_str), Some("250 2.0.0"));
        }
    }
}
