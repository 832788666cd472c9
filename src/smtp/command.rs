//! The grammar of command lines: a line (without its line end) split into verb and arguments, and the
//! arguments of each kind of verb parsed, or the reply that explains why they do not fit.

use super::address::{self, AddressError, ForwardPath, ReversePath};
use super::reply::{self, Echo, Reply};
use super::status::Detail;

/// MAIL's arguments: `FROM:<reverse-path> [parameters]`.
#[derive(Debug, PartialEq, Eq)]
pub struct MailArgs {
    pub from: ReversePath,
    pub params: MailParams,
    /// The address has non-ASCII characters, allowed only with SMTPUTF8.
    pub utf8: bool,
}

/// RCPT's arguments: `TO:<forward-path>`.
#[derive(Debug, PartialEq, Eq)]
pub struct RcptArgs {
    pub to: ForwardPath,
    pub utf8: bool,
}

/// BDAT's arguments: the size of the chunk that follows the command line, and whether it is the last.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub size: u64,
    pub last: bool,
}

/// Why the arguments do not fit the verb.
#[derive(Debug, PartialEq, Eq)]
pub enum ArgError {
    /// Answered with the verb's syntax (501 5.5.4).
    Syntax,
    /// Answered with this more precise reply.
    Reply(Reply),
}

impl From<Reply> for ArgError {
    fn from(reply: Reply) -> ArgError {
        ArgError::Reply(reply)
    }
}

/// The ESMTP parameters of MAIL FROM.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailParams {
    /// `SIZE=` (RFC 1870): the size the client announces.
    pub size: Option<u64>,
    /// `BODY=` (RFC 6152).
    pub body: Option<BodyType>,
    /// `SMTPUTF8` (RFC 6531).
    pub smtputf8: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyType {
    SevenBit,
    EightBitMime,
}

impl BodyType {
    pub fn as_str(&self) -> &'static str {
        match self {
            BodyType::SevenBit => "7BIT",
            BodyType::EightBitMime => "8BITMIME",
        }
    }

    /// The body type [`BodyType::as_str`] names (upper case, as RFC 6152 writes it).
    pub fn from_name(name: &str) -> Option<BodyType> {
        [BodyType::SevenBit, BodyType::EightBitMime]
            .into_iter()
            .find(|b| b.as_str() == name)
    }
}

/// Splits a command line into its verb and arguments, or answers a line that has no verb.
pub fn split(line: &[u8]) -> Result<(&str, &str), Reply> {
    if line.contains(&0) {
        return Err(reply::NUL_IN_COMMAND);
    }
    if memchr::memchr(b'\r', line).is_some() {
        return Err(reply::BARE_CR_IN_COMMAND);
    }
    let line = std::str::from_utf8(line).map_err(|_| reply::COMMAND_NOT_UTF8)?;
    let (verb, args) = match line.split_once(' ') {
        Some((verb, args)) => (verb, args.trim()),
        None => (line.trim_end(), ""),
    };
    if verb.is_empty() {
        return Err(reply::EMPTY_LINE);
    }
    Ok((verb, args))
}

/// Nothing may follow the verb.
pub fn no_argument(args: &str) -> Result<(), ArgError> {
    args.is_empty().then_some(()).ok_or(ArgError::Syntax)
}

/// Exactly one word.
pub fn one_word(args: &str) -> Result<&str, ArgError> {
    (!args.is_empty() && !args.contains(' '))
        .then_some(args)
        .ok_or(ArgError::Syntax)
}

/// Any text but none.
pub fn some_text(args: &str) -> Result<&str, ArgError> {
    (!args.is_empty()).then_some(args).ok_or(ArgError::Syntax)
}

/// Strips `keyword` ("FROM:" or "TO:") off the arguments, in any case, allowing spaces after the colon.
fn after_keyword<'a>(args: &'a str, keyword: &str) -> Option<&'a str> {
    let head = args.get(..keyword.len())?;
    head.eq_ignore_ascii_case(keyword)
        .then(|| args[keyword.len()..].trim_start())
}

