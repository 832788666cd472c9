//! Talking to other hosts: a small synchronous DNS client (MX, A, AAAA) and an SMTP client. Neither knows the
//! spool or delivery; the relay transport in delivery/ drives them.

pub mod client;
pub mod dns;
