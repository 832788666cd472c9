//! The configuration: one `Config` struct, its built-in defaults, loading from a TOML file, and printing it back.
//!
//! Every key is one entry of [`KEYS`]: its name, the kind of value it takes, what it means, how a TOML value becomes
//! the field and how the field is written back. Parsing, `postel check` and the reference documentation all follow
//! that one table: [`reference`] lists every key with its kind, default and meaning, and [`reference_markdown`]
//! makes the README's key table from it (a unit test checks that the README holds that very table).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Array, Document, DocumentMut, InlineTable, Item, Value};

use crate::net::Network;
use crate::smtp::{BareLf, HostNameRules, check_host_name};

/// TLS when relaying to another domain's MX (`remote_tls`). The certificate is never verified: MX host names
/// rarely match a certificate, so checking would only turn mail back to plaintext.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemoteTls {
    /// Plaintext only.
    None,
    /// STARTTLS when offered; after a failed handshake the next attempt to that host is in plaintext.
    Opportunistic,
    /// STARTTLS or the mail waits.
    Required,
}

/// TLS to the smarthost (`smarthost_tls`), always with the certificate and host name verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SmarthostTls {
    None,
    Starttls,
    /// TLS from the first byte (RFC 8314, port 465).
    Implicit,
}

/// Where the names of local users come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalUsers {
    /// The host's Unix accounts (getpwnam).
    System,
    /// Every syntactically valid local part gets a mailbox (classroom demos).
    Any,
    /// Exactly these names; their mailboxes belong to the server's own user.
    List(Vec<String>),
}

/// Where log lines go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard error, a line a write.
    Stderr,
    /// The syslog socket, facility mail.
    Syslog,
}

/// The whole configuration of the server; every field has a built-in default.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Addresses to accept SMTP connections on (`listen`).
    pub listen: Vec<SocketAddr>,
    /// Addresses of the submission port (RFC 6409, 587): STARTTLS, then AUTH before MAIL (`submission_listen`).
    pub submission_listen: Vec<SocketAddr>,
    /// Addresses of the submission port with implicit TLS (RFC 8314, 465) (`submissions_listen`).
    pub submissions_listen: Vec<SocketAddr>,
    /// Addresses of the On-Demand Mail Relay port (RFC 2645, 366), the only ones that answer ATRN
    /// (`odmr_listen`).
    pub odmr_listen: Vec<SocketAddr>,
    /// Domains whose mail is held until their user asks for it with ATRN: (domain, user), lower-case domains
    /// (`odmr_domains`).
    pub odmr_domains: Vec<(String, String)>,
    /// The name this host gives in greetings and Received headers (`hostname`).
    pub hostname: String,
    /// Domains whose mail is delivered here (`local_domains`).
    pub local_domains: Vec<String>,
    /// The spool directory (`spool_dir`).
    pub spool_dir: PathBuf,
    /// How long a spool segment takes new messages; once closed it is deleted as soon as its messages are
    /// finished (`spool_segment_age`).
    pub spool_segment_age: Duration,
    /// The directory of per-user mbox files (`mailbox_dir`).
    pub mailbox_dir: PathBuf,
    /// The unprivileged account the server runs as once it has bound its sockets (`user`); None: whoever
    /// started it.
    pub user: Option<String>,
    /// Session worker threads (`workers`).
    pub workers: usize,
    /// Accepted connections that may wait for a free worker (`accept_queue`).
    pub accept_queue: usize,
    /// Largest message accepted, in bytes (`max_message_size`).
    pub max_message_size: u64,
    /// Free space on the spool's file system below which MAIL is refused (`spool_min_free`); 0: no check.
    pub spool_min_free: u64,
    /// Recipients per message (`max_recipients`).
    pub max_recipients: usize,
    /// Longest command line, in octets including CRLF (`max_line_length`).
    pub max_line_length: usize,
    /// Error replies per session before the server says 421 and hangs up (`max_errors`).
    pub max_errors: u32,
    /// Clients that may relay and are exempt from the per-client limit (`trusted_networks`).
    pub trusted_networks: Vec<Network>,
    /// Simultaneous connections from one untrusted client address (`max_connections_per_client`).
    pub max_connections_per_client: usize,
    /// How long the server waits for a command (`command_timeout`).
    pub command_timeout: Duration,
    /// How long the server waits for the next piece of message content (`data_timeout`).
    pub data_timeout: Duration,
    /// Bytes a second message content must average after the first `data_timeout`; 0: no minimum
    /// (`min_data_rate`).
    pub min_data_rate: u64,
    /// How long sessions in flight may take to finish after SIGTERM (`shutdown_grace`).
    pub shutdown_grace: Duration,
    /// Where log lines go (`log`); inetd mode uses syslog when stderr may be the client's socket.
    pub log: LogTarget,
    /// The syslog daemon's datagram socket (`syslog_socket`).
    pub syslog_socket: PathBuf,
    /// Bare LF in message content (`bare_lf`).
    pub bare_lf: BareLf,
    /// Who has a mailbox here (`local_users`).
    pub local_users: LocalUsers,
    /// The aliases file, /etc/aliases format (`aliases`); None: no aliases.
    pub aliases: Option<PathBuf>,
    /// Alias targets `|command` may run (`alias_commands`).
    pub alias_commands: bool,
    /// Alias targets `/file` may be appended to (`alias_files`).
    pub alias_files: bool,
    /// How long a `|command` delivery may take, writing the message included, before the command is killed
    /// and the delivery tried again later (`pipe_timeout`).
    pub pipe_timeout: Duration,
    /// EXPN expands aliases; false refuses it (`expn`).
    pub expn: bool,
    /// SEND, SOML and SAML write to users' terminals; false refuses them (`terminal_delivery`).
    pub terminal_delivery: bool,
    /// Where the login sessions are listed (`utmp_file`).
    pub utmp_file: PathBuf,
    /// The most lines of a message a terminal shows (`terminal_max_lines`).
    pub terminal_max_lines: usize,
    /// Where a `user@offset` notice goes after each mailbox append (`comsat`); None: nowhere.
    pub comsat: Option<String>,
    /// Delivery worker threads (`delivery_workers`); 0 holds every message in the queue.
    pub delivery_workers: usize,
    /// Wait before the first retry of a temporary failure (`retry_first`); doubles up to `retry_max`.
    pub retry_first: Duration,
    /// Longest wait between retries (`retry_max`).
    pub retry_max: Duration,
    /// How long a message may stay queued before its undelivered recipients bounce (`queue_lifetime`).
    pub queue_lifetime: Duration,
    /// Largest mailbox file a delivery may grow, in bytes; 0: no limit (`mailbox_size_limit`).
    pub mailbox_size_limit: u64,
    /// How long delivery waits for a locked mailbox before it tries again later (`mailbox_lock_timeout`).
    pub mailbox_lock_timeout: Duration,
    /// A dot-lock older than this whose holder cannot be seen is removed (`stale_lock_age`).
    pub stale_lock_age: Duration,
    /// Also take flock(2) on mailboxes (`mailbox_flock`).
    pub mailbox_flock: bool,
    /// DNS servers for MX lookups (`nameservers`); empty: those of /etc/resolv.conf.
    pub nameservers: Vec<SocketAddr>,
    /// The port of other hosts' SMTP servers (`remote_port`).
    pub remote_port: u16,
    /// Send all non-local mail to this host instead of the MX (`smarthost`): "host" or "host:port".
    pub smarthost: Option<String>,
    /// Domains this host accepts mail for from anyone and forwards, as a backup MX (`relay_domains`).
    pub relay_domains: Vec<String>,
    /// Connections to one destination at once (`remote_concurrency`).
    pub remote_concurrency: usize,
    /// How long to wait for another server to answer a connection (`remote_connect_timeout`).
    pub remote_connect_timeout: Duration,
    /// How long to wait for another server's reply to a command (`remote_command_timeout`).
    pub remote_command_timeout: Duration,
    /// How long to wait for another server's reply after the message content (`remote_data_timeout`).
    pub remote_data_timeout: Duration,
    /// The certificate chain in PEM (`tls_certificate`); with `tls_key`, every listener offers STARTTLS.
    pub tls_certificate: Option<PathBuf>,
    /// The private key of `tls_certificate`, in PEM: PKCS#8, RSA or EC (`tls_key`).
    pub tls_key: Option<PathBuf>,
    /// The file of `name:hash` lines of the users who may authenticate (`auth_users`).
    pub auth_users: Option<PathBuf>,
    /// MAIL on the `listen` ports needs STARTTLS first (`tls_required`).
    pub tls_required: bool,
    /// The Received header names the authenticated user (`received_auth_user`).
    pub received_auth_user: bool,
    /// On the submission ports, the sender's local part must be the user's name at a local domain
    /// (`submission_sender_check`).
    pub submission_sender_check: bool,
    /// TLS to other domains' MX hosts (`remote_tls`).
    pub remote_tls: RemoteTls,
    /// TLS to the smarthost (`smarthost_tls`).
    pub smarthost_tls: SmarthostTls,
    /// CA certificates (PEM) that vouch for the smarthost, instead of the system's roots (`tls_ca_file`).
    pub tls_ca_file: Option<PathBuf>,
    /// A file holding `user:password` for AUTH at the smarthost (`smarthost_credentials`).
    pub smarthost_credentials: Option<PathBuf>,
}