/// `FROM:<reverse-path> [SP mail-parameters]` (RFC 5321 4.1.1.2).
pub fn mail(args: &str) -> Result<MailArgs, ArgError> {
    let path = after_keyword(args, "FROM:").ok_or(ArgError::Syntax)?;
    let (from, rest) = address::parse_reverse_path(path, true)
        .map_err(|e| address_error(e, Detail::BadSenderSyntax, "sender"))?;
    let utf8 = !path[..path.len() - rest.len()].is_ascii();
    let mut params = MailParams::default();
    for (name, value) in parameters(rest)? {
        match (known_parameter(name), value) {
            (Some("SIZE"), Some(value)) if params.size.is_none() => {
                let size = value
                    .parse()
                    .ok()
                    .filter(|_| value.len() <= 20 && value.bytes().all(|b| b.is_ascii_digit()));
                params.size = Some(size.ok_or(reply::BAD_SIZE)?);
            }
            (Some("BODY"), Some(value)) if params.body.is_none() => {
                params.body = Some(
                    BodyType::from_name(&value.to_ascii_uppercase())
                        .ok_or(reply::UNSUPPORTED_BODY)?,
                );
            }
            (Some("SMTPUTF8"), None) if !params.smtputf8 => params.smtputf8 = true,
            // RFC 4954 section 5: the identity a trusted relay vouches for; this server trusts none, so it
            // is taken and not kept.
            (Some("AUTH"), Some(_)) => {}
            (Some(known), _) => {
                return Err(Reply::new(
                    501,
                    Detail::InvalidArguments,
                    format!("Syntax: bad or repeated {known} parameter"),
                )
                .into());
            }
            (None, _) => return Err(unknown_parameter(name).into()),
        }
    }
    Ok(MailArgs { from, params, utf8 })
}

/// `TO:<forward-path>`; this server knows no RCPT parameters (RFC 5321 4.1.1.3).
pub fn rcpt(args: &str) -> Result<RcptArgs, ArgError> {
    let path = after_keyword(args, "TO:").ok_or(ArgError::Syntax)?;
    let (to, rest) = address::parse_forward_path(path, true)
        .map_err(|e| address_error(e, Detail::BadDestinationSyntax, "recipient"))?;
    let utf8 = !path[..path.len() - rest.len()].is_ascii();
    if let Some((name, _)) = parameters(rest)?.next() {
        return Err(unknown_parameter(name).into());
    }
    Ok(RcptArgs { to, utf8 })
}

/// `chunk-size [SP "LAST"]` (RFC 3030 2).
pub fn chunk(args: &str) -> Result<Chunk, ArgError> {
    let mut words = args.split(' ').filter(|w| !w.is_empty());
    let size = words
        .next()
        .filter(|s| s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok());
    let last = match words.next() {
        None => false,
        Some(word) if word.eq_ignore_ascii_case("LAST") => true,
        Some(_) => return Err(ArgError::Syntax),
    };
    match (size, words.next()) {
        (Some(size), None) => Ok(Chunk { size, last }),
        _ => Err(ArgError::Syntax),
    }
}

/// `esmtp-param *(SP esmtp-param)`: each parameter's keyword and value, as given. All are checked before the
/// first is returned, so a malformed one is reported wherever it stands.
fn parameters(text: &str) -> Result<impl Iterator<Item = (&str, Option<&str>)>, Reply> {
    if !text.is_empty() && !text.starts_with(' ') {
        return Err(reply::NO_SPACE_BEFORE_PARAMETERS);
    }
    let params = text.split(' ').filter(|p| !p.is_empty());
    let malformed = params
        .clone()
        .map(split_parameter)
        .find(|(_, name, value)| {
            name.is_empty()
                || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                || value.is_some_and(|v| {
                    v.is_empty() || !v.bytes().all(|b| (33..=126).contains(&b) && b != b'=')
                })
        });
    if let Some((param, _, _)) = malformed {
        return Err(Reply::new(
            501,
            Detail::InvalidArguments,
            format!("Syntax: bad parameter '{}'", Echo(param)),
        ));
    }
    Ok(params
        .map(split_parameter)
        .map(|(_, name, value)| (name, value)))
}

/// A parameter as given, its keyword, and its value if it has one.
fn split_parameter(param: &str) -> (&str, &str, Option<&str>) {
    match param.split_once('=') {
        Some((name, value)) => (param, name, Some(value)),
        None => (param, param, None),
    }
}

/// The upper-case name of a MAIL parameter this server knows.
fn known_parameter(name: &str) -> Option<&'static str> {
    ["SIZE", "BODY", "SMTPUTF8", "AUTH"]
        .into_iter()
        .find(|known| known.eq_ignore_ascii_case(name))
}

fn unknown_parameter(name: &str) -> Reply {
    Reply::new(
        555,
        Detail::InvalidArguments,
        format!(
            "Error: {} is not supported here",
            Echo(&name.to_ascii_uppercase())
        ),
    )
}

/// Addresses are parsed with UTF-8 allowed; whether the client may use it is the session's question.
fn address_error(error: AddressError, detail: Detail, role: &str) -> Reply {
    Reply::new(
        501,
        detail,
        format!("Error: bad {role} address: {}", error.describe()),
    )
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;
