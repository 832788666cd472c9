//! The `smarthost_credentials` file: one `user:password` line this host authenticates with elsewhere.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A user name and password to authenticate with at another server.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <password>)", self.user)
    }
}

impl Credentials {
    /// Reads the file: its first line that is not empty or a `#` comment, `user:password` (the password may
    /// hold colons).
    pub fn load(path: &Path) -> Result<Credentials, String> {
        let text = fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        let line = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .ok_or_else(|| format!("{}: no user:password line", path.display()))?;
        match line.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => Ok(Credentials {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => Err(format!("{}: expected user:password", path.display())),
        }
    }
}

/// Refuses a secret file that users other than its owner (and group) may read or write.
pub fn check_private(path: &Path) -> Result<(), String> {
    let mode = fs::metadata(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?
        .permissions()
        .mode();
    if mode & 0o007 != 0 {
        return Err(format!(
            "{}: others may read or write it (mode {:o}); chmod o-rwx it",
            path.display(),
            mode & 0o777
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;

    #[test]
    fn the_first_line_is_user_and_password() {
        let dir = TempDir::new("credentials");
        let path = dir.0.join("credentials");
        fs::write(&path, "# relay account\n\nrelay@example.org:pa:ss word\n").unwrap();
        let credentials = Credentials::load(&path).unwrap();
        assert_eq!(credentials.user, "relay@example.org");
        assert_eq!(credentials.password, "pa:ss word");
        assert!(!format!("{credentials:?}").contains("pa:ss"));
        for bad in [
            "",
            "# only a comment\n",
            "nopassword\n",
            ":password\n",
            "user:\n",
        ] {
            fs::write(&path, bad).unwrap();
            assert!(Credentials::load(&path).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_file_others_may_read_is_refused() {
        let dir = TempDir::new("credentials-mode");
        let path = dir.0.join("credentials");
        fs::write(&path, "u:p\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert_eq!(check_private(&path), Ok(()));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let error = check_private(&path).unwrap_err();
        assert!(
            error.contains("others may read or write it (mode 644)"),
            "{error}"
        );
    }
}