/// A configuration error, already worded for the admin: `file:line: key: what is wrong`.
#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// One configuration key: its name, what kind of value it takes, its meaning, how to read it and how to
/// write it back.
pub struct Key {
    pub name: &'static str,
    /// The kind of value, as the reference names it: "duration", "boolean", "count", "path", ...
    kind: &'static str,
    /// The default as the reference gives it, when the built-in value does not say it (it depends on
    /// the host or on another key); None: the built-in value.
    default: Option<&'static str>,
    /// What the key means, in Markdown (the README's key table and the man page are made from it).
    doc: &'static str,
    set: fn(&mut Config, &Value) -> Result<(), String>,
    get: fn(&Config) -> Value,
}

/// A key whose value is a duration like "30s", kept in the field of the same name.
macro_rules! duration_key {
    ($field:ident, $doc:literal) => {
        Key {
            name: stringify!($field),
            kind: "duration",
            default: None,
            doc: $doc,
            set: |c, v| {
                c.$field = duration(v)?;
                Ok(())
            },
            get: |c| format_duration(c.$field).into(),
        }
    };
}

/// A key whose value is true or false, kept in the field of the same name.
macro_rules! boolean_key {
    ($field:ident, $doc:literal) => {
        Key {
            name: stringify!($field),
            kind: "boolean",
            default: None,
            doc: $doc,
            set: |c, v| {
                c.$field = boolean(v)?;
                Ok(())
            },
            get: |c| c.$field.into(),
        }
    };
}

/// A key whose value is a positive count, kept in the field of the same name; `default:` words for
/// a default that depends on another key.
macro_rules! count_key {
    ($field:ident, $doc:literal, default: $default:literal) => {
        Key {
            default: Some($default),
            ..count_key!($field, $doc)
        }
    };
    ($field:ident, $doc:literal) => {
        Key {
            name: stringify!($field),
            kind: "count",
            default: None,
            doc: $doc,
            set: |c, v| {
                c.$field = positive(v)?;
                Ok(())
            },
            get: |c| integer(c.$field as u64),
        }
    };
}

/// A key whose value is a path, "" for none, kept in the `Option<PathBuf>` field of the same name.
macro_rules! optional_path_key {
    ($field:ident, $doc:literal) => {
        Key {
            name: stringify!($field),
            kind: "path",
            default: None,
            doc: $doc,
            set: |c, v| {
                c.$field = optional_path(v)?;
                Ok(())
            },
            get: |c| format_optional_path(&c.$field),
        }
    };
}

/// One key as the reference documentation gives it (the README's key table, the man page).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReference {
    pub name: &'static str,
    /// The kind of value: "duration", "boolean", "count", "bytes", "path", "list of domains", ...
    pub kind: &'static str,
    /// The default, in Markdown: the built-in value as TOML in backticks, or words where it depends
    /// on the host or on another key.
    pub default: String,
    /// What the key means, in Markdown.
    pub doc: &'static str,
}

/// Every key, in the order of [`KEYS`], with its kind, default and meaning.
pub fn reference() -> Vec<KeyReference> {
    let builtin = Config::builtin();
    KEYS.iter()
        .map(|key| KeyReference {
            name: key.name,
            kind: key.kind,
            default: key
                .default
                .map_or_else(|| builtin_default(key, &builtin), str::to_string),
            doc: key.doc,
        })
        .collect()
}

/// The README's key table: one row per key of [`reference`].
pub fn reference_markdown() -> String {
    let cell = |text: &str| text.replace('|', "\\|");
    let mut table = String::from("| key | type | default | meaning |\n|---|---|---|---|\n");
    for key in reference() {
        table.push_str(&format!(
            "| `{}` | {} | {} | {} |\n",
            key.name,
            cell(key.kind),
            cell(&key.default),
            cell(key.doc)
        ));
    }
    table
}

