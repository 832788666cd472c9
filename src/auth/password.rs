//! Password hashes in crypt(3) form: checking a password against `$y$` (yescrypt), `$6$` (SHA-512-crypt),
//! `$5$` (SHA-256-crypt) and `$2b$`/`$2a$`/`$2y$` (bcrypt), and making new `$y$` hashes for `postel passwd`.

use std::fmt;

use sha_crypt::ShaCrypt;
use yescrypt::{PasswordHasher, PasswordVerifier, Yescrypt};

/// The kinds of hash an `auth_users` file may hold, by their crypt(3) prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    Yescrypt,
    ShaCrypt,
    Bcrypt,
}

/// Why a hash string cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct BadHash(pub String);

impl fmt::Display for BadHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The scheme of a hash string, or why it is none we know.
pub fn scheme(hash: &str) -> Result<Scheme, BadHash> {
    let id = hash
        .strip_prefix('$')
        .and_then(|rest| rest.split_once('$'))
        .map(|(id, _)| id);
    match id {
        Some("y") => Ok(Scheme::Yescrypt),
        Some("6" | "5") => Ok(Scheme::ShaCrypt),
        Some("2b" | "2a" | "2y") => Ok(Scheme::Bcrypt),
        Some("1") => Err(BadHash(
            "MD5-crypt ($1$) is too weak; use yescrypt ($y$), SHA-512-crypt ($6$) or bcrypt ($2b$)"
                .into(),
        )),
        _ if hash.starts_with('!') || hash.starts_with('*') => {
            Err(BadHash("the account is locked".into()))
        }
        _ => Err(BadHash(
            "not a crypt(3) hash: expected $y$ (yescrypt), $6$ (SHA-512-crypt) or $2b$ (bcrypt)"
                .into(),
        )),
    }
}

/// Checks that `hash` is well formed, so that a broken line is reported when the file is read, not at login.
/// Only the structure is read: running the hash function for every entry would make loading slow.
pub fn validate(hash: &str) -> Result<(), BadHash> {
    let malformed = |what: &str| BadHash(format!("malformed {what} hash"));
    match scheme(hash)? {
        Scheme::Yescrypt => {
            let parsed = yescrypt::PasswordHashRef::new(hash).map_err(|_| malformed("yescrypt"))?;
            let fields: Vec<_> = parsed.fields().map(|f| f.as_str()).collect();
            match fields.as_slice() {
                [params, salt, digest]
                    if params.parse::<yescrypt::Params>().is_ok()
                        && !salt.is_empty()
                        && !digest.is_empty() =>
                {
                    Ok(())
                }
                _ => Err(malformed("yescrypt")),
            }
        }
        Scheme::ShaCrypt => {
            let parsed =
                sha_crypt::PasswordHashRef::new(hash).map_err(|_| malformed("SHA-crypt"))?;
            let digest_len = if parsed.id() == "6" { 86 } else { 43 };
            let fields: Vec<_> = parsed.fields().map(|f| f.as_str()).collect();
            match fields.as_slice() {
                [.., salt, digest] if !salt.is_empty() && digest.len() == digest_len => Ok(()),
                _ => Err(malformed("SHA-crypt")),
            }
        }
        Scheme::Bcrypt => hash
            .parse::<bcrypt::HashParts>()
            .map(|_| ())
            .map_err(|_| malformed("bcrypt")),
    }
}

/// Whether `password` matches `hash`. A malformed hash matches nothing.
pub fn verify(password: &[u8], hash: &str) -> bool {
    match scheme(hash) {
        Ok(Scheme::Yescrypt) => Yescrypt::default().verify_password(password, hash).is_ok(),
        Ok(Scheme::ShaCrypt) => ShaCrypt::default().verify_password(password, hash).is_ok(),
        Ok(Scheme::Bcrypt) => bcrypt::verify(password, hash).unwrap_or(false),
        Err(_) => false,
    }
}

/// A new yescrypt hash of `password` with a random salt: what Debian's passwd writes today.
pub fn hash(password: &[u8]) -> Result<String, String> {
    Yescrypt::default()
        .hash_password(password)
        .map(|h| h.as_str().to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by libxcrypt (Python's crypt module and mkpasswd) for the password "secret".
    const YESCRYPT: &str =
        "$y$j9T$Kr.Hcy4o2g0YzPJCAkLHL.$hJBxa9rh9hEFBjf6B/54YOmLUqAmfH6SRFydpR6/0P/";
    const SHA512: &str = "$6$.FvMXIW7Js7g7iju$4M8NsdbsRksq4zuB.AQRx5h8TsFjkr9dGcuptYVI1b7KGPAu1YGYcU8WlxLdezqEsyUdTLMjLVHl5aP8EzmOO.";
    const SHA512_ROUNDS: &str = "$6$rounds=5000$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
    const BCRYPT: &str = "$2b$12$o9hjVBv6DoAQqrMoH7GrhetOOlYaa8n/T/ps5Nh7GAtXKQ7469vZe";

    #[test]
    fn hashes_made_by_libxcrypt_are_checked() {
        for hash in [YESCRYPT, SHA512, SHA512_ROUNDS, BCRYPT] {
            assert!(verify(b"secret", hash), "{hash}");
            assert!(!verify(b"Secret", hash), "{hash}");
            assert!(!verify(b"", hash), "{hash}");
            assert_eq!(validate(hash), Ok(()), "{hash}");
        }
    }

    #[test]
    fn new_hashes_are_yescrypt_and_verify() {
        let made = hash(b"correct horse").unwrap();
        assert!(made.starts_with("$y$"), "{made}");
        assert!(verify(b"correct horse", &made));
        assert!(!verify(b"correct horsf", &made));
        assert_ne!(made, hash(b"correct horse").unwrap(), "salts are random");
    }

    #[test]
    fn malformed_and_weak_hashes_are_refused() {
        for bad in [
            "",
            "secret",
            "$1$abc$def",
            "!$6$locked",
            "*",
            "$6$",
            "$y$j9T$",
            "$2b$12$short",
            "$7$unknown$x",
        ] {
            assert!(validate(bad).is_err(), "{bad:?}");
            assert!(!verify(b"secret", bad), "{bad:?}");
        }
    }
}
