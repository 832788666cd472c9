//! STARTTLS and AUTH: what TLS makes the session forget, what is thrown away before the handshake
//! (CVE-2011-0411), who may authenticate and how failures are slowed, and what the submission ports and
//! tls_required demand before MAIL.

use std::time::Duration;

use crate::smtp::harness::{params, run, run_with};

const PLAIN_ALICE: &str = "AGFsaWNlAHNlY3JldA==";
const PLAIN_WRONG: &str = "AGFsaWNlAHdyb25n";

/// Feeds one octet at a time, so that nothing is read before a handshake but what the client sent before it.
fn dialogue(params: crate::smtp::SessionParams, lines: &[&str]) -> crate::smtp::harness::Run {
    let input: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
    run_with(params, false, input.as_bytes(), 1)
}

#[test]
fn commands_sent_with_starttls_are_thrown_away_not_run_inside_tls() {
    let result =
        run(b"EHLO client.test\r\nSTARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<x@evil.test>\r\n");
    assert_eq!(result.codes(), ["220", "250", "220"]);
    assert_eq!(
        result.discarded,
        ["EHLO evil.test\r\nMAIL FROM:<x@evil.test>\r\n".len()]
    );
}

#[test]
fn tls_forgets_the_session_and_offers_auth_instead_of_starttls() {
    let result = dialogue(
        params(),
        &[
            "EHLO client.test",
            "STARTTLS",
            "MAIL FROM:<a@remote.test>",
            "EHLO client.test",
            "STARTTLS",
            "QUIT",
        ],
    );
    assert_eq!(
        result.replies,
        [
            "220 mx.test",
            "250 STARTTLS",
            "220 2.0.0",
            "503 5.5.1",
            "250 AUTH",
            "503 5.5.1",
            "221 2.0.0"
        ]
    );
    let mut session = crate::smtp::Session::new(
        params(),
        Box::new(crate::smtp::harness::TestPolicy::default()),
    );
    session.tls_started("TLSv1.3 with cipher TEST".into());
    session.step(b"EHLO client.test\r\n");
    let output = String::from_utf8(session.output().to_vec()).unwrap();
    assert!(
        output.ends_with("250-HELP\r\n250 AUTH PLAIN LOGIN\r\n"),
        "{output}"
    );
    assert!(!output.contains("STARTTLS"));
}

#[test]
fn starttls_refusals() {
    let mut no_certificate = params();
    no_certificate.tls_offered = false;
    let result = dialogue(no_certificate, &["EHLO client.test", "STARTTLS"]);
    assert_eq!(result.replies.last().unwrap(), "454 4.7.0");
    let result = dialogue(params(), &["EHLO client.test", "STARTTLS now"]);
    assert_eq!(result.replies.last().unwrap(), "501 5.5.4");
}

#[test]
fn auth_plain_and_login_succeed_inside_tls() {
    for exchange in [
        vec![format!("AUTH PLAIN {PLAIN_ALICE}")],
        vec!["AUTH PLAIN".into(), PLAIN_ALICE.into()],
        vec!["AUTH LOGIN".into(), "YWxpY2U=".into(), "c2VjcmV0".into()],
        vec!["AUTH LOGIN YWxpY2U=".into(), "c2VjcmV0".into()],
    ] {
        let mut lines = vec!["EHLO client.test", "STARTTLS", "EHLO client.test"];
        lines.extend(exchange.iter().map(String::as_str));
        lines.push("AUTH PLAIN");
        let result = dialogue(params(), &lines);
        let last_two = &result.replies[result.replies.len() - 2..];
        assert_eq!(last_two, ["235 2.7.0", "503 5.5.1"], "{exchange:?}");
        assert!(result.delays.is_empty());
    }
}

#[test]
fn auth_failures_are_slowed_down_more_each_time() {
    let result = dialogue(
        params(),
        &[
            "EHLO client.test",
            "STARTTLS",
            "EHLO client.test",
            &format!("AUTH PLAIN {PLAIN_WRONG}"),
            "AUTH PLAIN Ym9iAGFsaWNlAHNlY3JldA==",
            "AUTH LOGIN",
            "YWxpY2U=",
            "d3Jvbmc=",
            &format!("AUTH PLAIN {PLAIN_ALICE}"),
        ],
    );
    let tail: Vec<&str> = result.replies[4..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "535 5.7.8",
            "535 5.7.8",
            "334 VXNlcm5hbWU6",
            "334 UGFzc3dvcmQ6",
            "535 5.7.8",
            "235 2.7.0"
        ]
    );
    let seconds: Vec<u64> = result.delays.iter().map(Duration::as_secs).collect();
    assert_eq!(seconds, [1, 2, 4]);
}

#[test]
fn auth_errors() {
    let cases: [(&[&str], &str); 6] = [
        (&["AUTH PLAIN", "*"], "501 5.5.2"),
        (&["AUTH PLAIN not-base64!"], "501 5.5.2"),
        (&["AUTH LOGIN", "*"], "501 5.5.2"),
        (&["AUTH CRAM-MD5"], "504 5.5.4"),
        (&["AUTH"], "501 5.5.4"),
        (&["MAIL FROM:<a@remote.test>", "AUTH PLAIN"], "503 5.5.1"),
    ];
    for (exchange, expected) in cases {
        let mut lines = vec!["EHLO client.test", "STARTTLS", "EHLO client.test"];
        lines.extend(exchange);
        let result = dialogue(params(), &lines);
        assert_eq!(result.replies.last().unwrap(), expected, "{exchange:?}");
    }
    let mut nobody = params();
    nobody.auth_offered = false;
    let result = dialogue(
        nobody,
        &[
            "EHLO client.test",
            "STARTTLS",
            "EHLO client.test",
            "AUTH PLAIN",
        ],
    );
    assert_eq!(result.replies.last().unwrap(), "502 5.5.1");
}