/// The built-in value of a key as the reference shows it: `""` is none, and sizes in whole MiB say so.
fn builtin_default(key: &Key, builtin: &Config) -> String {
    let value = (key.get)(builtin);
    const MIB: i64 = 1024 * 1024;
    match value.as_integer() {
        _ if value.as_str() == Some("") => "`\"\"` (none)".to_string(),
        Some(n) if key.kind == "bytes" && n > 0 && n % MIB == 0 => {
            format!("`{n}` ({} MiB)", n / MIB)
        }
        _ => format!("`{value}`"),
    }
}

/// Every configuration key, in the order `postel check` prints them.
pub const KEYS: &[Key] = &[
    Key {
        name: "listen",
        kind: "list of ip:port",
        default: None,
        doc: "addresses to listen on, `\"ip:port\"` (IPv6 as `\"[::1]:25\"`)",
        set: |c, v| {
            c.listen = non_empty(list(v, |s| {
                s.parse()
                    .map_err(|_| format!("'{s}' is not an ip:port address"))
            })?)?;
            Ok(())
        },
        get: |c| strings(c.listen.iter()),
    },
    Key {
        name: "submission_listen",
        kind: "list of ip:port",
        default: None,
        doc: "addresses of the submission port (RFC 6409), e.g. `[\"0.0.0.0:587\"]`: STARTTLS, and AUTH before MAIL ([TLS and authentication](#tls-and-authentication))",
        set: |c, v| {
            c.submission_listen = socket_addresses(v)?;
            Ok(())
        },
        get: |c| strings(c.submission_listen.iter()),
    },
    Key {
        name: "submissions_listen",
        kind: "list of ip:port",
        default: None,
        doc: "addresses of the submission port with TLS from the first byte (RFC 8314), e.g. `[\"0.0.0.0:465\"]`",
        set: |c, v| {
            c.submissions_listen = socket_addresses(v)?;
            Ok(())
        },
        get: |c| strings(c.submissions_listen.iter()),
    },
    Key {
        name: "hostname",
        kind: "domain",
        default: Some("the system's host name"),
        doc: "this host's name in the greeting, EHLO and Received headers",
        set: |c, v| {
            c.hostname = domain_name(v)?;
            Ok(())
        },
        get: |c| c.hostname.as_str().into(),
    },
    Key {
        name: "local_domains",
        kind: "list of domains",
        default: Some("`[\"localhost\", <hostname>]`"),
        doc: "domains delivered to local mailboxes",
        set: |c, v| {
            c.local_domains = list(v, |s| domain_name(&Value::from(s)))?;
            Ok(())
        },
        get: |c| strings(c.local_domains.iter()),
    },
    Key {
        name: "spool_dir",
        kind: "path",
        default: None,
        doc: "the queue of accepted messages ([doc/spool.md](doc/spool.md))",
        set: |c, v| {
            c.spool_dir = path(v)?;
            Ok(())
        },
        get: |c| c.spool_dir.display().to_string().into(),
    },
    duration_key!(
        spool_segment_age,
        "how long a spool segment (the shared file small messages are written to) takes new messages; once closed, it is deleted as soon as its messages are delivered, so delivered mail does not stay on disk ([doc/spool.md](doc/spool.md))"
    ),
    Key {
        name: "mailbox_dir",
        kind: "path",
        default: None,
        doc: "per-user mbox files (`/var/mail` in a system install)",
        set: |c, v| {
            c.mailbox_dir = path(v)?;
            Ok(())
        },
        get: |c| c.mailbox_dir.display().to_string().into(),
    },
    Key {
        name: "user",
        kind: "account",
        default: Some("`\"\"` (none: whoever starts Postel)"),
        doc: "the unprivileged account that serves sessions and delivers, such as `\"postel\"`; Postel started as root binds its sockets and reads the TLS key first ([doc/security.md](doc/security.md))",
        set: |c, v| {
            c.user = match string(v)? {
                "" => None,
                name => Some(name.to_string()),
            };
            Ok(())
        },
        get: |c| c.user.clone().unwrap_or_default().into(),
    },
    count_key!(
        workers,
        "session worker threads: connections served at once"
    ),
    count_key!(accept_queue, "accepted connections that may wait for a free worker; beyond it, `421 4.3.2`", default: "as many as `workers`"),
    Key {
        name: "max_message_size",
        kind: "bytes",
        default: None,
        doc: "largest message accepted, in bytes; advertised as `SIZE`",
        set: |c, v| {
            c.max_message_size = positive(v)? as u64;
            Ok(())
        },
        get: |c| integer(c.max_message_size),
    },
    Key {
        name: "spool_min_free",
        kind: "bytes",
        default: None,
        doc: "free space kept on the spool's file system for the journal and for bounces: MAIL gets `452 4.3.1` while less than this (plus the message's `SIZE=`) is free, so that queued mail can always be delivered and the disk empties again; `0`: no check ([doc/spool.md](doc/spool.md))",
        set: |c, v| {
            c.spool_min_free = bytes_or_zero(v)?;
            Ok(())
        },
        get: |c| integer(c.spool_min_free),
    },
    count_key!(
        max_recipients,
        "recipients per message; the next gets `452 4.5.3`"
    ),
    Key {
        name: "max_line_length",
        kind: "count",
        default: None,
        doc: "longest command line in octets, CRLF included (512 to 32768)",
        set: |c, v| {
            let n = positive(v)?;
            if !(512..=MAX_LINE_LIMIT).contains(&n) {
                return Err(format!("expected a number from 512 to {MAX_LINE_LIMIT}"));
            }
            c.max_line_length = n;
            Ok(())
        },
        get: |c| integer(c.max_line_length as u64),
    },
    Key {
        name: "max_errors",
        kind: "count",
        default: None,
        doc: "error replies in one session before `421` and hang-up",
        set: |c, v| {
            c.max_errors = u32::try_from(positive(v)?).map_err(|_| "too large".to_string())?;
            Ok(())
        },
        get: |c| integer(u64::from(c.max_errors)),
    },
    Key {
        name: "trusted_networks",
        kind: "list of networks",
        default: None,
        doc: "client networks that may relay and have no per-client connection limit",
        set: |c, v| {
            c.trusted_networks = list(v, |s| s.parse())?;
            Ok(())
        },
        get: |c| strings(c.trusted_networks.iter()),
    },
    count_key!(
        max_connections_per_client,
        "simultaneous connections from one untrusted address; beyond it, `421 4.3.2`"
    ),
    duration_key!(
        command_timeout,
        "how long a client may be silent between commands, and how long one command line may take to arrive from its first byte; then `421 4.4.2`"
    ),
    duration_key!(
        data_timeout,
        "how long message content (DATA, BDAT) may pause; then `421 4.4.2`"
    ),
    Key {
        name: "min_data_rate",
        kind: "bytes per second",
        default: None,
        doc: "message content must average this rate once it has taken longer than `data_timeout` (as Postfix's `smtpd_min_data_rate`); slower gets `421 4.4.2`; `0`: no minimum",
        set: |c, v| {
            c.min_data_rate = match v.as_integer() {
                Some(n) if n >= 0 => n as u64,
                _ => return Err("expected a number of bytes per second (0 for no minimum)".into()),
            };
            Ok(())
        },
        get: |c| integer(c.min_data_rate),
    },
    duration_key!(
        shutdown_grace,
        "how long sessions in flight may take to finish after SIGTERM"
    ),
    Key {
        name: "log",
        kind: "choice",
        default: None,
        doc: "where log lines go: `\"stderr\"` or `\"syslog\"` (facility mail); `postel inetd` uses syslog when stderr may be the client's socket ([Log lines](#log-lines))",
        set: |c, v| {
            c.log = match string(v)? {
                "stderr" => LogTarget::Stderr,
                "syslog" => LogTarget::Syslog,
                _ => return Err("expected \"stderr\" or \"syslog\"".into()),
            };
            Ok(())
        },
        get: |c| match c.log {
            LogTarget::Stderr => "stderr".into(),
            LogTarget::Syslog => "syslog".into(),
        },
    },
    Key {
        name: "syslog_socket",
        kind: "path",
        default: None,
        doc: "the syslog daemon's datagram socket",
        set: |c, v| {
            c.syslog_socket = path(v)?;
            Ok(())
        },
        get: |c| c.syslog_socket.display().to_string().into(),
    },
    Key {
        name: "bare_lf",
        kind: "choice",
        default: None,
        doc: "a bare LF in message content: `\"normalize\"` (store CRLF) or `\"reject\"` (`550 5.6.0`)",
        set: |c, v| {
            c.bare_lf = match string(v)? {
                "normalize" => BareLf::Normalize,
                "reject" => BareLf::Reject,
                _ => return Err("expected \"normalize\" or \"reject\"".into()),
            };
            Ok(())
        },
        get: |c| match c.bare_lf {
            BareLf::Normalize => "normalize".into(),
            BareLf::Reject => "reject".into(),
        },
    },
    Key {
        name: "local_users",
        kind: "choice or list",
        default: None,
        doc: "who has a mailbox: `\"system\"` (Unix accounts), `\"any\"`, or a list of names such as `[\"alice\", \"bob\"]` ([doc/delivery.md](doc/delivery.md#local-users))",
        set: |c, v| {
            c.local_users = match v {
                Value::String(s) if s.value() == "system" => LocalUsers::System,
                Value::String(s) if s.value() == "any" => LocalUsers::Any,
                Value::Array(_) => {
                    LocalUsers::List(list(v, |s| Ok::<_, String>(s.to_ascii_lowercase()))?)
                }
                _ => return Err("expected \"system\", \"any\" or a list of user names".into()),
            };
            Ok(())
        },
        get: |c| match &c.local_users {
            LocalUsers::System => "system".into(),
            LocalUsers::Any => "any".into(),
            LocalUsers::List(names) => strings(names.iter()),
        },
    },
    optional_path_key!(
        aliases,
        "an aliases file in the /etc/aliases format ([doc/delivery.md](doc/delivery.md#aliases))"
    ),
    boolean_key!(
        alias_commands,
        "alias targets `\"|command\"` may run (the command gets the message on stdin)"
    ),
    boolean_key!(
        alias_files,
        "alias targets `/path` may be appended to as mbox files"
    ),
    duration_key!(
        pipe_timeout,
        "how long a `\"|command\"` delivery may take, from its start to its exit; then the command is killed and the delivery tried again later"
    ),
    boolean_key!(
        expn,
        "EXPN lists an alias's members; `false` refuses it with `502 5.7.0`"
    ),
    boolean_key!(
        terminal_delivery,
        "RFC 821's SEND, SOML and SAML write messages to the terminals of logged-in local users, as write(1) does; `false` refuses them with `502 5.5.1` ([doc/classroom.md](doc/classroom.md#7-terminal-delivery-with-send))"
    ),
    Key {
        name: "utmp_file",
        kind: "path",
        default: None,
        doc: "the utmp file that lists the login sessions, for SEND, SOML and SAML",
        set: |c, v| {
            c.utmp_file = path(v)?;
            Ok(())
        },
        get: |c| c.utmp_file.display().to_string().into(),
    },
    count_key!(
        terminal_max_lines,
        "the most lines of a message a terminal shows; the rest is summarised in one line"
    ),
    Key {
        name: "comsat",
        kind: "host:port",
        default: Some("`\"\"` (off)"),
        doc: "after each mailbox append, send the datagram `user@offset` here (`\"127.0.0.1:512\"` is the comsat/biff service), as Postfix's local(8) does with `biff = yes`",
        set: |c, v| {
            c.comsat = match string(v)? {
                "" => None,
                address
                    if address.rsplit_once(':').is_some_and(|(host, port)| {
                        !host.is_empty() && port.parse::<u16>().is_ok()
                    }) =>
                {
                    Some(address.to_string())
                }
                _ => {
                    return Err("expected \"host:port\", such as \"127.0.0.1:512\", or \"\"".into());
                }
            };
            Ok(())
        },
        get: |c| c.comsat.clone().unwrap_or_default().into(),
    },
    Key {
        name: "delivery_workers",
        kind: "count",
        default: None,
        doc: "delivery threads, each running one job at a time (one destination and its messages, [doc/architecture.md](doc/architecture.md#delivery-jobs)); `0` holds every accepted message in the queue",
        set: |c, v| {
            c.delivery_workers = match v.as_integer() {
                Some(n) if n >= 0 => usize::try_from(n).map_err(|_| "too large".to_string())?,
                _ => return Err("expected a number of threads (0 holds mail in the queue)".into()),
            };
            Ok(())
        },
        get: |c| integer(c.delivery_workers as u64),
    },
    duration_key!(
        retry_first,
        "first retry after a temporary delivery failure; the wait doubles each time"
    ),
    duration_key!(retry_max, "longest wait between retries"),
    duration_key!(
        queue_lifetime,
        "how long a message may wait before its undelivered recipients bounce"
    ),
    Key {
        name: "mailbox_size_limit",
        kind: "bytes",
        default: None,
        doc: "largest mailbox file; a message that would pass it bounces with `5.2.2`; `0`: no limit",
        set: |c, v| {
            c.mailbox_size_limit = bytes_or_zero(v)?;
            Ok(())
        },
        get: |c| integer(c.mailbox_size_limit),
    },
    duration_key!(
        mailbox_lock_timeout,
        "how long delivery waits for a locked mailbox before it retries later"
    ),
    duration_key!(
        stale_lock_age,
        "a mailbox dot-lock this old, whose holder cannot be seen, is removed"
    ),
    boolean_key!(
        mailbox_flock,
        "also take flock(2) on mailboxes, beside fcntl and the dot-lock"
    ),
    Key {
        name: "nameservers",
        kind: "list of ip:port",
        default: Some("`[]`: those of `/etc/resolv.conf`"),
        doc: "DNS servers for MX lookups, `\"ip:port\"` ([doc/relay.md](doc/relay.md))",
        set: |c, v| {
            c.nameservers = list(v, |s| {
                s.parse()
                    .map_err(|_| format!("'{s}' is not an ip:port address"))
            })?;
            Ok(())
        },
        get: |c| strings(c.nameservers.iter()),
    },
    Key {
        name: "remote_port",
        kind: "port",
        default: None,
        doc: "the port of other hosts' SMTP servers",
        set: |c, v| {
            c.remote_port =
                u16::try_from(positive(v)?).map_err(|_| "expected a port number".to_string())?;
            Ok(())
        },
        get: |c| integer(u64::from(c.remote_port)),
    },
    Key {
        name: "smarthost",
        kind: "host or host:port",
        default: None,
        doc: "send all non-local mail to this `\"host\"` or `\"host:port\"` instead of the MX",
        set: |c, v| {
            c.smarthost = match string(v)? {
                "" => None,
                host => Some(host.to_string()),
            };
            Ok(())
        },
        get: |c| c.smarthost.clone().unwrap_or_default().into(),
    },
    Key {
        name: "relay_domains",
        kind: "list of domains",
        default: None,
        doc: "domains accepted from anyone and forwarded (a backup MX)",
        set: |c, v| {
            c.relay_domains = list(v, |s| domain_name(&Value::from(s)))?;
            Ok(())
        },
        get: |c| strings(c.relay_domains.iter()),
    },
    Key {
        name: "odmr_listen",
        kind: "list of ip:port",
        default: None,
        doc: "addresses of the On-Demand Mail Relay port (RFC 2645), e.g. `[\"0.0.0.0:366\"]`: the only port that answers ATRN ([On-Demand Mail Relay](#on-demand-mail-relay-atrn))",
        set: |c, v| {
            c.odmr_listen = socket_addresses(v)?;
            Ok(())
        },
        get: |c| strings(c.odmr_listen.iter()),
    },
    Key {
        name: "odmr_domains",
        kind: "table of domain = user",
        default: None,
        doc: "domains whose mail is accepted from anyone and held, not sent by MX, until the user named (an `auth_users` name) asks for it with ATRN, e.g. `{ \"example.org\" = \"alice\" }`",
        set: |c, v| {
            c.odmr_domains = domain_users(v)?;
            Ok(())
        },
        get: |c| {
            let mut table = InlineTable::new();
            for (domain, user) in &c.odmr_domains {
                table.insert(domain, Value::from(user.as_str()));
            }
            Value::InlineTable(table)
        },
    },
    count_key!(remote_concurrency, "connections to one destination at once"),
    duration_key!(
        remote_connect_timeout,
        "how long to wait for another server to answer a connection"
    ),
    duration_key!(
        remote_command_timeout,
        "how long to wait for another server's reply to a command (RFC 5321: 5 minutes)"
    ),
    duration_key!(
        remote_data_timeout,
        "how long to wait for another server's reply after the message (RFC 5321: 10 minutes)"
    ),
    optional_path_key!(
        tls_certificate,
        "certificate chain in PEM, this host's certificate first; with `tls_key`, every listener offers STARTTLS ([TLS and authentication](#tls-and-authentication))"
    ),
    optional_path_key!(
        tls_key,
        "the private key of `tls_certificate` in PEM (PKCS#8, RSA or EC), read before privileges are dropped; set both or neither"
    ),
    optional_path_key!(
        auth_users,
        "a file of `name:hash` lines, crypt(3) hashes `$y$`, `$6$` or `$2b$`, of the users who may authenticate"
    ),
    boolean_key!(
        tls_required,
        "MAIL on the `listen` ports needs STARTTLS first (`530 5.7.0`), for private relays"
    ),
    boolean_key!(
        received_auth_user,
        "the Received header names the user a client authenticated as"
    ),
    boolean_key!(
        submission_sender_check,
        "on the submission ports the sender must be the user's name at a local domain (`550 5.7.1`); `false` allows any sender"
    ),
    Key {
        name: "remote_tls",
        kind: "choice",
        default: None,
        doc: "TLS when relaying to other domains' MX hosts: `\"opportunistic\"` (STARTTLS when offered; after a failed handshake the next attempt to that host is in plaintext), `\"required\"` (STARTTLS or the mail waits) or `\"none\"`; the certificate is not verified",
        set: |c, v| {
            c.remote_tls = match string(v)? {
                "opportunistic" => RemoteTls::Opportunistic,
                "required" => RemoteTls::Required,
                "none" => RemoteTls::None,
                _ => return Err("expected \"opportunistic\", \"required\" or \"none\"".into()),
            };
            Ok(())
        },
        get: |c| match c.remote_tls {
            RemoteTls::Opportunistic => "opportunistic".into(),
            RemoteTls::Required => "required".into(),
            RemoteTls::None => "none".into(),
        },
    },
    Key {
        name: "smarthost_tls",
        kind: "choice",
        default: None,
        doc: "TLS to the `smarthost`, with its certificate and name verified: `\"starttls\"`, `\"implicit\"` (TLS from the first byte, port 465) or `\"none\"`",
        set: |c, v| {
            c.smarthost_tls = match string(v)? {
                "starttls" => SmarthostTls::Starttls,
                "implicit" => SmarthostTls::Implicit,
                "none" => SmarthostTls::None,
                _ => return Err("expected \"starttls\", \"implicit\" or \"none\"".into()),
            };
            Ok(())
        },
        get: |c| match c.smarthost_tls {
            SmarthostTls::Starttls => "starttls".into(),
            SmarthostTls::Implicit => "implicit".into(),
            SmarthostTls::None => "none".into(),
        },
    },
    optional_path_key!(
        tls_ca_file,
        "CA certificates (PEM) that vouch for the smarthost's certificate (`\"\"`: the system's trusted roots)"
    ),
    optional_path_key!(
        smarthost_credentials,
        "a file holding `user:password` for AUTH PLAIN or LOGIN at the smarthost, sent only over TLS; `postel check` refuses it if others may read it"
    ),
];

