//! Who has a mailbox here: local users from the configuration or the system's accounts.

use crate::config::{Config, LocalUsers};

/// The mailbox name a local part maps to, or None when it could never name a mailbox file: case-folded, and
/// without `/`, NUL, control characters, a leading dot or `..` that could leave the mailbox directory.
pub fn mailbox_name(local_part: &str) -> Option<String> {
    let name = local_part.to_lowercase();
    let unsafe_char = |c: char| c == '/' || c == '\\' || c.is_control();
    if name.is_empty()
        || name.len() > 64
        || name.starts_with('.')
        || name.contains("..")
        || name.contains(unsafe_char)
    {
        return None;
    }
    Some(name)
}

/// Whether `local_part` names a local user with a mailbox.
pub fn user_exists(config: &Config, local_part: &str) -> bool {
    let Some(name) = mailbox_name(local_part) else {
        return false;
    };
    match &config.local_users {
        LocalUsers::Any => true,
        LocalUsers::List(names) => names.contains(&name),
        LocalUsers::System => matches!(nix::unistd::User::from_name(&name), Ok(Some(_))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_the_mailbox_directory_are_refused() {
        for bad in [
            "",
            "../etc",
            "a/b",
            ".profile",
            "a..b",
            "nul\0",
            "tab\t",
            "back\\slash",
        ] {
            assert_eq!(mailbox_name(bad), None, "{bad:?}");
        }
        assert_eq!(mailbox_name("Alice").as_deref(), Some("alice"));
        assert_eq!(mailbox_name("first.last").as_deref(), Some("first.last"));
    }

    #[test]
    fn users_come_from_the_configured_source() {
        let mut config = Config::builtin();
        config.local_users = LocalUsers::List(vec!["alice".into()]);
        assert!(user_exists(&config, "ALICE"));
        assert!(!user_exists(&config, "bob"));
        config.local_users = LocalUsers::Any;
        assert!(user_exists(&config, "bob"));
        assert!(!user_exists(&config, "../bob"));
        config.local_users = LocalUsers::System;
        assert!(user_exists(&config, "root"));
        assert!(!user_exists(&config, "no-such-user-here"));
    }
}
