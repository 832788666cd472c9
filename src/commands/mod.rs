//! The command-line programs beside the daemon: atrn, check, passwd, the queue commands and sendmail, and
//! how they fail.

pub mod atrn;
pub mod check;
mod error;
pub mod passwd;
pub mod queue;
pub mod sendmail;

pub use error::{CliError, Exit};