/// Where a system install keeps its configuration.
pub const SYSTEM_CONFIG: &str = "/etc/postel/postel.toml";

/// Where the syslog daemon listens unless `syslog_socket` says otherwise.
pub const DEFAULT_SYSLOG_SOCKET: &str = "/dev/log";

/// The largest accepted `max_line_length`; the session's input buffer is twice the configured one, at least 16 KiB.
pub const MAX_LINE_LIMIT: usize = 32 * 1024;

impl Config {
    /// The built-in configuration: what `postel serve` runs with when given no file.
    pub fn builtin() -> Config {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string());
        Config {
            listen: vec![SocketAddr::from(([127, 0, 0, 1], 2525))],
            submission_listen: Vec::new(),
            submissions_listen: Vec::new(),
            odmr_listen: Vec::new(),
            odmr_domains: Vec::new(),
            local_domains: default_local_domains(&hostname),
            hostname,
            spool_dir: PathBuf::from("./spool"),
            spool_segment_age: Duration::from_secs(60),
            mailbox_dir: PathBuf::from("./mailboxes"),
            user: None,
            workers: 100,
            accept_queue: 100,
            max_message_size: 50 * 1024 * 1024,
            spool_min_free: 16 * 1024 * 1024,
            max_recipients: 1000,
            max_line_length: 512,
            max_errors: 20,
            trusted_networks: vec![
                "127.0.0.0/8".parse().expect("valid network"),
                "::1/128".parse().expect("valid network"),
            ],
            max_connections_per_client: 20,
            command_timeout: Duration::from_secs(5 * 60),
            data_timeout: Duration::from_secs(10 * 60),
            min_data_rate: 500,
            shutdown_grace: Duration::from_secs(30),
            log: LogTarget::Stderr,
            syslog_socket: PathBuf::from(DEFAULT_SYSLOG_SOCKET),
            bare_lf: BareLf::Normalize,
            local_users: LocalUsers::System,
            aliases: None,
            alias_commands: false,
            alias_files: false,
            pipe_timeout: Duration::from_secs(10 * 60),
            expn: true,
            terminal_delivery: false,
            utmp_file: PathBuf::from("/var/run/utmp"),
            terminal_max_lines: 20,
            comsat: None,
            delivery_workers: 4,
            retry_first: Duration::from_secs(5 * 60),
            retry_max: Duration::from_secs(60 * 60),
            queue_lifetime: Duration::from_secs(5 * 86_400),
            mailbox_size_limit: 50 * 1024 * 1024,
            mailbox_lock_timeout: Duration::from_secs(30),
            stale_lock_age: Duration::from_secs(5 * 60),
            mailbox_flock: false,
            nameservers: Vec::new(),
            remote_port: 25,
            smarthost: None,
            relay_domains: Vec::new(),
            remote_concurrency: 2,
            remote_connect_timeout: Duration::from_secs(30),
            remote_command_timeout: Duration::from_secs(5 * 60),
            remote_data_timeout: Duration::from_secs(10 * 60),
            tls_certificate: None,
            tls_key: None,
            auth_users: None,
            tls_required: false,
            received_auth_user: false,
            submission_sender_check: true,
            remote_tls: RemoteTls::Opportunistic,
            smarthost_tls: SmarthostTls::Starttls,
            tls_ca_file: None,
            smarthost_credentials: None,
        }
    }

    /// The configuration file a local program uses: the one it was given, else $POSTEL_CONFIG, else the system
    /// file when it exists; None means the built-in defaults. A caller who is not `trusted` (of a set-id binary)
    /// chooses nothing: the system file or the defaults.
    pub fn find(given: Option<PathBuf>, trusted: bool) -> Option<PathBuf> {
        given
            .filter(|_| trusted)
            .or_else(|| {
                std::env::var_os("POSTEL_CONFIG")
                    .filter(|_| trusted)
                    .map(PathBuf::from)
            })
            .or_else(|| {
                Path::new(SYSTEM_CONFIG)
                    .exists()
                    .then(|| PathBuf::from(SYSTEM_CONFIG))
            })
    }

    /// Loads `path` over the built-in defaults. Errors name the file, the line and the key.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let line_of = |span: Option<std::ops::Range<usize>>| {
            let at = span.map_or(0, |s| s.start).min(text.len());
            text[..at].bytes().filter(|&b| b == b'\n').count() + 1
        };
        let document = Document::parse(text.to_string()).map_err(|e| {
            let message = e.message().trim_end().to_string();
            ConfigError(format!("{origin}:{}: {message}", line_of(e.span())))
        })?;
        let mut config = Config::builtin();
        let (mut hostname_set, mut local_domains_set, mut accept_queue_set) = (false, false, false);
        for (name, item) in document.as_table().iter() {
            let (key, _) = document
                .as_table()
                .get_key_value(name)
                .expect("iterated key exists");
            let at =
                |what: String| ConfigError(format!("{origin}:{}: {what}", line_of(key.span())));
            let Some(entry) = KEYS.iter().find(|k| k.name == name) else {
                return Err(at(format!("unknown key '{name}'")));
            };
            let Item::Value(value) = item else {
                return Err(at(format!("{name}: expected a value, not a table")));
            };
            (entry.set)(&mut config, value).map_err(|why| at(format!("{name}: {why}")))?;
            hostname_set |= name == "hostname";
            local_domains_set |= name == "local_domains";
            accept_queue_set |= name == "accept_queue";
        }
        if hostname_set && !local_domains_set {
            config.local_domains = default_local_domains(&config.hostname);
        }
        if !accept_queue_set {
            config.accept_queue = config.workers;
        }
        if config.tls_certificate.is_some() != config.tls_key.is_some() {
            return Err(ConfigError(format!(
                "{origin}: tls_certificate and tls_key go together: set both or neither"
            )));
        }
        let needs_tls = !config.submissions_listen.is_empty() || config.tls_required;
        if needs_tls && config.tls_certificate.is_none() {
            return Err(ConfigError(format!(
                "{origin}: submissions_listen and tls_required need tls_certificate and tls_key"
            )));
        }
        if !config.odmr_listen.is_empty()
            && (config.tls_certificate.is_none() || config.auth_users.is_none())
        {
            return Err(ConfigError(format!(
                "{origin}: odmr_listen needs tls_certificate, tls_key and auth_users: ATRN is for users logged in over TLS"
            )));
        }
        if let Some((domain, _)) = config
            .odmr_domains
            .iter()
            .find(|(domain, _)| config.is_local_domain(domain))
        {
            return Err(ConfigError(format!(
                "{origin}: {domain} is in local_domains and in odmr_domains: its mail is delivered here or held, not both"
            )));
        }
        Ok(config)
    }

    /// The effective configuration as TOML that [`Config::parse`] accepts.
    pub fn to_toml(&self) -> String {
        let mut document = DocumentMut::new();
        for key in KEYS {
            document[key.name] = Item::Value((key.get)(self));
        }
        document.to_string()
    }

    /// Whether `ip` belongs to one of the trusted networks.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.trusted_networks.iter().any(|n| n.contains(ip))
    }

    /// Whether `domain` (any case) is one this host accepts from anyone and forwards.
    pub fn is_relay_domain(&self, domain: &str) -> bool {
        self.relay_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }

    /// The user who may take the mail held for `domain` (any case) with ATRN, if it is an ODMR domain.
    pub fn odmr_user(&self, domain: &str) -> Option<&str> {
        self.odmr_domains
            .iter()
            .find(|(d, _)| d.eq_ignore_ascii_case(domain))
            .map(|(_, user)| user.as_str())
    }

    /// Whether `domain` (any case) is one this host delivers locally.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        self.local_domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

