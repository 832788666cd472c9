//! The RFC 5321 path grammar (section 4.1.2): reverse and forward paths, mailboxes, domains and address literals,
//! with the length limits of section 4.5.3.1 and the UTF-8 extensions of RFC 6531.

use core::net::{Ipv4Addr, Ipv6Addr};
use std::fmt::{self, Write};

use super::hostname::{HostNameError, HostNameRules, check_host_name};

/// The domain part of a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Domain {
    /// A host name, as the client wrote it (compare without regard to case).
    Name(String),
    /// `[192.0.2.1]`
    Ipv4(Ipv4Addr),
    /// `[IPv6:2001:db8::1]`
    Ipv6(Ipv6Addr),
}

/// `local-part@domain`. The local part is kept unquoted: `"john doe"@example.org` has local part `john doe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mailbox {
    pub local: String,
    pub domain: Domain,
}

impl Mailbox {
    /// Whether the local part is `postmaster`, which RFC 5321 compares without regard to case.
    pub fn is_postmaster(&self) -> bool {
        self.local.eq_ignore_ascii_case("postmaster")
    }

    /// The address as [`fmt::Display`] writes it, in a String sized for it at once: the spool's copy of each
    /// address costs one allocation, not one per growth of the string.
    pub fn to_address(&self) -> String {
        // An address literal is at most `[IPv6:` and 39 characters and `]`; quoting a local part adds two.
        let domain = match &self.domain {
            Domain::Name(name) => name.len(),
            Domain::Ipv4(_) | Domain::Ipv6(_) => 46,
        };
        let mut text = String::with_capacity(self.local.len() + 3 + domain);
        write!(text, "{self}").expect("a String takes every write");
        text
    }
}

/// The argument of MAIL FROM: a mailbox, or `<>` for notifications that must never be answered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ReversePath {
    #[default]
    Null,
    Mailbox(Mailbox),
}

/// The argument of RCPT TO: a mailbox, or the bare `<Postmaster>` every server must accept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ForwardPath {
    Postmaster,
    Mailbox(Mailbox),
}

/// Why a path was refused; the text goes into the 501/553 reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressError {
    /// Not a path at all: no angle brackets, bad characters, a missing `@`.
    Syntax(&'static str),
    /// Longer than RFC 5321 4.5.3.1 allows.
    TooLong(&'static str),
    /// A UTF-8 address from a client that did not ask for SMTPUTF8.
    NeedsSmtputf8,
}

impl AddressError {
    pub fn describe(&self) -> &'static str {
        match self {
            AddressError::Syntax(why) | AddressError::TooLong(why) => why,
            AddressError::NeedsSmtputf8 => "a non-ASCII address needs the SMTPUTF8 parameter",
        }
    }
}

/// RFC 5321 4.5.3.1: the longest local part and path (with its angle brackets), in octets; the longest
/// domain is `HostNameRules::MAIL_DOMAIN`'s.
pub const MAX_LOCAL_PART: usize = 64;
pub const MAX_PATH: usize = 256;

/// Parses a reverse path at the start of `text`; returns it with the rest of the text (the ESMTP parameters).
pub fn parse_reverse_path(text: &str, utf8: bool) -> Result<(ReversePath, &str), AddressError> {
    let (inner, rest) = bracketed(text)?;
    if inner.is_empty() {
        return Ok((ReversePath::Null, rest));
    }
    Ok((ReversePath::Mailbox(path(inner, utf8)?), rest))
}

/// Parses a forward path at the start of `text`; returns it with the rest of the text.
pub fn parse_forward_path(text: &str, utf8: bool) -> Result<(ForwardPath, &str), AddressError> {
    let (inner, rest) = bracketed(text)?;
    if inner.eq_ignore_ascii_case("postmaster") {
        return Ok((ForwardPath::Postmaster, rest));
    }
    if inner.is_empty() {
        return Err(AddressError::Syntax("the null path <> is not a recipient"));
    }
    Ok((ForwardPath::Mailbox(path(inner, utf8)?), rest))
}

/// Splits `<...>` off the start of `text` (a quoted local part may hold `>`), checking the path length.
fn bracketed(text: &str) -> Result<(&str, &str), AddressError> {
    let Some(body) = text.strip_prefix('<') else {
        return Err(AddressError::Syntax(
            "an address must be in angle brackets, like <user@example.org>",
        ));
    };
    let bytes = body.as_bytes();
    let (mut i, mut quoted) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'>' if !quoted => {
                if i + 2 > MAX_PATH {
                    return Err(AddressError::TooLong("the path is longer than 256 octets"));
                }
                return Ok((&body[..i], &body[i + 1..]));
            }
            _ => {}
        }
        i += 1;
    }
    Err(AddressError::Syntax(
        "the address has no closing angle bracket",
    ))
}

/// `[ A-d-l ":" ] Mailbox`: a source route is checked and dropped, as RFC 5321 4.1.1.3 allows.
fn path(inner: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    let mailbox = match inner.strip_prefix('@') {
        Some(route_and_mailbox) => {
            let (route, mailbox) = route_and_mailbox
                .split_once(':')
                .ok_or(AddressError::Syntax("a source route must end with ':'"))?;
            for hop in route.split(',') {
                let hop = hop.strip_prefix('@').unwrap_or(hop);
                domain(hop, utf8)?;
            }
            if !route.split(',').skip(1).all(|hop| hop.starts_with('@')) {
                return Err(AddressError::Syntax(
                    "each hop of a source route starts with '@'",
                ));
            }
            mailbox
        }
        None => inner,
    };
    parse_mailbox(mailbox, utf8)
}

