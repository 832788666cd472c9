//! Replies as they go on the wire and into the log.

use super::*;

fn wire(reply: &Reply) -> String {
    let mut out = Vec::new();
    reply.write_to(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn one_line_and_many() {
    assert_eq!(wire(&OK), "250 2.0.0 Ok\r\n");
    assert_eq!(
        wire(&Reply::new(550, Detail::NullMx, "no mail here")),
        "550 5.1.10 no mail here\r\n"
    );
    assert_eq!(wire(&Reply::plain(220, "mx ESMTP")), "220 mx ESMTP\r\n");
    assert_eq!(wire(&START_DATA), "354 End data with <CR><LF>.<CR><LF>\r\n");
    let ehlo = Reply::lines(
        250,
        None,
        vec!["mx".into(), "PIPELINING".into(), "HELP".into()],
    );
    assert_eq!(wire(&ehlo), "250-mx\r\n250-PIPELINING\r\n250 HELP\r\n");
    let help = Reply::lines(214, Some(Detail::Undefined), vec!["a".into(), "b".into()]);
    assert_eq!(wire(&help), "214-2.0.0 a\r\n214 2.0.0 b\r\n");
    assert_eq!(ehlo.to_string(), "250 mx / PIPELINING / HELP");
    assert_eq!(
        TOO_MANY_RECIPIENTS.to_string(),
        "452 4.5.3 Error: too many recipients"
    );
    assert_eq!(
        Reply::lines(250, None, vec!["one".into()]),
        Reply::plain(250, "one")
    );
}
