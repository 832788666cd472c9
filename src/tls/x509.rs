//! Just enough DER to read a certificate's validity period, for `postel check` and the start-up warning.
//! The certificate itself is verified by rustls; this only reads `tbsCertificate.validity` (RFC 5280 4.1).

use chrono::{DateTime, NaiveDate, Utc};

/// One DER element: its tag, its content and what follows it.
fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let len = rest[..count]
            .iter()
            .fold(0usize, |len, &b| (len << 8) | usize::from(b));
        (len, &rest[count..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// The certificate's notBefore and notAfter, or None if the DER is not a certificate.
pub fn validity(certificate: &[u8]) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
    let (SEQUENCE, certificate, _) = element(certificate)? else {
        return None;
    };
    let (SEQUENCE, mut tbs, _) = element(certificate)? else {
        return None;
    };
    if tbs.first() == Some(&VERSION) {
        tbs = element(tbs)?.2;
    }
    // serialNumber, signature, issuer: skipped.
    for _ in 0..3 {
        tbs = element(tbs)?.2;
    }
    let (SEQUENCE, validity, _) = element(tbs)? else {
        return None;
    };
    let (tag, not_before, rest) = element(validity)?;
    let not_before = time(tag, not_before)?;
    let (tag, not_after, _) = element(rest)?;
    Some((not_before, time(tag, not_after)?))
}

/// A UTCTime (YYMMDDHHMMSSZ, years 1950 to 2049) or GeneralizedTime (YYYYMMDDHHMMSSZ).
fn time(tag: u8, text: &[u8]) -> Option<DateTime<Utc>> {
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match tag {
        UTC_TIME if text.len() == 12 => {
            let yy: i32 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |n: usize| rest[n..n + 2].parse::<u32>().ok();
    let date = NaiveDate::from_ymd_opt(year, field(0)?, field(2)?)?;
    Some(date.and_hms_opt(field(4)?, field(6)?, field(8)?)?.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn validity_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["mx.example.test".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2024, 1, 2);
        params.not_after = rcgen::date_time_ymd(2051, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        let (from, until) = validity(certificate.der()).unwrap();
        assert_eq!(from, Utc.with_ymd_and_hms(2024, 1, 2, 0, 0, 0).unwrap());
        assert_eq!(until, Utc.with_ymd_and_hms(2051, 3, 4, 0, 0, 0).unwrap());
    }

    #[test]
    fn garbage_is_no_certificate() {
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x82\xff\xff",
            b"\x30\x03\x02\x01\x00",
            b"hello",
        ] {
            assert_eq!(validity(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn both_time_forms() {
        let utc = |s: &str| time(UTC_TIME, s.as_bytes());
        assert_eq!(
            utc("491231235959Z"),
            Some(Utc.with_ymd_and_hms(2049, 12, 31, 23, 59, 59).unwrap())
        );
        assert_eq!(
            utc("500101000000Z"),
            Some(Utc.with_ymd_and_hms(1950, 1, 1, 0, 0, 0).unwrap())
        );
        assert_eq!(
            time(GENERALIZED_TIME, b"20600101000000Z").map(|t| t.timestamp()),
            Some(2840140800)
        );
        assert_eq!(utc("5001010000Z"), None);
        assert_eq!(utc("501301000000Z"), None);
        assert_eq!(utc("+01231000000Z"), None);
    }
}
