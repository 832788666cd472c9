//! A message's delivery state (the latest outcome for each recipient, and how many attempts), and
//! the text form of the journal entries that record it.

use chrono::{DateTime, NaiveDateTime, Utc};

use super::id::QueueId;

/// What became of one delivery to one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Delivered,
    /// Failed for good (bounced, or dropped): never tried again.
    Failed {
        status: String,
        diagnostic: String,
    },
    /// Failed for now: tried again at or after `next_try`.
    Deferred {
        status: String,
        diagnostic: String,
        next_try: DateTime<Utc>,
    },
    /// An append of `len` bytes at byte `offset` of a mailbox was under way: if it is found there, whole, the
    /// delivery happened (a crash came between the append and its record); if not, it is tried again.
    Appending {
        offset: u64,
        len: u64,
    },
}

/// The outcome of a delivery to one final recipient ("alice@localhost", "|/usr/bin/prog -x", ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientResult {
    pub recipient: String,
    pub outcome: Outcome,
}

/// What the spool knows of a message's deliveries so far: the latest outcome for each recipient
/// (in the order the recipients were first recorded) and how many attempts were recorded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryState {
    pub results: Vec<RecipientResult>,
    pub attempts: u32,
}

impl DeliveryState {
    /// The latest outcome recorded for `recipient`.
    pub fn outcome(&self, recipient: &str) -> Option<&Outcome> {
        self.results
            .iter()
            .find(|r| r.recipient == recipient)
            .map(|r| &r.outcome)
    }

    /// The earliest time a deferred recipient is due to be tried again.
    pub fn next_try(&self) -> Option<DateTime<Utc>> {
        self.results
            .iter()
            .filter_map(|r| match r.outcome {
                Outcome::Deferred { next_try, .. } => Some(next_try),
                _ => None,
            })
            .min()
    }

    /// Takes in the results of one attempt, as [`Spool::record`](super::Spool::record) does on disk:
    /// each replaces the recipient's earlier outcome, and the attempt is counted.
    pub fn apply(&mut self, results: impl IntoIterator<Item = RecipientResult>) {
        results.into_iter().for_each(|result| self.set(result));
        self.attempts = self.attempts.saturating_add(1);
    }

    fn set(&mut self, result: RecipientResult) {
        match self
            .results
            .iter_mut()
            .find(|r| r.recipient == result.recipient)
        {
            Some(earlier) => earlier.outcome = result.outcome,
            None => self.results.push(result),
        }
    }

    /// Takes in one journal entry other than `done`.
    pub(super) fn replay(&mut self, entry: Entry) {
        match entry {
            Entry::Result(result) => self.set(result),
            Entry::Attempts(n) => self.attempts = self.attempts.saturating_add(n),
            Entry::Done => {}
        }
    }

    /// The entries that rebuild this state from nothing.
    pub(super) fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        let attempts = (self.attempts > 0).then_some(Entry::Attempts(self.attempts));
        self.results
            .iter()
            .cloned()
            .map(Entry::Result)
            .chain(attempts)
    }
}

/// One journal entry, about one message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Entry {
    /// The latest outcome for one recipient.
    Result(RecipientResult),
    /// This many more delivery attempts.
    Attempts(u32),
    /// The message is finished: never to be delivered again.
    Done,
}

/// How a `next_try` time is written: RFC 3339 in UTC with as many fractional digits as it needs
/// (chrono's RFC 3339 parser refuses years beyond 9999, which `DateTime::<Utc>::MAX_UTC` has).
const TIME_FORMAT: &str = "%Y-%m-%dT%H:%M:%S%.fZ";

/// Appends the entry's line, `<id> <verb> <fields...> <crc32>\n`, to `out`.
pub(super) fn encode(id: &QueueId, entry: &Entry, out: &mut Vec<u8>) {
    match entry {
        Entry::Result(result) => encode_result(id, &result.recipient, &result.outcome, out),
        Entry::Attempts(n) => encode_line(id, &["attempts", &n.to_string()], out),
        Entry::Done => encode_line(id, &["done"], out),
    }
}

/// Appends the line of a result entry, as [`encode`] does for [`Entry::Result`], from borrowed
/// parts (so that recording a result copies nothing but into `out`).
pub(super) fn encode_result(id: &QueueId, recipient: &str, outcome: &Outcome, out: &mut Vec<u8>) {
    match outcome {
        Outcome::Delivered => encode_line(id, &["delivered", recipient], out),
        Outcome::Failed { status, diagnostic } => {
            encode_line(id, &["failed", recipient, status, diagnostic], out);
        }
        Outcome::Deferred {
            status,
            diagnostic,
            next_try,
        } => {
            let next_try = next_try.format(TIME_FORMAT).to_string();
            encode_line(
                id,
                &["deferred", recipient, &next_try, status, diagnostic],
                out,
            );
        }
        Outcome::Appending { offset, len } => {
            let (offset, len) = (offset.to_string(), len.to_string());
            encode_line(id, &["appending", recipient, &offset, &len], out);
        }
    }
}

