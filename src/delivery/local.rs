//! Who has a mailbox here, and where each recipient's mail goes: local users from the configuration or the
//! system's accounts, aliases, and the mailbox file each name maps to.

use std::path::PathBuf;

use log::warn;
use nix::unistd::{Gid, Uid, User};

use crate::config::{Config, LocalUsers};
use crate::delivery::aliases::{Aliases, Target};
use crate::smtp::{Detail, Domain, parse_mailbox};

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

/// Whether `local_part` names a local user with a mailbox. `root` always has one: postmaster's mail goes there.
pub fn user_exists(config: &Config, local_part: &str) -> bool {
    mailbox_name(local_part).is_some_and(|name| local_user(config, &name).is_some())
}

/// A local user who has a mailbox here.
struct LocalUser {
    /// A system account's ids, given to a mailbox delivery creates for it.
    owner: Option<(Uid, Gid)>,
}

/// The local user a mailbox name belongs to, if any; the system's accounts are looked up once here.
fn local_user(config: &Config, name: &str) -> Option<LocalUser> {
    match &config.local_users {
        LocalUsers::Any => Some(LocalUser { owner: None }),
        LocalUsers::List(names) => {
            (name == "root" || names.iter().any(|n| n == name)).then_some(LocalUser { owner: None })
        }
        LocalUsers::System => User::from_name(name).ok().flatten().map(|user| LocalUser {
            owner: Some((user.uid, user.gid)),
        }),
    }
}

/// Names that always resolve, to root unless the aliases say otherwise (RFC 5321 4.5.1).
pub const ALWAYS_LOCAL: [&str; 2] = ["postmaster", "mailer-daemon"];

/// Where one final target of a recipient goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A user's mbox file; `owner` is set for system users, whose new mailboxes are given to them.
    Mailbox {
        path: PathBuf,
        owner: Option<(Uid, Gid)>,
    },
    /// An mbox file named by an alias (`/path`).
    File(PathBuf),
    /// A command named by an alias (`|command`): gets the message on stdin.
    Command(String),
    /// Another host's recipient.
    Remote(String),
    /// Cannot be delivered, ever: the status (5.`detail`) and the reason.
    Refused { detail: Detail, reason: String },
}

/// One final target of an envelope recipient. `key` names it in the spool's delivery records, so a target two
/// recipients share gets one copy and a target delivered once is never delivered again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub recipient: String,
    pub key: String,
    pub destination: Destination,
}

/// Resolves envelope recipients through the local domains, the aliases and the local users.
pub struct Router<'a> {
    pub config: &'a Config,
    pub aliases: &'a Aliases,
}

