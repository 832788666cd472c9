//! Postel, a mail server for small Unix hosts.
#![forbid(unsafe_code)]

pub mod config;
pub mod net;
pub mod smtp;