/// Appends `<id> <fields, escaped...> <crc32>\n` to `out`.
fn encode_line(id: &QueueId, fields: &[&str], out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(id.as_str().as_bytes());
    for field in fields {
        out.push(b' ');
        escape(field, out);
    }
    let crc = crc32fast::hash(&out[start..]);
    out.extend_from_slice(format!(" {crc:08x}\n").as_bytes());
}

/// Parses one line (with its `\n`); the error says what is wrong with it.
pub(super) fn parse(line: &[u8]) -> Result<(QueueId, Entry), String> {
    let line = line
        .strip_suffix(b"\n")
        .ok_or("the line has no newline at its end")?;
    let text = std::str::from_utf8(line).map_err(|_| "the line is not UTF-8")?;
    let (content, crc) = text.rsplit_once(' ').ok_or("no checksum")?;
    if crc.len() != 8 || u32::from_str_radix(crc, 16) != Ok(crc32fast::hash(content.as_bytes())) {
        return Err("checksum mismatch".to_string());
    }
    let mut fields = content.split(' ');
    let id = fields
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("bad id: {e}"))?;
    let verb = fields.next().ok_or("no verb")?;
    let values = fields.map(unescape).collect::<Result<Vec<_>, _>>()?;
    let result = |recipient: &str, outcome| {
        Entry::Result(RecipientResult {
            recipient: recipient.to_string(),
            outcome,
        })
    };
    let entry = match (verb, &values[..]) {
        ("delivered", [recipient]) => result(recipient, Outcome::Delivered),
        ("failed", [recipient, status, diagnostic]) => result(
            recipient,
            Outcome::Failed {
                status: status.clone(),
                diagnostic: diagnostic.clone(),
            },
        ),
        ("deferred", [recipient, next_try, status, diagnostic]) => result(
            recipient,
            Outcome::Deferred {
                status: status.clone(),
                diagnostic: diagnostic.clone(),
                next_try: NaiveDateTime::parse_from_str(next_try, TIME_FORMAT)
                    .map_err(|e| format!("bad time {next_try:?}: {e}"))?
                    .and_utc(),
            },
        ),
        ("appending", [recipient, offset, len]) => result(
            recipient,
            Outcome::Appending {
                offset: offset
                    .parse()
                    .map_err(|_| format!("bad offset {offset:?}"))?,
                len: len.parse().map_err(|_| format!("bad length {len:?}"))?,
            },
        ),
        ("attempts", [n]) => Entry::Attempts(n.parse().map_err(|_| format!("bad count {n:?}"))?),
        ("done", []) => Entry::Done,
        _ => {
            return Err(format!(
                "unknown entry {verb:?} with {} fields",
                values.len()
            ));
        }
    };
    Ok((id, entry))
}

/// Writes `text` with `%`, space and the ASCII control characters as `%XX`, so that a field holds
/// no space and a line no line break.
fn escape(text: &str, out: &mut Vec<u8>) {
    for &byte in text.as_bytes() {
        if byte == b'%' || byte == b' ' || byte.is_ascii_control() {
            out.extend_from_slice(format!("%{byte:02X}").as_bytes());
        } else {
            out.push(byte);
        }
    }
}

