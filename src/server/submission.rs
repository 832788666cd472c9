//! What a message submission agent adds to what mail programs leave out (RFC 6409 section 8): a Date and a
//! Message-ID header, when the message has none. The header section is held back until its end (or until
//! [`HOLD_LIMIT`] octets), so that the added lines go before it; the rest passes straight through.

/// A header section longer than this is passed on as it is, with what was found so far decided on.
const HOLD_LIMIT: usize = 64 * 1024;

/// The header lines added to one submitted message.
pub struct Fixup {
    /// `Date: ...\r\n` and `Message-ID: <...>\r\n`, offered in that order.
    date: String,
    message_id: String,
    /// The start of the message, until the header section is seen whole.
    held: Vec<u8>,
    decided: bool,
}

impl Fixup {
    /// `date` is an RFC 5322 date; `message_id` the identifier without angle brackets.
    pub fn new(date: String, message_id: String) -> Fixup {
        Fixup {
            date: format!("Date: {date}\r\n"),
            message_id: format!("Message-ID: <{message_id}>\r\n"),
            held: Vec::new(),
            decided: false,
        }
    }

    /// Takes message content; whatever may go on is given to `out`.
    pub fn feed(&mut self, content: &[u8], out: &mut dyn FnMut(&[u8])) {
        if self.decided {
            return out(content);
        }
        self.held.extend_from_slice(content);
        if header_end(&self.held).is_some() || self.held.len() >= HOLD_LIMIT {
            self.decide(out);
        }
    }

    /// The message is complete: what is still held goes on.
    pub fn finish(&mut self, out: &mut dyn FnMut(&[u8])) {
        if !self.decided {
            self.decide(out);
        }
    }

    fn decide(&mut self, out: &mut dyn FnMut(&[u8])) {
        self.decided = true;
        let headers = &self.held[..header_end(&self.held).unwrap_or(self.held.len())];
        if !has_field(headers, b"date:") {
            out(self.date.as_bytes());
        }
        if !has_field(headers, b"message-id:") {
            out(self.message_id.as_bytes());
        }
        out(&self.held);
        self.held = Vec::new();
    }
}

/// Where the header section ends: the length up to its empty line, 0 when the message begins with one.
fn header_end(message: &[u8]) -> Option<usize> {
    if message.starts_with(b"\r\n") || message.starts_with(b"\n") {
        return Some(0);
    }
    let crlf = memchr::memmem::find(message, b"\r\n\r\n").map(|i| i + 2);
    let lf = memchr::memmem::find(message, b"\n\n").map(|i| i + 1);
    crlf.into_iter().chain(lf).min()
}

/// Whether a header line starts with `name` (lower case, with its colon), in any case.
fn has_field(headers: &[u8], name: &[u8]) -> bool {
    headers
        .split(|&b| b == b'\n')
        .any(|line| line.len() >= name.len() && line[..name.len()].eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(pieces: &[&[u8]]) -> String {
        let mut fixup = Fixup::new("Tue, 1 Dec 2026 10:00:00 +0000".into(), "ID@mx.test".into());
        let mut stored = Vec::new();
        for piece in pieces {
            fixup.feed(piece, &mut |b| stored.extend_from_slice(b));
        }
        fixup.finish(&mut |b| stored.extend_from_slice(b));
        String::from_utf8(stored).unwrap()
    }

    const DATE: &str = "Date: Tue, 1 Dec 2026 10:00:00 +0000\r\n";
    const ID: &str = "Message-ID: <ID@mx.test>\r\n";

    #[test]
    fn missing_fields_are_added_before_the_headers() {
        let message = "From: a@b\r\nSubject: hi\r\n\r\nbody\r\n";
        assert_eq!(fixed(&[message.as_bytes()]), format!("{DATE}{ID}{message}"));
        let pieces: Vec<&[u8]> = message.as_bytes().chunks(3).collect();
        assert_eq!(fixed(&pieces), format!("{DATE}{ID}{message}"));
    }

    #[test]
    fn present_fields_are_left_alone_in_any_case() {
        let message = "DATE: Mon, 30 Nov 2026 09:00:00 +0000\r\nmessage-id: <x@y>\r\n\r\nbody\r\n";
        assert_eq!(fixed(&[message.as_bytes()]), message);
        let only_date = "Date: Mon, 30 Nov 2026 09:00:00 +0000\r\n\r\nMessage-ID: in the body\r\n";
        assert_eq!(fixed(&[only_date.as_bytes()]), format!("{ID}{only_date}"));
    }

    #[test]
    fn no_header_section_and_no_end_of_headers() {
        assert_eq!(
            fixed(&[b"\r\nbody only\r\n"]),
            format!("{DATE}{ID}\r\nbody only\r\n")
        );
        assert_eq!(
            fixed(&[b"Subject: cut short"]),
            format!("{DATE}{ID}Subject: cut short")
        );
        assert_eq!(fixed(&[]), format!("{DATE}{ID}"));
    }
}
