//! The command-line programs beside the daemon: the queue commands and sendmail.

pub mod queue;
pub mod sendmail;