/// Undoes [`escape`].
fn unescape(field: &str) -> Result<String, String> {
    if !field.contains('%') {
        return Ok(field.to_string());
    }
    let mut bytes = Vec::with_capacity(field.len());
    let mut rest = field.as_bytes();
    while let Some((&byte, after)) = rest.split_first() {
        if byte == b'%' {
            let code = after
                .get(..2)
                .and_then(|hex| std::str::from_utf8(hex).ok())
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .ok_or_else(|| format!("bad escape in {field:?}"))?;
            bytes.push(code);
            rest = &after[2..];
        } else {
            bytes.push(byte);
            rest = after;
        }
    }
    String::from_utf8(bytes).map_err(|_| format!("bad escape in {field:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn id() -> QueueId {
        "19AB5D7C5E3F1001A3F2".parse().unwrap()
    }

    fn line(entry: &Entry) -> String {
        let mut out = Vec::new();
        encode(&id(), entry, &mut out);
        String::from_utf8(out).unwrap()
    }

    fn deferred(recipient: &str, minutes: i64) -> RecipientResult {
        RecipientResult {
            recipient: recipient.to_string(),
            outcome: Outcome::Deferred {
                status: "4.4.1".to_string(),
                diagnostic: "connection refused".to_string(),
                next_try: Utc.with_ymd_and_hms(2026, 11, 24, 6, 0, 0).unwrap()
                    + chrono::Duration::minutes(minutes),
            },
        }
    }

    #[test]
    fn entries_have_the_documented_form_and_parse_back() {
        let cases = [
            (
                Entry::Result(RecipientResult {
                    recipient: "alice@localhost".to_string(),
                    outcome: Outcome::Delivered,
                }),
                "19AB5D7C5E3F1001A3F2 delivered alice@localhost",
            ),
            (
                Entry::Result(deferred("|/usr/bin/prog -x 100%", 0)),
                "19AB5D7C5E3F1001A3F2 deferred |/usr/bin/prog%20-x%20100%25 \
                 2026-11-24T06:00:00Z 4.4.1 connection%20refused",
            ),
            (
                Entry::Result(RecipientResult {
                    recipient: "bob@localhost".to_string(),
                    outcome: Outcome::Failed {
                        status: "5.1.1".to_string(),
                        diagnostic: String::new(),
                    },
                }),
                "19AB5D7C5E3F1001A3F2 failed bob@localhost 5.1.1 ",
            ),
            (Entry::Attempts(3), "19AB5D7C5E3F1001A3F2 attempts 3"),
            (Entry::Done, "19AB5D7C5E3F1001A3F2 done"),
        ];
        for (entry, content) in cases {
            let text = line(&entry);
            let crc = crc32fast::hash(content.as_bytes());
            assert_eq!(text, format!("{content} {crc:08x}\n"));
            assert_eq!(parse(text.as_bytes()), Ok((id(), entry)));
        }
    }

    #[test]
    fn any_text_and_any_time_round_trip() {
        let awkward = "a b\r\nc\t%41 é\u{7f}\u{85}";
        for next_try in [
            DateTime::<Utc>::MIN_UTC,
            DateTime::<Utc>::MAX_UTC,
            Utc::now(),
        ] {
            let entry = Entry::Result(RecipientResult {
                recipient: awkward.to_string(),
                outcome: Outcome::Deferred {
                    status: String::new(),
                    diagnostic: awkward.to_string(),
                    next_try,
                },
            });
            let text = line(&entry);
            assert_eq!(text.matches(['\n', '\r', '\t']).count(), 1, "{text:?}");
            assert_eq!(parse(text.as_bytes()), Ok((id(), entry)));
        }
    }

    #[test]
    fn damaged_lines_are_refused() {
        let good = line(&Entry::Done);
        let cases = [
            (good.trim_end().to_string(), "newline"),
            (good.replace("done", "dome"), "checksum"),
            (good.replace(' ', "  "), "checksum"),
            (good[..good.len() - 3].to_string() + "x\n", "checksum"),
            ("\0\0\0\0\n".to_string(), "no checksum"),
        ];
        for (text, what) in cases {
            let error = parse(text.as_bytes()).unwrap_err();
            assert!(error.contains(what), "{text:?}: {error:?}");
        }
        let mut content = "19AB5D7C5E3F1001A3F2 delivered a b".to_string();
        let crc = crc32fast::hash(content.as_bytes());
        content.push_str(&format!(" {crc:08x}\n"));
        assert!(
            parse(content.as_bytes())
                .unwrap_err()
                .contains("unknown entry")
        );
    }

    #[test]
    fn the_state_keeps_the_latest_outcome_per_recipient_and_counts_attempts() {
        let mut state = DeliveryState::default();
        assert_eq!(state.next_try(), None);
        state.apply([deferred("a", 30), deferred("b", 10)]);
        state.apply([
            RecipientResult {
                recipient: "b".to_string(),
                outcome: Outcome::Delivered,
            },
            deferred("a", 20),
        ]);
        assert_eq!(state.attempts, 2);
        assert_eq!(state.outcome("b"), Some(&Outcome::Delivered));
        assert_eq!(state.outcome("c"), None);
        assert_eq!(state.next_try(), Some(deferred("a", 20).next_try()));
        assert_eq!(
            state
                .results
                .iter()
                .map(|r| &r.recipient[..])
                .collect::<Vec<_>>(),
            ["a", "b"]
        );

        let mut replayed = DeliveryState::default();
        state.entries().for_each(|entry| replayed.replay(entry));
        assert_eq!(replayed, state);
    }

    impl RecipientResult {
        fn next_try(&self) -> DateTime<Utc> {
            match self.outcome {
                Outcome::Deferred { next_try, .. } => next_try,
                _ => panic!("not deferred"),
            }
        }
    }
}
