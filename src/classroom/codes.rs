//! What reply codes mean, for people: each digit of a reply code (RFC 5321 §4.2.1), the common codes (RFC 5321
//! §4.2.2 and the extensions' RFCs), and an enhanced status code (RFC 3463) through the status registry.

use crate::smtp::Detail;

/// The first digit of a reply code.
fn first_digit(digit: u8) -> &'static str {
    match digit {
        b'2' => "2yz positive completion: done",
        b'3' => "3yz positive intermediate: go on, send the rest",
        b'4' => "4yz transient negative: not now, try again later",
        b'5' => "5yz permanent negative: no, and the same again will fail again",
        _ => "an unknown kind of reply",
    }
}

/// The second digit of a reply code.
fn second_digit(digit: u8) -> &'static str {
    match digit {
        b'0' => "x0z syntax",
        b'1' => "x1z information",
        b'2' => "x2z the connection",
        b'5' => "x5z the mail system",
        _ => "unspecified category",
    }
}

/// The common reply codes and what they mean, by the section that defines them.
const CODES: &[(&str, &[(u16, &str)])] = &[
    (
        "RFC 5321 §4.2.2",
        &[
            (211, "system status"),
            (214, "help message"),
            (220, "the service is ready"),
            (221, "the service is closing the connection"),
            (250, "requested action okay, completed"),
            (251, "user not local; will forward"),
            (252, "cannot verify the user, but will accept the message"),
            (354, "start mail input; end with <CRLF>.<CRLF>"),
            (421, "service not available, closing the connection"),
            (450, "mailbox unavailable right now"),
            (451, "local error in processing"),
            (452, "insufficient system storage"),
            (455, "server unable to accommodate parameters"),
            (
                500,
                "syntax error, command unrecognized (or the line is too long)",
            ),
            (501, "syntax error in parameters or arguments"),
            (502, "command not implemented"),
            (503, "bad sequence of commands"),
            (504, "command parameter not implemented"),
            (550, "mailbox unavailable, or refused by policy"),
            (551, "user not local"),
            (552, "exceeded storage allocation"),
            (553, "mailbox name not allowed"),
            (554, "transaction failed"),
            (555, "MAIL or RCPT parameters not recognized"),
        ],
    ),
    (
        "RFC 4954 §4",
        &[(334, "authentication challenge: send the next step")],
    ),
    (
        "RFC 4954 §6",
        &[
            (235, "authentication succeeded"),
            (454, "temporary authentication or TLS failure"),
            (530, "authentication required"),
            (535, "authentication credentials invalid"),
        ],
    ),
    (
        "RFC 1985 §5",
        &[
            (253, "pending messages for the node started"),
            (458, "unable to queue messages for the node"),
        ],
    ),
    (
        "RFC 2645",
        &[(453, "no mail is held for the domains ATRN asked for")],
    ),
];

/// What reply code `code` means, and where that is defined.
fn meaning(code: u16) -> Option<(&'static str, &'static str)> {
    CODES.iter().find_map(|&(reference, codes)| {
        codes
            .iter()
            .find(|&&(c, _)| c == code)
            .map(|&(_, meaning)| (meaning, reference))
    })
}

/// A reply line (`250 2.1.5 Ok`) explained: its code by meaning and by digits, and its enhanced status code.
pub fn explain_reply(line: &str) -> String {
    let code = line.get(..3).unwrap_or("");
    let digits = code.as_bytes();
    let mut out = match code.parse().ok().and_then(meaning) {
        Some((meaning, reference)) => format!("{code}: {meaning} ({reference})"),
        None => format!("{code}:"),
    };
    if digits.len() == 3 {
        out += &format!(
            "; digits: {}, {} (RFC 5321 §4.2.1)",
            first_digit(digits[0]),
            second_digit(digits[1])
        );
    }
    if let Some(status) = line.get(4..).and_then(|rest| rest.split(' ').next())
        && let Some(detail) = status_detail(status)
    {
        out += &format!("; {status} = {} ({})", detail.meaning(), detail.reference());
    }
    out
}

/// The registry entry of an enhanced status code written `c.s.d`.
fn status_detail(code: &str) -> Option<Detail> {
    let mut numbers = code.split('.');
    let class = numbers.next()?;
    let subject: u8 = numbers.next()?.parse().ok()?;
    let number: u16 = numbers.next()?.parse().ok()?;
    if !matches!(class, "2" | "4" | "5") || numbers.next().is_some() {
        return None;
    }
    Detail::ALL
        .iter()
        .copied()
        .find(|d| d.subject() as u8 == subject && d.number() == number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_explained_by_meaning_digits_and_status() {
        let text = explain_reply("250 2.1.5 Ok");
        assert!(text.starts_with("250: requested action okay"), "{text}");
        assert!(text.contains("2yz positive completion"), "{text}");
        assert!(text.contains("x5z the mail system"), "{text}");
        assert!(
            text.contains("2.1.5 = destination address valid (RFC 3463 §3.2)"),
            "{text}"
        );
        let text = explain_reply("354 End data with <CR><LF>.<CR><LF>");
        assert!(text.contains("3yz positive intermediate"), "{text}");
        let text = explain_reply("535 5.7.8 Error: authentication failed");
        assert!(
            text.starts_with("535: authentication credentials invalid (RFC 4954 §6)"),
            "{text}"
        );
    }
}
