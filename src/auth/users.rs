//! The `auth_users` file: one `name:hash` line per user who may authenticate, hashes in crypt(3) form.
//! Blank lines and lines starting with `#` are ignored. Errors name the file and the line.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::password;

/// The users who may authenticate, by name.
#[derive(Debug, Default)]
pub struct AuthUsers {
    hashes: HashMap<String, String>,
}

/// Why the file cannot be used: `file:line: what is wrong`, or `file: cannot read: why`.
#[derive(Debug, PartialEq, Eq)]
pub struct AuthUsersError(pub String);

impl fmt::Display for AuthUsersError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuthUsersError {}

/// Checked for a name that is not in the file, so that an unknown name costs as long as a wrong password and
/// the time of a reply does not tell which names exist. A yescrypt hash of a random password.
const NOBODY: &str = "$y$j9T$Kr.Hcy4o2g0YzPJCAkLHL.$hJBxa9rh9hEFBjf6B/54YOmLUqAmfH6SRFydpR6/0P/";

impl AuthUsers {
    /// No users: every authentication fails.
    pub fn empty() -> AuthUsers {
        AuthUsers::default()
    }

    pub fn load(path: &Path) -> Result<AuthUsers, AuthUsersError> {
        let text = fs::read_to_string(path)
            .map_err(|e| AuthUsersError(format!("{}: cannot read: {e}", path.display())))?;
        AuthUsers::parse(&text, &path.display().to_string())
    }

    /// Reads the file's text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<AuthUsers, AuthUsersError> {
        let mut hashes = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let at = |what: String| AuthUsersError(format!("{origin}:{}: {what}", n + 1));
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, hash) = parse_line(line).map_err(at)?;
            if hashes.insert(name.to_string(), hash.to_string()).is_some() {
                return Err(at(format!("user '{name}' is listed twice")));
            }
        }
        Ok(AuthUsers { hashes })
    }

    /// Whether `name` may authenticate with `password`.
    pub fn check(&self, name: &str, password: &[u8]) -> bool {
        match self.hashes.get(name) {
            Some(hash) => password::verify(password, hash),
            None => {
                password::verify(password, NOBODY);
                false
            }
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether `name` has an entry.
    pub fn contains(&self, name: &str) -> bool {
        self.hashes.contains_key(name)
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }
}

/// One `name:hash` line, or why it is not one.
fn parse_line(line: &str) -> Result<(&str, &str), String> {
    let Some((name, hash)) = line.split_once(':') else {
        return Err("expected 'name:hash'".into());
    };
    valid_name(name)?;
    // Lines copied from /etc/shadow carry more fields after the hash.
    let hash = hash.split(':').next().unwrap_or_default();
    password::validate(hash).map_err(|e| format!("user '{name}': {e}"))?;
    Ok((name, hash))
}

/// A user name: what a client may send in AUTH and what a local part may hold.
pub fn valid_name(name: &str) -> Result<(), String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || "._+-@".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(fine) {
        Err(format!(
            "'{name}' is not a user name (letters, digits and . _ + - @, at most 64)"
        ))
    } else {
        Ok(())
    }
}