impl Router<'_> {
    /// The final targets of every recipient, each key once, in order.
    pub fn routes(&self, recipients: &[String]) -> Vec<Route> {
        let mut routes: Vec<Route> = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            for route in self.route(recipient) {
                if !routes.iter().any(|r| r.key == route.key) {
                    routes.push(route);
                }
            }
        }
        routes
    }

    fn route(&self, recipient: &str) -> Vec<Route> {
        let local_part = if recipient.eq_ignore_ascii_case("postmaster") {
            "postmaster".to_string()
        } else {
            match parse_mailbox(recipient, true) {
                Ok(mailbox) if self.is_local(&mailbox.domain) => mailbox.local,
                Ok(_) => return vec![self.remote(recipient, recipient)],
                Err(e) => {
                    let reason = format!("bad address: {}", e.describe());
                    return vec![refused(
                        recipient,
                        recipient,
                        Detail::BadDestinationSyntax,
                        reason,
                    )];
                }
            }
        };
        let name = local_part.to_lowercase();
        let local_part_of = |address: &str| {
            parse_mailbox(address, true)
                .ok()
                .filter(|mailbox| self.is_local(&mailbox.domain))
                .map(|mailbox| mailbox.local)
        };
        let expansion = if self.aliases.contains(&name) {
            self.aliases.expand_local(&name, &local_part_of)
        } else if ALWAYS_LOCAL.contains(&name.as_str()) {
            self.aliases.expand_local("root", &local_part_of)
        } else {
            return vec![self.mailbox(recipient, &local_part)];
        };
        for problem in &expansion.problems {
            warn!("aliases: {problem}");
        }
        if expansion.targets.is_empty() {
            return vec![expands_to_nothing(recipient, &name, &expansion.problems)];
        }
        expansion
            .targets
            .into_iter()
            .map(|target| self.target(recipient, target))
            .collect()
    }

    fn target(&self, recipient: &str, target: Target) -> Route {
        match target {
            Target::Local(name) => self.mailbox(recipient, &name),
            // Only an escaped one (`\bob@localhost`) is still in a local domain: the others were expanded.
            Target::Address(address) => match parse_mailbox(&address, true) {
                Ok(mailbox) if self.is_local(&mailbox.domain) => {
                    self.mailbox(recipient, &mailbox.local)
                }
                Ok(_) => self.remote(recipient, &address),
                Err(e) => refused(
                    recipient,
                    &address,
                    Detail::BadDestinationSyntax,
                    format!("alias target {address}: {}", e.describe()),
                ),
            },
            Target::Command(command) if self.config.alias_commands => Route {
                recipient: recipient.to_string(),
                key: format!("|{command}"),
                destination: Destination::Command(command),
            },
            Target::File(path) if self.config.alias_files => Route {
                recipient: recipient.to_string(),
                key: path.clone(),
                destination: Destination::File(PathBuf::from(path)),
            },
            Target::Command(command) => {
                warn!(
                    "aliases: {recipient}: command target '|{command}' refused (alias_commands = false)"
                );
                refused(
                    recipient,
                    &format!("|{command}"),
                    Detail::NotAuthorized,
                    "delivery to commands is disabled here".into(),
                )
            }
            Target::File(path) => {
                warn!("aliases: {recipient}: file target '{path}' refused (alias_files = false)");
                refused(
                    recipient,
                    &path,
                    Detail::NotAuthorized,
                    "delivery to files is disabled here".into(),
                )
            }
        }
    }

    fn mailbox(&self, recipient: &str, local_part: &str) -> Route {
        let found = mailbox_name(local_part)
            .and_then(|name| local_user(self.config, &name).map(|user| (name, user)));
        let Some((name, user)) = found else {
            return refused(
                recipient,
                local_part,
                Detail::BadDestinationMailbox,
                format!("no such user here: {local_part}"),
            );
        };
        Route {
            recipient: recipient.to_string(),
            destination: Destination::Mailbox {
                path: self.config.mailbox_dir.join(&name),
                owner: user.owner,
            },
            key: name,
        }
    }

    fn remote(&self, recipient: &str, address: &str) -> Route {
        Route {
            recipient: recipient.to_string(),
            key: address.to_string(),
            destination: Destination::Remote(address.to_string()),
        }
    }

    fn is_local(&self, domain: &Domain) -> bool {
        is_local(self.config, domain)
    }
}

/// Whether mail for `domain` is delivered here: a local domain, or an address literal naming this host (one we
/// listen on, or loopback).
pub fn is_local(config: &Config, domain: &Domain) -> bool {
    let own_address =
        |ip: std::net::IpAddr| ip.is_loopback() || config.listen.iter().any(|a| a.ip() == ip);
    match domain {
        Domain::Name(name) => config.is_local_domain(name),
        Domain::Ipv4(ip) => own_address((*ip).into()),
        Domain::Ipv6(ip) => own_address((*ip).into()),
    }
}

/// The route of an alias that leads to no target at all: it bounces, as Postfix does, rather than vanish. Every
/// path looped back (or went too deep: `problems`, which the log has in full), or its lists are empty.
fn expands_to_nothing(recipient: &str, alias: &str, problems: &[String]) -> Route {
    let (detail, reason) = if problems.is_empty() {
        (
            Detail::ListExpansionProblem,
            format!("the alias {alias} expands to no recipient"),
        )
    } else {
        (
            Detail::RoutingLoop,
            format!(
                "mail forwarding loop: the alias {alias} leads only back to itself (or nests too deep)"
            ),
        )
    };
    refused(recipient, alias, detail, reason)
}

