//! SASL for SMTP AUTH (RFC 4954), sans I/O: the PLAIN (RFC 4616) and LOGIN mechanisms, from the AUTH line
//! and the client's base64 responses to the credentials. Checking them is the caller's business.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The mechanisms offered, in the order EHLO lists them.
pub const MECHANISMS: &str = "PLAIN LOGIN";

/// What a client proved it knows.
#[derive(Debug, PartialEq, Eq)]
pub struct Credentials {
    /// The user to act as, when the client names one (PLAIN's authorization identity); None: the same user.
    pub authzid: Option<String>,
    pub user: String,
    pub password: Vec<u8>,
}

/// Why an exchange ended without credentials.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslError {
    /// The client sent `*` (RFC 4954 section 4): 501.
    Cancelled,
    /// A response is not valid base64: 501 5.5.2.
    BadBase64,
    /// The decoded response is not what the mechanism expects (no NULs in PLAIN, not UTF-8): 501 5.5.2.
    Malformed(&'static str),
    /// A mechanism this server does not offer: 504 5.5.4.
    UnknownMechanism,
}

/// The next move of an exchange.
#[derive(Debug, PartialEq, Eq)]
pub enum SaslStep {
    /// Send `334 <this>` (already base64) and wait for the client's response line.
    Challenge(&'static str),
    Done(Credentials),
    Failed(SaslError),
}

#[derive(Debug)]
enum Mechanism {
    Plain,
    /// LOGIN; the user name once it has been given.
    Login(Option<String>),
}

/// One AUTH exchange in progress.
#[derive(Debug)]
pub struct Exchange(Mechanism);

/// base64 of "Username:" and "Password:", the prompts every LOGIN client expects.
const USERNAME: &str = "VXNlcm5hbWU6";
const PASSWORD: &str = "UGFzc3dvcmQ6";

impl Exchange {
    /// Starts an exchange from the arguments of the AUTH line: the mechanism and, maybe, an initial response.
    pub fn start(mechanism: &str, initial: Option<&str>) -> (Exchange, SaslStep) {
        let mut exchange = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => Exchange(Mechanism::Plain),
            "LOGIN" => Exchange(Mechanism::Login(None)),
            _ => {
                return (
                    Exchange(Mechanism::Plain),
                    SaslStep::Failed(SaslError::UnknownMechanism),
                );
            }
        };
        let step = match (initial, &exchange.0) {
            (Some(response), _) => exchange.respond(response),
            (None, Mechanism::Plain) => SaslStep::Challenge(""),
            (None, Mechanism::Login(_)) => SaslStep::Challenge(USERNAME),
        };
        (exchange, step)
    }

    /// Takes the client's response line (base64, `=` for empty, `*` to cancel).
    pub fn respond(&mut self, line: &str) -> SaslStep {
        let line = line.trim();
        if line == "*" {
            return SaslStep::Failed(SaslError::Cancelled);
        }
        let decoded = if line == "=" {
            Vec::new()
        } else {
            match STANDARD.decode(line) {
                Ok(decoded) => decoded,
                Err(_) => return SaslStep::Failed(SaslError::BadBase64),
            }
        };
        match &mut self.0 {
            Mechanism::Plain => plain(&decoded),
            Mechanism::Login(user @ None) => match String::from_utf8(decoded) {
                Ok(name) => {
                    *user = Some(name);
                    SaslStep::Challenge(PASSWORD)
                }
                Err(_) => SaslStep::Failed(SaslError::Malformed("the user name is not UTF-8")),
            },
            Mechanism::Login(Some(user)) => SaslStep::Done(Credentials {
                authzid: None,
                user: std::mem::take(user),
                password: decoded,
            }),
        }
    }
}

/// PLAIN's message: `[authzid] NUL authcid NUL passwd`.
fn plain(message: &[u8]) -> SaslStep {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return SaslStep::Failed(SaslError::Malformed(
            "PLAIN expects authzid NUL user NUL password",
        ));
    };
    let (Ok(authzid), Ok(user)) = (std::str::from_utf8(authzid), std::str::from_utf8(user)) else {
        return SaslStep::Failed(SaslError::Malformed("the user name is not UTF-8"));
    };
    SaslStep::Done(Credentials {
        authzid: (!authzid.is_empty()).then(|| authzid.to_string()),
        user: user.to_string(),
        password: password.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(user: &str, password: &str) -> SaslStep {
        SaslStep::Done(Credentials {
            authzid: None,
            user: user.into(),
            password: password.into(),
        })
    }

    fn b64(text: &[u8]) -> String {
        STANDARD.encode(text)
    }

    #[test]
    fn plain_with_and_without_an_initial_response() {
        let (_, step) = Exchange::start("PLAIN", Some(&b64(b"\0alice\0secret")));
        assert_eq!(step, done("alice", "secret"));
        let (mut exchange, step) = Exchange::start("plain", None);
        assert_eq!(step, SaslStep::Challenge(""));
        let binary = SaslStep::Done(Credentials {
            authzid: None,
            user: "alice".into(),
            password: b"se\xffcret".to_vec(),
        });
        assert_eq!(exchange.respond(&b64(b"\0alice\0se\xffcret")), binary);
        let (_, step) = Exchange::start("PLAIN", Some(&b64(b"bob\0alice\0secret")));
        assert_eq!(
            step,
            SaslStep::Done(Credentials {
                authzid: Some("bob".into()),
                user: "alice".into(),
                password: b"secret".to_vec()
            })
        );
    }

    #[test]
    fn login_asks_for_the_name_then_the_password() {
        let (mut exchange, step) = Exchange::start("LOGIN", None);
        assert_eq!(step, SaslStep::Challenge("VXNlcm5hbWU6"));
        assert_eq!(
            exchange.respond(&b64(b"alice")),
            SaslStep::Challenge("UGFzc3dvcmQ6")
        );
        assert_eq!(exchange.respond(&b64(b"secret")), done("alice", "secret"));
        let (mut exchange, step) = Exchange::start("LOGIN", Some(&b64(b"alice")));
        assert_eq!(step, SaslStep::Challenge("UGFzc3dvcmQ6"));
        assert_eq!(exchange.respond("="), done("alice", ""));
    }

    #[test]
    fn cancel_bad_base64_and_malformed_messages_fail() {
        let cases: [(&str, Option<&str>, SaslError); 5] = [
            ("PLAIN", Some("*"), SaslError::Cancelled),
            ("PLAIN", Some("not base64!"), SaslError::BadBase64),
            ("LOGIN", Some("*"), SaslError::Cancelled),
            ("CRAM-MD5", None, SaslError::UnknownMechanism),
            (
                "PLAIN",
                Some("YWxpY2U="),
                SaslError::Malformed("PLAIN expects authzid NUL user NUL password"),
            ),
        ];
        for (mechanism, initial, error) in cases {
            let (_, step) = Exchange::start(mechanism, initial);
            assert_eq!(step, SaslStep::Failed(error), "{mechanism} {initial:?}");
        }
        let (mut exchange, _) = Exchange::start("PLAIN", None);
        assert_eq!(
            exchange.respond(&b64(b"\0a\0b\0c")),
            SaslStep::Failed(SaslError::Malformed(
                "PLAIN expects authzid NUL user NUL password"
            ))
        );
        let (mut exchange, _) = Exchange::start("LOGIN", None);
        assert_eq!(
            exchange.respond(&b64(b"\xff")),
            SaslStep::Failed(SaslError::Malformed("the user name is not UTF-8"))
        );
    }
}