/// `Local-part "@" ( Domain / address-literal )`
pub fn parse_mailbox(text: &str, utf8: bool) -> Result<Mailbox, AddressError> {
    let (local, after) = if text.starts_with('"') {
        quoted_local_part(text, utf8)?
    } else {
        let at = text
            .rfind('@')
            .ok_or(AddressError::Syntax("the address has no '@domain'"))?;
        let local = &text[..at];
        dot_string(local, utf8)?;
        (local.to_string(), &text[at..])
    };
    let domain_text = after
        .strip_prefix('@')
        .ok_or(AddressError::Syntax("the address has no '@domain'"))?;
    if local.len() > MAX_LOCAL_PART {
        return Err(AddressError::TooLong(
            "the local part is longer than 64 octets",
        ));
    }
    Ok(Mailbox {
        local,
        domain: domain(domain_text, utf8)?,
    })
}

/// A quoted local part; returns its content without quotes and escapes, and the text after the closing quote.
fn quoted_local_part(text: &str, utf8: bool) -> Result<(String, &str), AddressError> {
    let mut content = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((content, &text[i + 1..])),
            '\\' => match chars.next() {
                Some((_, escaped @ ' '..='~')) => content.push(escaped),
                _ => {
                    return Err(AddressError::Syntax(
                        "a backslash in quotes must escape a printable character",
                    ));
                }
            },
            ' '..='~' => content.push(c),
            c if !c.is_ascii() => {
                if !utf8 {
                    return Err(AddressError::NeedsSmtputf8);
                }
                content.push(c);
            }
            _ => {
                return Err(AddressError::Syntax(
                    "a control character in the quoted local part",
                ));
            }
        }
    }
    Err(AddressError::Syntax(
        "the quoted local part has no closing quote",
    ))
}

/// `Atom *("." Atom)`
fn dot_string(text: &str, utf8: bool) -> Result<(), AddressError> {
    if text.is_empty() {
        return Err(AddressError::Syntax("the local part is empty"));
    }
    for atom in text.split('.') {
        if atom.is_empty() {
            return Err(AddressError::Syntax(
                "the local part has an empty atom (a leading, trailing or double dot)",
            ));
        }
        for c in atom.chars() {
            if !c.is_ascii() {
                if !utf8 {
                    return Err(AddressError::NeedsSmtputf8);
                }
            } else if !is_atext(c) {
                return Err(AddressError::Syntax(
                    "the local part has a character that needs quoting",
                ));
            }
        }
    }
    Ok(())
}

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

/// `Domain / address-literal`
pub fn domain(text: &str, utf8: bool) -> Result<Domain, AddressError> {
    if let Some(literal) = text.strip_prefix('[') {
        let literal = literal
            .strip_suffix(']')
            .ok_or(AddressError::Syntax("an address literal ends with ']'"))?;
        return address_literal(literal);
    }
    match check_host_name(text, HostNameRules::MAIL_DOMAIN) {
        Ok(()) => {}
        Err(HostNameError::TooLong) => {
            return Err(AddressError::TooLong(
                "the domain is longer than 255 octets",
            ));
        }
        Err(HostNameError::Empty) => return Err(AddressError::Syntax("the domain is empty")),
        Err(_) => return Err(AddressError::Syntax("the domain is not a valid host name")),
    }
    if !utf8 && !text.is_ascii() {
        return Err(AddressError::NeedsSmtputf8);
    }
    Ok(Domain::Name(text.to_string()))
}

fn address_literal(literal: &str) -> Result<Domain, AddressError> {
    if let Some(v6) = literal
        .get(..5)
        .filter(|tag| tag.eq_ignore_ascii_case("IPv6:"))
    {
        return literal[v6.len()..]
            .parse()
            .map(Domain::Ipv6)
            .map_err(|_| AddressError::Syntax("not a valid IPv6 address literal"));
    }
    literal.parse().map(Domain::Ipv4).map_err(|_| {
        AddressError::Syntax("not a valid address literal: [IPv4] or [IPv6:...] expected")
    })
}

impl fmt::Display for Domain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Domain::Name(name) => f.write_str(name),
            Domain::Ipv4(ip) => write!(f, "[{ip}]"),
            Domain::Ipv6(ip) => write!(f, "[IPv6:{ip}]"),
        }
    }
}

impl fmt::Display for Mailbox {
    /// The address as it goes on the wire, quoting the local part where the grammar needs it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if dot_string(&self.local, true).is_ok() {
            f.write_str(&self.local)?;
        } else {
            f.write_str("\"")?;
            for c in self.local.chars() {
                if c == '"' || c == '\\' {
                    f.write_str("\\")?;
                }
                write!(f, "{c}")?;
            }
            f.write_str("\"")?;
        }
        write!(f, "@{}", self.domain)
    }
}

impl ReversePath {
    /// The bare address (see [`Mailbox::to_address`]); empty for the null path.
    pub fn to_address(&self) -> String {
        match self {
            ReversePath::Null => String::new(),
            ReversePath::Mailbox(m) => m.to_address(),
        }
    }
}

impl ForwardPath {
    /// The bare address (see [`Mailbox::to_address`]).
    pub fn to_address(&self) -> String {
        match self {
            ForwardPath::Postmaster => "postmaster".to_string(),
            ForwardPath::Mailbox(m) => m.to_address(),
        }
    }
}

impl fmt::Display for ReversePath {
    /// The bare address; the empty string for the null path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReversePath::Null => Ok(()),
            ReversePath::Mailbox(m) => m.fmt(f),
        }
    }
}

impl fmt::Display for ForwardPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ForwardPath::Postmaster => f.write_str("postmaster"),
            ForwardPath::Mailbox(m) => m.fmt(f),
        }
    }
}

#[cfg(test)]
#[path = "address_tests.rs"]
mod tests;