fn default_local_domains(hostname: &str) -> Vec<String> {
    let mut domains = vec!["localhost".to_string()];
    if !hostname.eq_ignore_ascii_case("localhost") {
        domains.push(hostname.to_string());
    }
    domains
}

fn string(v: &Value) -> Result<&str, String> {
    v.as_str().ok_or_else(|| "expected a string".to_string())
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| "expected true or false".to_string())
}

fn path(v: &Value) -> Result<PathBuf, String> {
    match string(v)? {
        "" => Err("expected a path, not an empty string".into()),
        s => Ok(PathBuf::from(s)),
    }
}

fn socket_addresses(v: &Value) -> Result<Vec<SocketAddr>, String> {
    list(v, |s| {
        s.parse()
            .map_err(|_| format!("'{s}' is not an ip:port address"))
    })
}

fn optional_path(v: &Value) -> Result<Option<PathBuf>, String> {
    Ok(match string(v)? {
        "" => None,
        p => Some(PathBuf::from(p)),
    })
}

fn format_optional_path(p: &Option<PathBuf>) -> Value {
    p.as_ref()
        .map_or(String::new(), |p| p.display().to_string())
        .into()
}

/// A number of bytes where 0 turns the limit off.
fn bytes_or_zero(v: &Value) -> Result<u64, String> {
    match v.as_integer() {
        Some(n) if n >= 0 => Ok(n as u64),
        _ => Err("expected a number of bytes (0 for no limit)".into()),
    }
}

