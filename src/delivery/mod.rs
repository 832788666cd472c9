//! Taking messages out of the spool and putting them where they belong: routing through aliases, the transports
//! (mbox files, commands, and other hosts by relay), retries on a schedule, and notifications of what failed.

pub mod aliases;
pub mod appending;
pub mod attempt;
pub mod body;
pub mod bounce;
pub mod comsat;
pub mod control;
pub mod job;
pub mod local;
pub mod mail_file;
pub mod mbox;
pub mod odmr;
pub mod pipe;
pub mod queues;
pub mod relay;
pub mod retry;
pub mod runner;
pub mod scheduler;
pub mod terminal;
pub mod trace;
pub mod transport;
pub mod worker;
