//! The path grammar: valid and invalid paths, length limits, UTF-8 addresses.

use super::*;

fn forward(text: &str) -> Result<String, AddressError> {
    parse_forward_path(text, false).map(|(path, rest)| format!("{path}|{rest}"))
}

#[test]
fn valid_paths() {
    let cases = [
        ("<user@example.org>", "user@example.org|"),
        (
            "<User.Name+tag@Example.ORG> SIZE=10",
            "User.Name+tag@Example.ORG| SIZE=10",
        ),
        ("<postmaster>", "postmaster|"),
        ("<PostMaster>", "postmaster|"),
        ("<postmaster@localhost>", "postmaster@localhost|"),
        ("<\"john doe\"@example.org>", "\"john doe\"@example.org|"),
        ("<\"a>b\"@example.org>", "\"a>b\"@example.org|"),
        (
            "<\"quote\\\"d\"@example.org>",
            "\"quote\\\"d\"@example.org|",
        ),
        ("<\"plain\"@example.org>", "plain@example.org|"),
        (
            "<@relay.example,@hop.example:user@example.org>",
            "user@example.org|",
        ),
        ("<user@[192.0.2.1]>", "user@[192.0.2.1]|"),
        ("<user@[IPv6:2001:db8::1]>", "user@[IPv6:2001:db8::1]|"),
        ("<user@[ipv6:::1]>", "user@[IPv6:::1]|"),
        ("<a!#$%&'*/=?^_`{|}~-@x.y>", "a!#$%&'*/=?^_`{|}~-@x.y|"),
    ];
    for (text, expected) in cases {
        assert_eq!(forward(text).as_deref(), Ok(expected), "{text}");
        // The spool's copy, sized at once, is the same text.
        let (path, _) = parse_forward_path(text, false).unwrap();
        assert_eq!(path.to_address(), path.to_string(), "{text}");
    }
}

#[test]
fn invalid_paths() {
    let long_local = format!("<{}@example.org>", "a".repeat(65));
    let long_path = format!(
        "<{}@{}.org>",
        "a".repeat(60),
        vec!["b".repeat(60); 4].join(".")
    );
    let cases: Vec<(&str, &str)> = vec![
        ("user@example.org", "angle brackets"),
        ("<user@example.org", "closing angle"),
        ("<>", "null path"),
        ("<user>", "no '@domain'"),
        ("<@example.org>", "source route"),
        ("<.user@example.org>", "empty atom"),
        ("<us..er@example.org>", "empty atom"),
        ("<us er@example.org>", "needs quoting"),
        ("<user@>", "domain is empty"),
        ("<user@-bad.example>", "valid host name"),
        ("<user@bad..example>", "valid host name"),
        ("<user@exa_mple.org>", "valid host name"),
        ("<user@[192.0.2.300]>", "address literal"),
        ("<user@[IPv6:zz::1]>", "IPv6"),
        ("<user@[192.0.2.1>", "ends with ']'"),
        ("<\"open@example.org>", "no closing angle bracket"),
        ("\"open@example.org", "angle brackets"),
        ("<\"a\\\u{1}\"@example.org>", "backslash"),
        ("<\"tab\there\"@example.org>", "control character"),
        (&long_local, "64 octets"),
        (&long_path, "256 octets"),
        ("<josé@example.org>", "SMTPUTF8"),
        ("<user@exämple.org>", "SMTPUTF8"),
    ];
    for (text, expected) in cases {
        let error = forward(text).expect_err(text);
        assert!(
            error.describe().contains(expected),
            "{text}: {}",
            error.describe()
        );
    }
}

#[test]
fn long_domains_are_refused() {
    let long = vec!["b".repeat(63); 5].join(".");
    assert_eq!(
        domain(&long, false),
        Err(AddressError::TooLong(
            "the domain is longer than 255 octets"
        ))
    );
    assert!(domain(&long[..255], false).is_ok());
}

#[test]
fn utf8_addresses_need_smtputf8() {
    let (path, _) = parse_forward_path("<josé@exämple.org>", true).unwrap();
    assert_eq!(path.to_string(), "josé@exämple.org");
    assert_eq!(
        parse_forward_path("<josé@example.org>", false),
        Err(AddressError::NeedsSmtputf8)
    );
}

#[test]
fn reverse_paths() {
    assert_eq!(parse_reverse_path("<>", false), Ok((ReversePath::Null, "")));
    assert_eq!(
        parse_reverse_path("<> BODY=8BITMIME", false).unwrap().1,
        " BODY=8BITMIME"
    );
    let (path, _) = parse_reverse_path("<a@b.example>", false).unwrap();
    assert_eq!(path.to_string(), "a@b.example");
    assert!(parse_reverse_path("<postmaster>", false).is_err());
}
