//! How a command-line program fails: one line for the admin, and the exit status (sysexits.h, as
//! sendmail's callers and scripts expect) that says what kind of failure it was.

use std::fmt;
use std::io;

use crate::config::ConfigError;
use crate::delivery::aliases::AliasError;
use crate::delivery::attempt::SetupError;
use crate::privilege::PrivilegeError;
use crate::server::ServeError;
use crate::spool::SpoolError;

/// What kind of failure: each is one sysexits.h status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 64 (EX_USAGE): the command line is wrong.
    Usage,
    /// 65 (EX_DATAERR): the input is wrong: a bad address, a bad queue id, no such message, a
    /// queue file that does not hold what it should.
    DataErr,
    /// 71 (EX_OSERR): the system refused something the program needs (a thread, a signal mask,
    /// a listening socket).
    OsErr,
    /// 74 (EX_IOERR): the output could not be written.
    IoErr,
    /// 75 (EX_TEMPFAIL): try again later: the spool is locked or cannot be read or written.
    TempFail,
    /// 77 (EX_NOPERM): this user may not do that (signal a daemon that runs as another user).
    NoPerm,
    /// 78 (EX_CONFIG): the configuration, the aliases file, or a spool in a format this Postel
    /// does not read.
    Config,
}

impl Exit {
    /// The exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Usage => 64,
            Exit::DataErr => 65,
            Exit::OsErr => 71,
            Exit::IoErr => 74,
            Exit::TempFail => 75,
            Exit::NoPerm => 77,
            Exit::Config => 78,
        }
    }
}

/// A failed command: its kind and the line to print.
#[derive(Debug)]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

impl CliError {
    pub fn new(exit: Exit, message: impl Into<String>) -> CliError {
        CliError {
            exit,
            message: message.into(),
        }
    }

    /// The same failure, its message prefixed (`sendmail: ...`).
    pub fn context(self, prefix: &str) -> CliError {
        CliError {
            message: format!("{prefix}{}", self.message),
            ..self
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

impl From<SpoolError> for CliError {
    fn from(e: SpoolError) -> CliError {
        let exit = match e {
            SpoolError::Busy | SpoolError::Io { .. } => Exit::TempFail,
            SpoolError::Corrupt { .. } => Exit::DataErr,
            SpoolError::NoRecipients => Exit::Usage,
            SpoolError::Format { .. } => Exit::Config,
        };
        CliError::new(exit, e.to_string())
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> CliError {
        CliError::new(Exit::Config, e.to_string())
    }
}

impl From<AliasError> for CliError {
    fn from(e: AliasError) -> CliError {
        CliError::new(Exit::Config, e.to_string())
    }
}

impl From<SetupError> for CliError {
    fn from(e: SetupError) -> CliError {
        match e {
            SetupError::Aliases(e) => CliError::from(e),
            SetupError::Spool(e) => CliError::from(e),
        }
    }
}

impl From<PrivilegeError> for CliError {
    fn from(e: PrivilegeError) -> CliError {
        CliError::new(Exit::Config, e.to_string())
    }
}

impl From<ServeError> for CliError {
    fn from(e: ServeError) -> CliError {
        let message = e.to_string();
        match e {
            ServeError::Spool(e) => CliError {
                message,
                ..CliError::from(e)
            },
            ServeError::Listen(..) | ServeError::Setup(..) => CliError::new(Exit::OsErr, message),
            ServeError::Aliases(_)
            | ServeError::Tls(_)
            | ServeError::AuthUsers(_)
            | ServeError::Privilege(_) => CliError::new(Exit::Config, message),
        }
    }
}

/// Writing the output failed (a closed pipe, a full disk).
impl From<io::Error> for CliError {
    fn from(e: io::Error) -> CliError {
        CliError::new(Exit::IoErr, format!("cannot write the output: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn a_locked_or_unreadable_spool_is_a_temporary_failure() {
        let unreadable = SpoolError::Io {
            path: PathBuf::from("spool/queue"),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        for e in [SpoolError::Busy, unreadable] {
            assert_eq!(CliError::from(e).exit.code(), 75);
        }
        let busy = CliError::from(ServeError::Spool(SpoolError::Busy));
        assert_eq!(busy.exit, Exit::TempFail);
        assert!(busy.message.contains("already serving"), "{}", busy.message);
    }

    #[test]
    fn the_codes_are_those_of_sysexits_h() {
        let codes = [
            (Exit::Usage, 64),
            (Exit::DataErr, 65),
            (Exit::OsErr, 71),
            (Exit::IoErr, 74),
            (Exit::TempFail, 75),
            (Exit::Config, 78),
        ];
        for (exit, code) in codes {
            assert_eq!(exit.code(), code, "{exit:?}");
        }
        let format = SpoolError::Format {
            path: PathBuf::from("spool/journal"),
            version: 9,
        };
        assert_eq!(CliError::from(format).exit, Exit::Config);
    }
}