fn positive(v: &Value) -> Result<usize, String> {
    match v.as_integer() {
        Some(n) if n > 0 => usize::try_from(n).map_err(|_| "too large".into()),
        _ => Err("expected a positive integer".into()),
    }
}

fn domain_name(v: &Value) -> Result<String, String> {
    let name = string(v)?;
    if check_host_name(name, HostNameRules::HOST_NAME).is_ok() {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("'{name}' is not a domain name"))
    }
}

/// A table of `"domain" = "user"` entries.
fn domain_users(v: &Value) -> Result<Vec<(String, String)>, String> {
    let Value::InlineTable(table) = v else {
        return Err("expected a table like { \"example.org\" = \"alice\" }".into());
    };
    table
        .iter()
        .map(|(domain, user)| {
            let domain = domain_name(&Value::from(domain))?;
            match user.as_str() {
                Some(user) if !user.is_empty() => Ok((domain, user.to_string())),
                _ => Err(format!("{domain}: expected a user name")),
            }
        })
        .collect()
}

fn list<T, E: fmt::Display>(
    v: &Value,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<Vec<T>, String> {
    let Value::Array(array) = v else {
        return Err("expected a list of strings".into());
    };
    array
        .iter()
        .map(|item| {
            let s = item.as_str().ok_or("expected a list of strings")?;
            parse(s).map_err(|e| e.to_string())
        })
        .collect()
}

fn non_empty<T>(items: Vec<T>) -> Result<Vec<T>, String> {
    if items.is_empty() {
        Err("expected at least one entry".into())
    } else {
        Ok(items)
    }
}

fn strings<T: fmt::Display>(items: impl Iterator<Item = T>) -> Value {
    Value::Array(items.map(|i| i.to_string()).collect::<Array>())
}

fn integer(n: u64) -> Value {
    Value::from(i64::try_from(n).unwrap_or(i64::MAX))
}

const DURATION_UNITS: &[(&str, u64)] = &[
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1000),
    ("ms", 1),
];

