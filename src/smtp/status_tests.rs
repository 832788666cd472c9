//! Enhanced status codes as the registry numbers them.

use super::*;

fn wire(status: Status) -> String {
    let mut out = Vec::new();
    status.write_to(&mut out);
    String::from_utf8(out).unwrap()
}

#[test]
fn codes_are_written_as_the_registry_numbers_them() {
    let cases = [
        (Class::Success, Detail::Undefined, "2.0.0"),
        (Class::Success, Detail::DestinationValid, "2.1.5"),
        (Class::TransientFailure, Detail::TooManyRecipients, "4.5.3"),
        (
            Class::TransientFailure,
            Detail::DeliveryTimeExpired,
            "4.4.7",
        ),
        (
            Class::PermanentFailure,
            Detail::BadDestinationMailbox,
            "5.1.1",
        ),
        (Class::PermanentFailure, Detail::NullMx, "5.1.10"),
        (Class::PermanentFailure, Detail::NonAsciiAddress, "5.6.7"),
        (
            Class::PermanentFailure,
            Detail::EncryptionRequiredForMechanism,
            "5.7.11",
        ),
    ];
    for (class, detail, expected) in cases {
        let status = Status::new(class, detail);
        assert_eq!(wire(status), expected);
        assert_eq!(status.to_string(), expected);
    }
}

#[test]
fn every_detail_is_distinct_and_described() {
    for (i, a) in Detail::ALL.iter().enumerate() {
        assert!(!a.meaning().is_empty() && a.reference().starts_with("RFC "));
        for b in &Detail::ALL[i + 1..] {
            assert!(
                (a.subject(), a.number()) != (b.subject(), b.number()),
                "{a:?} and {b:?} have the same code"
            );
        }
    }
}

#[test]
fn reply_codes_give_the_class() {
    assert_eq!(Class::of_reply_code(250), Some(Class::Success));
    assert_eq!(Class::of_reply_code(421), Some(Class::TransientFailure));
    assert_eq!(Class::of_reply_code(554), Some(Class::PermanentFailure));
    assert_eq!(Class::of_reply_code(354), None);
    assert_eq!(Class::of_reply_code(220 - 100), None);
}