/// Sets `name`'s hash in the file at `path`, adding the line if the user is new and keeping every other line
/// as it is. The new file replaces the old one atomically (written beside it, synced, renamed), with the old
/// file's permissions, or 0600 for a new file.
pub fn set_password(path: &Path, name: &str, hash: &str) -> Result<(), String> {
    valid_name(name)?;
    let old = match fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: cannot read: {e}", path.display())),
    };
    let text = old.as_deref().unwrap_or("");
    AuthUsers::parse(text, &path.display().to_string()).map_err(|e| e.to_string())?;
    let mut updated = String::with_capacity(text.len() + name.len() + hash.len() + 2);
    let mut found = false;
    for line in text.lines() {
        let is_user = line.split_once(':').is_some_and(|(n, _)| n.trim() == name)
            && !line.trim_start().starts_with('#');
        if is_user {
            updated.push_str(&format!("{name}:{hash}\n"));
            found = true;
        } else {
            updated.push_str(line);
            updated.push('\n');
        }
    }
    if !found {
        updated.push_str(&format!("{name}:{hash}\n"));
    }
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(_) => 0o600,
    };
    let temp = path.with_file_name(format!(
        ".{}.{}.tmp",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let cannot = |what: &str, e: std::io::Error| format!("{}: cannot {what}: {e}", temp.display());
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)
            .map_err(|e| cannot("create", e))?;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| cannot("set the permissions of", e))?;
        file.write_all(updated.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(|e| cannot("write", e))?;
        fs::rename(&temp, path).map_err(|e| format!("{}: cannot replace: {e}", path.display()))?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        fs::File::open(dir.unwrap_or(Path::new(".")))
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: cannot sync its directory: {e}", path.display()))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    const SECRET: &str = "$6$rounds=5000$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";

    #[test]
    fn users_and_passwords_are_checked() {
        let text = format!("# users\n\nalice:{SECRET}\nbob:{SECRET}:19000:0:99999:7:::\n");
        let users = AuthUsers::parse(&text, "users").unwrap();
        assert_eq!(users.len(), 2);
        assert!(users.check("alice", b"secret"));
        assert!(users.check("bob", b"secret"));
        assert!(!users.check("alice", b"wrong"));
        assert!(!users.check("carol", b"secret"));
        assert!(!users.check("Alice", b"secret"));
    }

    #[test]
    fn errors_name_the_file_and_the_line() {
        let cases = [
            ("alice\n".to_string(), "users:1: expected 'name:hash'"),
            (
                format!("\n\nalice:{SECRET}\nalice:{SECRET}\n"),
                "users:4: user 'alice' is listed twice",
            ),
            (
                "al ice:$6$x$y\n".to_string(),
                "users:1: 'al ice' is not a user name",
            ),
            (":$6$x$y\n".to_string(), "users:1: '' is not a user name"),
            (
                "alice:secret\n".to_string(),
                "users:1: user 'alice': not a crypt(3) hash",
            ),
            (
                "alice:$1$ab$cd\n".to_string(),
                "users:1: user 'alice': MD5-crypt",
            ),
            (
                "alice:$6$salt$short\n".to_string(),
                "users:1: user 'alice': malformed SHA-crypt hash",
            ),
        ];
        for (text, expected) in cases {
            let error = AuthUsers::parse(&text, "users").unwrap_err().0;
            assert!(error.starts_with(expected), "{text:?}: got {error:?}");
        }
    }

    #[test]
    fn set_password_adds_and_replaces_keeping_the_rest() {
        let dir = TempDir::new("auth-users");
        let path = dir.0.join("users");
        set_password(&path, "alice", SECRET).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        fs::write(
            &path,
            format!("# who may send\nalice:{SECRET}\nbob:{SECRET}\n"),
        )
        .unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let fresh = password::hash(b"new one").unwrap();
        set_password(&path, "alice", &fresh).unwrap();
        set_password(&path, "carol", SECRET).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            format!("# who may send\nalice:{fresh}\nbob:{SECRET}\ncarol:{SECRET}\n")
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
        let users = AuthUsers::load(&path).unwrap();
        assert!(users.check("alice", b"new one"));
        assert!(set_password(&path, "bad name", SECRET).is_err());
        assert_eq!(
            fs::read_dir(&dir.0).unwrap().count(),
            1,
            "no temporary file left"
        );
    }

    #[test]
    fn a_broken_file_is_not_rewritten() {
        let dir = TempDir::new("auth-users-broken");
        let path = dir.0.join("users");
        fs::write(&path, "alice\n").unwrap();
        let error = set_password(&path, "bob", SECRET).unwrap_err();
        assert!(error.ends_with(":1: expected 'name:hash'"), "{error}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "alice\n");
    }
}
