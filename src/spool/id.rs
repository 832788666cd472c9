//! Queue ids: the unique, time-ordered names of messages in the spool.

use std::error::Error;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A message's queue id: 20 upper-case hexadecimal digits, 13 of microseconds since the Unix epoch,
/// 3 of a sequence number and 4 of the process id (doc/spool.md). Ids sort by creation as strings.
/// The default value is the empty, unassigned id. The digits are held inline: the scheduler keeps an id for every
/// message of a backlog, and the sessions and deliveries pass them around per message, without a heap allocation.
/// Unassigned, the digits are zero bytes: upper-case hexadecimal digits sort as their bytes do, and below them the
/// unassigned id, as the empty string sorts below all others.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueId([u8; ID_LEN]);

/// The length of an id in digits.
const ID_LEN: usize = 20;

/// How many low bits of a stamp count ids handed out within one microsecond (3 hex digits).
const SEQUENCE_BITS: u32 = 12;

/// The last stamp (microseconds << SEQUENCE_BITS | sequence) this process handed out.
static LAST_STAMP: AtomicU64 = AtomicU64::new(0);

impl QueueId {
    /// A new id, greater than every id this process handed out before, even if the clock stands
    /// still or steps back (then the stamp runs a little ahead of the clock until it catches up).
    pub(super) fn next() -> QueueId {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_micros() as u64);
        let floor = micros << SEQUENCE_BITS;
        let mut last = LAST_STAMP.load(Ordering::Relaxed);
        loop {
            let stamp = floor.max(last + 1);
            match LAST_STAMP.compare_exchange_weak(
                last,
                stamp,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let pid = u128::from(std::process::id() & 0xFFFF);
                    return QueueId::from_key(u128::from(stamp) << 16 | pid);
                }
                Err(actual) => last = actual,
            }
        }
    }

    /// The id as text; empty when unassigned.
    pub fn as_str(&self) -> &str {
        let digits = &self.0;
        let len = if digits[0] == 0 { 0 } else { ID_LEN };
        std::str::from_utf8(&digits[..len]).expect("an id is ASCII digits")
    }

    /// The id as a number (its 80 bits), the compact key the spool's bookkeeping uses; 0 when
    /// unassigned.
    pub(super) fn key(&self) -> u128 {
        u128::from_str_radix(self.as_str(), 16).unwrap_or(0)
    }

    /// The id whose key this is.
    pub(super) fn from_key(key: u128) -> QueueId {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut digits = [0; ID_LEN];
        for (i, digit) in digits.iter_mut().rev().enumerate() {
            *digit = HEX[(key >> (4 * i) & 0xF) as usize];
        }
        QueueId(digits)
    }
}

impl fmt::Debug for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("QueueId").field(&self.as_str()).finish()
    }
}

impl fmt::Display for QueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for QueueId {
    type Err = InvalidQueueId;

    /// Accepts exactly 20 upper-case hexadecimal digits.
    fn from_str(s: &str) -> Result<QueueId, InvalidQueueId> {
        let hex = |b: &u8| b.is_ascii_digit() || (b'A'..=b'F').contains(b);
        match <[u8; ID_LEN]>::try_from(s.as_bytes()) {
            Ok(digits) if digits.iter().all(hex) => Ok(QueueId(digits)),
            _ => Err(InvalidQueueId),
        }
    }
}

/// The error for text that is not a queue id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidQueueId;

impl fmt::Display for InvalidQueueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not a queue id (20 upper-case hexadecimal digits)")
    }
}

impl Error for InvalidQueueId {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_creation_and_parse_back() {
        let ids: Vec<QueueId> = (0..10_000).map(|_| QueueId::next()).collect();
        assert!(ids.windows(2).all(|pair| pair[0] < pair[1]));
        for id in &ids {
            assert_eq!(id.as_str().parse::<QueueId>(), Ok(id.clone()));
            assert_eq!(QueueId::from_key(id.key()), *id);
        }
    }

    #[test]
    fn ids_carry_the_clock_and_the_process() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros();
        let id = QueueId::next();
        let micros = u128::from_str_radix(&id.as_str()[..13], 16).unwrap();
        assert!(micros >= before && micros < before + 60_000_000);
        assert_eq!(
            &id.as_str()[16..],
            format!("{:04X}", std::process::id() & 0xFFFF)
        );
    }

    #[test]
    fn other_text_is_not_an_id() {
        for text in [
            "",
            "19AB5D7C5E3F1001A3F",
            "19AB5D7C5E3F1001A3F2A",
            "19ab5d7c5e3f1001a3f2",
        ] {
            assert_eq!(text.parse::<QueueId>(), Err(InvalidQueueId), "{text:?}");
        }
        assert_eq!(QueueId::default().as_str(), "");
    }
}