/// Parses a duration like "500ms", "30s", "5m", "1h" or "5d".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("'{text}' is not a duration like \"30s\", \"5m\", \"1h\" or \"5d\"");
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let &(_, millis) = DURATION_UNITS
        .iter()
        .find(|(u, _)| *u == unit)
        .ok_or_else(bad)?;
    number
        .checked_mul(millis)
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

fn duration(v: &Value) -> Result<Duration, String> {
    parse_duration(string(v)?)
}

/// Writes a duration in the largest unit that divides it exactly, so that it parses back to the same value.
pub fn format_duration(d: Duration) -> String {
    let millis = d.as_millis() as u64;
    let (unit, size) = DURATION_UNITS
        .iter()
        .find(|(_, size)| millis.is_multiple_of(*size) && millis >= *size)
        .unwrap_or(&("s", 1000));
    format!("{}{unit}", millis / size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, "postel.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn an_empty_file_gives_the_builtin_configuration() {
        assert_eq!(parse("").unwrap(), Config::builtin());
    }

    #[test]
    fn errors_name_the_file_the_line_and_the_key() {
        let cases = [
            (
                "listen = [\"127.0.0.1:25\"]\n\nlisten_backlogg = 5\n",
                "postel.toml:3: unknown key 'listen_backlogg'",
            ),
            (
                "workers = -1\n",
                "postel.toml:1: workers: expected a positive integer",
            ),
            (
                "workers = \"many\"\n",
                "postel.toml:1: workers: expected a positive integer",
            ),
            (
                "\ncommand_timeout = \"5 minutes\"\n",
                "postel.toml:2: command_timeout: '5 minutes' is not a duration",
            ),
            (
                "trusted_networks = [\"10.0.0.0/33\"]\n",
                "postel.toml:1: trusted_networks: '10.0.0.0/33'",
            ),
            (
                "listen = [\"localhost\"]\n",
                "postel.toml:1: listen: 'localhost' is not an ip:port address",
            ),
            (
                "listen = []\n",
                "postel.toml:1: listen: expected at least one entry",
            ),
            (
                "hostname = \"bad host\"\n",
                "postel.toml:1: hostname: 'bad host' is not a domain name",
            ),
            (
                "log = \"file\"\n",
                "postel.toml:1: log: expected \"stderr\" or \"syslog\"",
            ),
            (
                "bare_lf = \"keep\"\n",
                "postel.toml:1: bare_lf: expected \"normalize\" or \"reject\"",
            ),
            ("local_users = 3\n", "postel.toml:1: local_users: expected"),
            (
                "max_line_length = 100\n",
                "postel.toml:1: max_line_length: expected a number from 512",
            ),
            (
                "[server]\nworkers = 3\n",
                "postel.toml:1: unknown key 'server'",
            ),
            ("workers = = 3\n", "postel.toml:1: "),
            (
                "expn = \"no\"\n",
                "postel.toml:1: expn: expected true or false",
            ),
            (
                "tls_key = \"/etc/ssl/private/mx.key\"\n",
                "postel.toml: tls_certificate and tls_key go together",
            ),
            (
                "mailbox_size_limit = -1\n",
                "postel.toml:1: mailbox_size_limit: expected a number",
            ),
        ];
        for (text, expected) in cases {
            let error = parse(text).unwrap_err();
            assert!(
                error.starts_with(expected),
                "{text:?}: got {error:?}, expected {expected:?}"
            );
        }
    }

    #[test]
    fn values_are_read() {
        let config = parse(
            "listen = [\"127.0.0.1:2600\", \"[::1]:2600\"]\nhostname = \"MX.Example.Test\"\nworkers = 4\n\
             command_timeout = \"30s\"\nlocal_users = [\"Alice\", \"bob\"]\nbare_lf = \"reject\"\n",
        )
        .unwrap();
        assert_eq!(config.listen.len(), 2);
        assert_eq!(config.hostname, "mx.example.test");
        assert_eq!(config.local_domains, ["localhost", "mx.example.test"]);
        assert_eq!((config.workers, config.accept_queue), (4, 4));
        assert_eq!(config.command_timeout, Duration::from_secs(30));
        assert_eq!(
            config.local_users,
            LocalUsers::List(vec!["alice".into(), "bob".into()])
        );
        assert_eq!(config.bare_lf, BareLf::Reject);
    }

    #[test]
    fn printed_configuration_parses_back_to_itself() {
        let config = parse(
            "workers = 7\naccept_queue = 3\nlocal_users = \"any\"\nshutdown_grace = \"90s\"\n\
             aliases = \"/etc/aliases\"\nexpn = false\nretry_first = \"1s\"\n",
        )
        .unwrap();
        let printed = config.to_toml();
        assert_eq!(parse(&printed).unwrap(), config, "{printed}");
        assert!(printed.contains("shutdown_grace = \"90s\""), "{printed}");
    }

    #[test]
    fn odmr_domains_map_domains_to_users() {
        let config =
            parse("odmr_domains = { \"Example.ORG\" = \"alice\", \"b.test\" = \"bob\" }\n")
                .unwrap();
        assert_eq!(config.odmr_user("example.org"), Some("alice"));
        assert_eq!(config.odmr_user("B.TEST"), Some("bob"));
        assert_eq!(config.odmr_user("other.test"), None);
        assert_eq!(parse(&config.to_toml()).unwrap(), config);
        let error = parse("\nodmr_domains = { \"not a domain\" = \"alice\" }\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains(":2: odmr_domains: 'not a domain' is not a domain name"),
            "{error}"
        );
        let error = parse("odmr_listen = [\"127.0.0.1:366\"]\n").unwrap_err();
        assert!(
            error.contains("odmr_listen needs tls_certificate"),
            "{error}"
        );
        let error = parse("odmr_domains = { \"localhost\" = \"alice\" }\n").unwrap_err();
        assert!(
            error.contains("localhost is in local_domains and in odmr_domains"),
            "{error}"
        );
        let error = parse("odmr_domains = [\"example.org\"]\n").unwrap_err();
        assert!(error.to_string().contains("expected a table"), "{error}");
        let error = parse("odmr_domains = { \"example.org\" = 1 }\n").unwrap_err();
        assert!(
            error
                .to_string()
                .contains("example.org: expected a user name"),
            "{error}"
        );
    }

    #[test]
    fn the_readme_documents_every_key() {
        let readme = include_str!("../README.md");
        for key in KEYS {
            assert!(
                readme.contains(&format!("| `{}` |", key.name)),
                "README.md lacks a row for {}",
                key.name
            );
        }
    }

    /// The README's key table lies between these lines.
    const TABLE_START: &str =
        "<!-- The key table is made from src/config.rs (config::reference_markdown). -->\n\n";
    const TABLE_END: &str = "\n<!-- End of the key table. -->\n";

    #[test]
    fn the_readme_key_table_is_the_one_the_keys_make() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(&path).unwrap();
        let (before, rest) = readme
            .split_once(TABLE_START)
            .expect("README.md marks its key table");
        let (table, after) = rest
            .split_once(TABLE_END)
            .expect("README.md marks its key table's end");
        let generated = reference_markdown();
        if table == generated {
            return;
        }
        if std::env::var_os("POSTEL_WRITE_README").is_some() {
            let written = format!("{before}{TABLE_START}{generated}{TABLE_END}{after}");
            std::fs::write(&path, written).unwrap();
            return;
        }
        panic!(
            "README.md's key table differs from the keys in src/config.rs; \
             `POSTEL_WRITE_README=1 cargo test readme_key_table` writes it\n--- README.md\n{table}\
             --- generated\n{generated}"
        );
    }

    #[test]
    fn the_reference_gives_every_key_a_kind_a_default_and_a_meaning() {
        let reference = reference();
        assert_eq!(reference.len(), KEYS.len());
        for key in &reference {
            assert!(!key.kind.is_empty() && !key.doc.is_empty(), "{key:?}");
            assert!(!key.default.is_empty(), "{key:?}");
        }
        let by_name = |name| reference.iter().find(|k| k.name == name).unwrap();
        assert_eq!(by_name("command_timeout").default, "`\"5m\"`");
        assert_eq!(by_name("max_message_size").default, "`52428800` (50 MiB)");
        assert_eq!(by_name("aliases").default, "`\"\"` (none)");
        assert_eq!(by_name("hostname").default, "the system's host name");
    }

    #[test]
    fn durations_round_trip() {
        for text in ["500ms", "30s", "5m", "1h", "5d", "90s"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
        for bad in ["", "5", "m", "5w", "-5s", "5.5s", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
