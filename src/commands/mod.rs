//! The command-line programs beside the daemon: check, passwd, the queue commands and sendmail.

pub mod check;
pub mod passwd;
pub mod queue;
pub mod sendmail;
