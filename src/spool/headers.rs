//! A message's header section (RFC 5322 2.1): where it ends, its fields, and what the spool notes of it while
//! the message arrives, so that a delivery checks for a mail loop without reading the message for it.

/// The header section's length and the count of the trace fields that the loop checks look at (RFC 5321 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderSummary {
    /// The bytes of the header section: its fields, up to the empty line that ends it (not included).
    pub len: u64,
    /// How many Received fields it holds.
    pub received: u32,
    /// How many Delivered-To fields it holds.
    pub delivered_to: u32,
}

impl HeaderSummary {
    /// The summary of the header section at the start of `start`: None when that section does not end within
    /// `start`, unless `whole` says `start` is the whole message (whose header section then is all of it).
    pub fn of(start: &[u8], whole: bool) -> Option<HeaderSummary> {
        let len = match section_end(start) {
            Some(end) => end,
            None if whole => start.len(),
            None => return None,
        };
        let mut summary = HeaderSummary {
            len: len as u64,
            received: 0,
            delivered_to: 0,
        };
        for (name, _) in fields(&start[..len]) {
            if name.eq_ignore_ascii_case(b"Received") {
                summary.received += 1;
            } else if name.eq_ignore_ascii_case(b"Delivered-To") {
                summary.delivered_to += 1;
            }
        }
        Some(summary)
    }
}

/// The header section at the start of `message`: its fields, up to the first empty line (not included), or all of
/// it when there is none.
pub fn section(message: &[u8]) -> &[u8] {
    &message[..section_end(message).unwrap_or(message.len())]
}

/// Where the first empty line (CRLF or LF) of `message` begins, if it has one.
fn section_end(message: &[u8]) -> Option<usize> {
    let mut at = 0;
    while at < message.len() {
        let line_end = message[at..].iter().position(|&b| b == b'\n')? + at + 1;
        if matches!(&message[at..line_end], b"\n" | b"\r\n") {
            return Some(at);
        }
        at = line_end;
    }
    None
}

/// The fields of a header section as (name, value) pairs, up to its empty line; the value is the rest of the
/// field's first line after the colon. Continuation lines and lines without a colon are passed over.
pub fn fields(section: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    section
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .take_while(|line| !line.is_empty())
        .filter_map(|line| {
            let colon = line.iter().position(|&b| b == b':')?;
            Some((&line[..colon], &line[colon + 1..]))
        })
        .filter(|(name, _)| !name.starts_with(b" ") && !name.starts_with(b"\t"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_section_ends_at_the_first_empty_line() {
        assert_eq!(
            section(b"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\n"),
            b"A: 1\r\nB: 2\r\n"
        );
        assert_eq!(section(b"A: 1\nB: 2\n\nbody\n"), b"A: 1\nB: 2\n");
        assert_eq!(section(b"A: 1\r\n"), b"A: 1\r\n");
        assert_eq!(section(b"\r\nbody\r\n"), b"");
        assert_eq!(section(b""), b"");
    }

    #[test]
    fn the_summary_counts_received_and_delivered_to_fields_in_the_section_only() {
        let message =
            b"Received: from a\r\n\tby b; Tue, 1 Dec 2026 10:00:00 +0000\r\nreceived: x\r\n\
            Delivered-To: bob@localhost\r\nSubject: hi\r\n\r\nReceived: in the body\r\n";
        let summary = HeaderSummary::of(message, true).unwrap();
        assert_eq!(
            summary,
            HeaderSummary {
                len: section(message).len() as u64,
                received: 2,
                delivered_to: 1,
            }
        );
        assert_eq!(HeaderSummary::of(message, false), Some(summary));
    }

    #[test]
    fn a_section_that_does_not_end_in_a_partial_message_is_not_summarized() {
        assert_eq!(HeaderSummary::of(b"Received: a\r\nSubj", false), None);
        let whole = HeaderSummary::of(b"Received: a\r\nSubj", true).unwrap();
        assert_eq!((whole.len, whole.received), (17, 1));
    }

    #[test]
    fn continuation_lines_and_lines_without_a_colon_are_not_fields() {
        let section = b"Received: a\r\n Received: folded\r\nno colon\r\nX: 1\r\n\r\nY: 2\r\n";
        let names: Vec<_> = fields(section).map(|(name, _)| name).collect();
        assert_eq!(names, [&b"Received"[..], b"X"]);
    }
}
