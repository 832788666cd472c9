//! Host names under each set of rules.

use super::*;

#[test]
fn names_under_each_rule() {
    use HostNameError::*;
    let label = "a".repeat(63);
    let long_label = format!("{label}a.test");
    let names_253 = [label.as_str(); 4].join(".")[..253].to_string();
    let names_254 = [label.as_str(); 4].join(".")[..254].to_string();
    // (name, mail domain, own host name, DNS name)
    type Case<'a> = (&'a str, [Result<(), HostNameError>; 3]);
    let cases: &[Case] = &[
        ("example.org", [Ok(()), Ok(()), Ok(())]),
        ("Mail-1.Example.ORG", [Ok(()), Ok(()), Ok(())]),
        ("localhost", [Ok(()), Ok(()), Ok(())]),
        (
            "_srv.x-1.test",
            [Err(BadCharacter), Err(BadCharacter), Ok(())],
        ),
        (
            "exa_mple.org",
            [Err(BadCharacter), Err(BadCharacter), Ok(())],
        ),
        ("bücher.test", [Ok(()), Err(NotAscii), Err(NotAscii)]),
        ("", [Err(Empty), Err(Empty), Err(Empty)]),
        (".", [Err(LabelLength); 3]),
        ("a..b", [Err(LabelLength); 3]),
        (".a", [Err(LabelLength); 3]),
        ("a.", [Err(LabelLength); 3]),
        (&long_label, [Err(LabelLength); 3]),
        ("-bad.example", [Err(BadCharacter); 3]),
        ("bad-.example", [Err(BadCharacter); 3]),
        ("a b.test", [Err(BadCharacter); 3]),
        ("a/b.test", [Err(BadCharacter); 3]),
        ("[127.0.0.1]", [Err(BadCharacter); 3]),
        (&names_253, [Ok(()), Ok(()), Ok(())]),
        (&names_254, [Ok(()), Err(TooLong), Err(TooLong)]),
    ];
    let rules = [
        HostNameRules::MAIL_DOMAIN,
        HostNameRules::HOST_NAME,
        HostNameRules::DNS_NAME,
    ];
    for (name, expected) in cases {
        for (rules, expected) in rules.iter().zip(expected) {
            assert_eq!(
                check_host_name(name, *rules),
                *expected,
                "{name:?} under {rules:?}"
            );
        }
    }
    let longest = [label.as_str(); 5].join(".")[..255].to_string();
    assert_eq!(
        check_host_name(&longest, HostNameRules::MAIL_DOMAIN),
        Ok(())
    );
    assert_eq!(
        check_host_name(&format!("{longest}b"), HostNameRules::MAIL_DOMAIN),
        Err(TooLong)
    );
}
