//! Taking messages out of the spool and putting them where they belong: routing through aliases to mbox files,
//! commands and (later) other hosts, retries on a schedule, and notifications of what failed.

pub mod aliases;
pub mod attempt;
pub mod bounce;
pub mod control;
pub mod local;
pub mod mbox;
pub mod pipe;
pub mod queue;
pub mod runner;
pub mod trace;
