//! The spool format's version: the one this Postel writes, and the ones it reads.
//!
//! Envelopes and the journal begin with a `version N` line; one without it was written before the
//! format had a version and is version 1. A change to either bumps [`VERSION`], keeps reading every
//! version from [`OLDEST_READABLE`] on, and adds a fixture written by the new version to
//! src/spool/fixtures/ (the format tests read each one back).

/// The version of the envelopes and journal entries this Postel writes.
pub const VERSION: u32 = 4;

/// The oldest version this Postel reads.
pub const OLDEST_READABLE: u32 = 1;

/// The line that begins a versioned envelope or journal, without its newline.
pub(super) const LINE_PREFIX: &str = "version ";

/// The first line of everything this Postel writes, newline included.
pub(super) const LINE: &str = "version 4\n";

/// Whether this Postel reads that version.
pub(super) fn readable(version: u32) -> bool {
    (OLDEST_READABLE..=VERSION).contains(&version)
}

/// The version a `version N` line (without its newline) names; None if it is not such a line.
pub(super) fn parse_line(line: &str) -> Option<Result<u32, String>> {
    let number = line.strip_prefix(LINE_PREFIX)?;
    Some(
        number
            .parse()
            .map_err(|_| format!("bad version line {line:?}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_line_names_the_current_version() {
        assert_eq!(parse_line(LINE.trim_end()), Some(Ok(VERSION)));
        assert!(readable(VERSION) && readable(1));
        assert!(!readable(0) && !readable(VERSION + 1));
    }

    #[test]
    fn other_lines_are_not_version_lines() {
        assert_eq!(parse_line("id 19AB5D7C5E3F1001A3F2"), None);
        assert!(matches!(parse_line("version two"), Some(Err(_))));
    }
}
