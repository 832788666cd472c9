//! The argument grammar: lines split into verb and arguments, and each kind of argument parsed or refused.

use super::*;
use crate::smtp::address::{Domain, Mailbox};

/// A line, and its verb and arguments or the reply to it.
type SplitCase<'a> = (&'a [u8], Result<(&'a str, &'a str), &'a str>);

#[test]
fn lines_split_into_verb_and_arguments() {
    let cases: &[SplitCase] = &[
        (b"NOOP", Ok(("NOOP", ""))),
        (b"NOOP ", Ok(("NOOP", ""))),
        (b"helo  client.example ", Ok(("helo", "client.example"))),
        (b"EXPN staff list", Ok(("EXPN", "staff list"))),
        (b"", Err("500 5.5.2 Error: empty command line")),
        (b" NOOP", Err("500 5.5.2 Error: empty command line")),
        (
            b"NO\0OP",
            Err("500 5.5.2 Error: NUL character in command line"),
        ),
        (
            b"NOOP \xff",
            Err("500 5.5.2 Error: command line is not valid UTF-8"),
        ),
    ];
    for (line, expected) in cases {
        let got = split(line).map_err(|reply| reply.to_string());
        assert_eq!(
            got.as_ref().map_err(String::as_str),
            expected.as_ref().map_err(|e| *e),
            "{line:?}"
        );
    }
}

#[test]
fn words_and_text() {
    assert_eq!(no_argument(""), Ok(()));
    assert_eq!(no_argument("x"), Err(ArgError::Syntax));
    assert_eq!(one_word("example.org"), Ok("example.org"));
    assert_eq!(one_word(""), Err(ArgError::Syntax));
    assert_eq!(one_word("two words"), Err(ArgError::Syntax));
    assert_eq!(some_text("staff list"), Ok("staff list"));
    assert_eq!(some_text(""), Err(ArgError::Syntax));
}

#[test]
fn mail_and_rcpt() {
    let alice = Mailbox {
        local: "alice".into(),
        domain: Domain::Name("example.org".into()),
    };
    assert_eq!(
        mail("FROM:<alice@example.org> SIZE=1000 BODY=8bitmime SMTPUTF8"),
        Ok(MailArgs {
            from: ReversePath::Mailbox(alice.clone()),
            params: MailParams {
                size: Some(1000),
                body: Some(BodyType::EightBitMime),
                smtputf8: true
            },
            utf8: false,
        })
    );
    assert_eq!(
        mail("from: <>"),
        Ok(MailArgs {
            from: ReversePath::Null,
            params: MailParams::default(),
            utf8: false
        })
    );
    assert_eq!(
        rcpt("TO:<alice@example.org>"),
        Ok(RcptArgs {
            to: ForwardPath::Mailbox(alice),
            utf8: false
        })
    );
    assert_eq!(
        rcpt("TO:<Postmaster>"),
        Ok(RcptArgs {
            to: ForwardPath::Postmaster,
            utf8: false
        })
    );
    assert!(matches!(
        rcpt("TO:<josé@example.org>"),
        Ok(RcptArgs { utf8: true, .. })
    ));
    assert_eq!(mail("TO:<a@b.c>"), Err(ArgError::Syntax));
    assert_eq!(rcpt("FROM:<a@b.c>"), Err(ArgError::Syntax));
}

#[test]
fn chunks() {
    let cases = [
        (
            "0 LAST",
            Ok(Chunk {
                size: 0,
                last: true,
            }),
        ),
        (
            "1000 last",
            Ok(Chunk {
                size: 1000,
                last: true,
            }),
        ),
        (
            "1000",
            Ok(Chunk {
                size: 1000,
                last: false,
            }),
        ),
        ("", Err(ArgError::Syntax)),
        ("x", Err(ArgError::Syntax)),
        ("-1", Err(ArgError::Syntax)),
        ("10 FIRST", Err(ArgError::Syntax)),
        ("10 LAST more", Err(ArgError::Syntax)),
        ("999999999999999999999", Err(ArgError::Syntax)),
    ];
    for (args, expected) in cases {
        assert_eq!(chunk(args), expected, "{args:?}");
    }
}

#[test]
fn mail_parameters_in_any_case_all_checked_first() {
    let lower = mail("from:<a@b.c> size=10 body=7bit smtputf8").unwrap();
    assert_eq!(
        lower.params,
        MailParams {
            size: Some(10),
            body: Some(BodyType::SevenBit),
            smtputf8: true
        }
    );
    let reply = |args| match mail(args) {
        Err(ArgError::Reply(reply)) => reply.to_string(),
        other => panic!("{args}: {other:?}"),
    };
    assert_eq!(
        reply("FROM:<a@b.c> foo=bar"),
        "555 5.5.4 Error: FOO is not supported here"
    );
    assert_eq!(
        reply("FROM:<a@b.c> FOO=bar =x"),
        "501 5.5.4 Syntax: bad parameter '=x'"
    );
    assert_eq!(
        reply("FROM:<a@b.c> body=7bit Body=8bitmime"),
        "501 5.5.4 Syntax: bad or repeated BODY parameter"
    );
}