#[test]
fn submission_needs_auth_and_the_users_own_sender_then_relays() {
    let mut submission = params();
    submission.submission = true;
    let result = dialogue(
        submission,
        &[
            "EHLO client.test",
            "MAIL FROM:<alice@localhost>",
            "STARTTLS",
            "EHLO client.test",
            "MAIL FROM:<alice@localhost>",
            &format!("AUTH PLAIN {PLAIN_ALICE}"),
            "MAIL FROM:<bob@localhost>",
            "MAIL FROM:<alice@localhost> AUTH=<>",
            "RCPT TO:<someone@remote.test>",
            "DATA",
            "Subject: hi",
            "",
            "hello",
            ".",
        ],
    );
    let codes: Vec<&str> = result.replies.iter().map(String::as_str).collect();
    assert_eq!(
        codes[1..],
        [
            "250 STARTTLS",
            "530 5.7.0",
            "220 2.0.0",
            "250 AUTH",
            "530 5.7.0",
            "235 2.7.0",
            "550 5.7.1",
            "250 2.1.0",
            "250 2.1.5",
            "354 End",
            "250 2.0.0"
        ]
    );
    let envelope = result.envelope.unwrap();
    assert_eq!(envelope.with_keyword().as_str(), "ESMTPSA");
    assert_eq!(envelope.user.as_deref(), Some("alice"));
    assert_eq!(envelope.tls.as_deref(), Some("TLSv1.3 with cipher TEST"));
}

#[test]
fn tls_required_refuses_mail_before_starttls() {
    let mut required = params();
    required.tls_required = true;
    let result = dialogue(
        required,
        &[
            "EHLO client.test",
            "MAIL FROM:<a@remote.test>",
            "STARTTLS",
            "EHLO client.test",
            "MAIL FROM:<a@remote.test>",
            "RCPT TO:<someone@remote.test>",
        ],
    );
    let tail: Vec<&str> = result.replies[2..].iter().map(String::as_str).collect();
    assert_eq!(
        tail,
        [
            "530 5.7.0",
            "220 2.0.0",
            "250 AUTH",
            "250 2.1.0",
            "550 5.7.1"
        ]
    );
}

/// An ODMR session's dialogue up to AUTH as alice, then `lines`.
fn odmr_dialogue(lines: &[&str]) -> crate::smtp::harness::Run {
    let mut odmr = params();
    odmr.odmr = true;
    let auth = format!("AUTH PLAIN {PLAIN_ALICE}");
    let mut all = vec![
        "EHLO customer.test",
        "STARTTLS",
        "EHLO customer.test",
        &auth,
    ];
    all.extend(lines);
    dialogue(odmr, &all)
}

#[test]
fn atrn_turns_the_roles_for_an_authenticated_customer_on_the_odmr_port() {
    let result = odmr_dialogue(&["ATRN example.org", "MAIL FROM:<a@b.test>"]);
    assert_eq!(
        result.lines.last().unwrap(),
        "250 2.0.0 OK now reversing the connection"
    );
    assert!(result.turned, "the session ends with the turn");
    // The EHLO reply inside TLS announces ATRN with AUTH (RFC 2645 §5.1.1).
    let output = String::from_utf8(result.output).unwrap();
    assert!(output.contains("250-ATRN\r\n"), "{output}");
    let result = odmr_dialogue(&["ATRN"]);
    assert!(
        result.turned,
        "ATRN without domains asks for all of the user's"
    );
}

#[test]
fn atrn_refusals() {
    let mut odmr = params();
    odmr.odmr = true;
    let before_auth = dialogue(odmr.clone(), &["EHLO customer.test", "ATRN example.org"]);
    assert_eq!(before_auth.replies.last().unwrap(), "530 5.7.0");
    let in_tls_unauthenticated = dialogue(
        odmr,
        &[
            "EHLO customer.test",
            "STARTTLS",
            "EHLO customer.test",
            "ATRN example.org",
        ],
    );
    assert_eq!(in_tls_unauthenticated.replies.last().unwrap(), "530 5.7.0");
    for (line, expected) in [
        ("ATRN other.test", "530 5.7.1"),
        ("ATRN example.org,other.test", "530 5.7.1"),
        ("ATRN quiet.test", "453 4.0.0"),
        ("ATRN not_a domain", "501 5.5.4"),
        ("ATRN example.org,", "501 5.5.4"),
    ] {
        let result = odmr_dialogue(&[line]);
        assert_eq!(result.replies.last().unwrap(), expected, "{line}");
        assert!(!result.turned, "{line}");
    }
    // Not the ODMR port: not offered, whoever asks.
    let result = dialogue(
        params(),
        &[
            "EHLO customer.test",
            "STARTTLS",
            "EHLO customer.test",
            &format!("AUTH PLAIN {PLAIN_ALICE}"),
            "ATRN example.org",
        ],
    );
    assert_eq!(result.replies.last().unwrap(), "502 5.5.1");
    let output = String::from_utf8(result.output).unwrap();
    assert!(
        !output.contains("250-ATRN") && !output.contains("250 ATRN"),
        "{output}"
    );
}
