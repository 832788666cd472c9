//! The header line that frames each record in a queue file: the lengths and the checksum.

/// The header's length in bytes: `POSTEL1 <8 hex> <16 hex> <8 hex>\n`.
pub(crate) const HEADER_LEN: usize = 43;

/// How every record, and so every queue file, begins.
const MAGIC: &[u8] = b"POSTEL1 ";

/// Where an erased record's header differs from a live one's: `POSTEL1-` instead of `POSTEL1 `.
pub(super) const ERASED_MARK_AT: usize = 7;

/// The byte that marks a record erased (by `postel queue remove`): its envelope and body are zeros, and its
/// checksum no longer counts. One byte is written in one piece, so a crash leaves the header either live or
/// erased.
pub(super) const ERASED_MARK: u8 = b'-';

/// A record's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header {
    /// The envelope's length in bytes.
    pub envelope_len: u32,
    /// The body's length in bytes.
    pub body_len: u64,
    /// CRC-32 (IEEE) of the envelope followed by the body.
    pub crc: u32,
}

impl Header {
    /// The header line.
    pub(crate) fn encode(&self) -> [u8; HEADER_LEN] {
        let text = format!(
            "POSTEL1 {:08x} {:016x} {:08x}\n",
            self.envelope_len, self.body_len, self.crc
        );
        let mut line = [0; HEADER_LEN];
        line.copy_from_slice(text.as_bytes());
        line
    }

    /// Parses a header line; the error says what is wrong with it.
    pub(crate) fn parse(line: &[u8; HEADER_LEN]) -> Result<Header, &'static str> {
        if !line.starts_with(MAGIC) {
            return Err("no POSTEL1 header");
        }
        if line[16] != b' ' || line[33] != b' ' || line[42] != b'\n' {
            return Err("malformed header");
        }
        match (hex(&line[8..16]), hex(&line[17..33]), hex(&line[34..42])) {
            (Some(envelope_len), Some(body_len), Some(crc)) => Ok(Header {
                envelope_len: envelope_len as u32,
                body_len,
                crc: crc as u32,
            }),
            _ => Err("malformed header"),
        }
    }
}

/// The header of an erased record: the line of a live one with [`ERASED_MARK`] at [`ERASED_MARK_AT`].
pub(crate) fn parse_erased(line: &[u8; HEADER_LEN]) -> Option<Header> {
    let mut live = *line;
    if live[ERASED_MARK_AT] != ERASED_MARK {
        return None;
    }
    live[ERASED_MARK_AT] = MAGIC[ERASED_MARK_AT];
    Header::parse(&live).ok()
}

/// Whether a file that begins with `start` (its first bytes, perhaps all of them) can be a queue
/// file, perhaps one cut short; its first record may be erased.
pub(super) fn may_start_queue_file(start: &[u8]) -> bool {
    let n = start.len().min(MAGIC.len());
    let mut start = start[..n].to_vec();
    if n > ERASED_MARK_AT && start[ERASED_MARK_AT] == ERASED_MARK {
        start[ERASED_MARK_AT] = MAGIC[ERASED_MARK_AT];
    }
    start == MAGIC[..n]
}

/// Lower-case hexadecimal digits (at most 16) as a number.
fn hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0, |n, &b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_have_the_documented_form_and_parse_back() {
        let header = Header {
            envelope_len: 0x1a2,
            body_len: 0x3_0000_0000,
            crc: 0xdeadbeef,
        };
        let line = header.encode();
        assert_eq!(&line[..], b"POSTEL1 000001a2 0000000300000000 deadbeef\n");
        assert_eq!(Header::parse(&line), Ok(header));
    }

    #[test]
    fn damaged_headers_are_refused() {
        let good = *b"POSTEL1 000001a2 0000000300000000 deadbeef\n";
        let damage: [(usize, u8); 5] = [(0, b'X'), (9, b'A'), (16, b'-'), (20, b'+'), (42, b' ')];
        for (at, byte) in damage {
            let mut line = good;
            line[at] = byte;
            assert!(
                Header::parse(&line).is_err(),
                "{}",
                String::from_utf8_lossy(&line)
            );
        }
    }

    #[test]
    fn only_a_magic_prefix_may_start_a_queue_file() {
        assert!(may_start_queue_file(b""));
        assert!(may_start_queue_file(b"POST"));
        assert!(may_start_queue_file(b"POSTEL1 0000"));
        assert!(!may_start_queue_file(b"From alice"));
        assert!(!may_start_queue_file(b"POSTEL2 "));
        assert!(may_start_queue_file(b"POSTEL1-0000"));
    }

    #[test]
    fn an_erased_header_is_a_live_one_with_its_mark() {
        let live = *b"POSTEL1 000001a2 0000000300000000 deadbeef\n";
        let mut erased = live;
        erased[ERASED_MARK_AT] = ERASED_MARK;
        assert!(
            Header::parse(&erased).is_err(),
            "an erased record is never read as live"
        );
        assert_eq!(parse_erased(&erased), Header::parse(&live).ok());
        assert_eq!(parse_erased(&live), None);
    }
}