fn refused(recipient: &str, key: &str, detail: Detail, reason: String) -> Route {
    Route {
        recipient: recipient.to_string(),
        key: key.to_string(),
        destination: Destination::Refused { detail, reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::{Class, Status};

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

    fn keys(routes: &[Route]) -> Vec<String> {
        routes
            .iter()
            .map(|r| match &r.destination {
                Destination::Mailbox { path, .. } => {
                    format!("mbox:{}", path.file_name().unwrap().to_string_lossy())
                }
                Destination::File(path) => format!("file:{}", path.display()),
                Destination::Command(c) => format!("cmd:{c}"),
                Destination::Remote(a) => format!("remote:{a}"),
                Destination::Refused { detail, .. } => {
                    let status = Status::new(Class::PermanentFailure, *detail);
                    format!("refused:{status}:{}", r.key)
                }
            })
            .collect()
    }

    #[test]
    fn recipients_resolve_through_aliases_to_mailboxes() {
        let mut config = Config::builtin();
        config.local_users = LocalUsers::List(vec!["alice".into(), "bob".into()]);
        config.local_domains = vec!["localhost".into()];
        let aliases = Aliases::parse(
            "staff: alice, Bob, carol@remote.test\nbox: /tmp/x\nprog: |/bin/true\nroot: alice\n",
            "aliases",
        )
        .unwrap();
        let router = Router {
            config: &config,
            aliases: &aliases,
        };
        let routes = router.routes(&[
            "staff@localhost".into(),
            "Alice@LOCALHOST".into(),
            "postmaster".into(),
            "nobody@localhost".into(),
            "x@remote.test".into(),
            "box@localhost".into(),
            "prog@localhost".into(),
            "../etc/passwd@localhost".into(),
            "a/b@localhost".into(),
        ]);
        assert_eq!(
            keys(&routes),
            [
                "mbox:alice",
                "mbox:bob",
                "remote:carol@remote.test",
                "refused:5.1.1:nobody",
                "remote:x@remote.test",
                "refused:5.7.1:/tmp/x",
                "refused:5.7.1:|/bin/true",
                "refused:5.1.3:../etc/passwd@localhost",
                "refused:5.1.1:a/b",
            ]
        );
        config.alias_files = true;
        config.alias_commands = true;
        let router = Router {
            config: &config,
            aliases: &aliases,
        };
        let routes = router.routes(&["box@localhost".into(), "prog@localhost".into()]);
        assert_eq!(keys(&routes), ["file:/tmp/x", "cmd:/bin/true"]);
    }

    #[test]
    fn an_alias_target_in_a_local_domain_is_expanded_too() {
        let mut config = Config::builtin();
        config.local_users = LocalUsers::List(vec!["alice".into(), "bob".into(), "www".into()]);
        config.local_domains = vec!["localhost".into()];
        let aliases = Aliases::parse(
            "postmaster: webmaster@localhost\nwebmaster: alice, www@LOCALHOST, bob@remote.test\n\
             www: www@localhost, bob\nping: pong@localhost\npong: ping@localhost, alice\n\
             direct: \\webmaster@localhost\n",
            "aliases",
        )
        .unwrap();
        let router = Router {
            config: &config,
            aliases: &aliases,
        };
        assert_eq!(
            keys(&router.routes(&["postmaster".into()])),
            [
                "mbox:alice",
                "mbox:www",
                "mbox:bob",
                "remote:bob@remote.test"
            ]
        );
        // An escaped address is not expanded: there is no user webmaster.
        assert_eq!(
            keys(&router.routes(&["direct@localhost".into()])),
            ["refused:5.1.1:webmaster"]
        );
        // A loop through addresses ends where it closes, like a loop through names.
        assert_eq!(
            keys(&router.routes(&["ping@localhost".into()])),
            ["mbox:alice"]
        );
        // An alias that leads back only to itself bounces: nothing vanishes.
        let looping = Aliases::parse(
            "a: b@localhost\nb: a\nempty: :include:/dev/null\n",
            "aliases",
        )
        .unwrap();
        let router = Router {
            config: &config,
            aliases: &looping,
        };
        let routes = router.routes(&["a@localhost".into(), "empty@localhost".into()]);
        assert_eq!(keys(&routes), ["refused:5.4.6:a", "refused:5.2.4:empty"]);
        let Destination::Refused { reason, .. } = &routes[0].destination else {
            unreachable!()
        };
        assert_eq!(
            reason,
            "mail forwarding loop: the alias a leads only back to itself (or nests too deep)"
        );
        let expansion = aliases.expand_local("ping", &|address: &str| {
            address.strip_suffix("@localhost").map(str::to_string)
        });
        assert_eq!(expansion.problems, ["alias loop: ping -> pong -> ping"]);
    }

    #[test]
    fn postmaster_goes_to_root_without_aliases() {
        let mut config = Config::builtin();
        config.local_users = LocalUsers::List(vec!["alice".into()]);
        let aliases = Aliases::empty();
        let router = Router {
            config: &config,
            aliases: &aliases,
        };
        let routes = router.routes(&["postmaster".into(), "MAILER-DAEMON@localhost".into()]);
        assert_eq!(keys(&routes), ["mbox:root"]);
    }
}
