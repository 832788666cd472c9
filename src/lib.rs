//! Postel, a mail server for small Unix hosts.
#![forbid(unsafe_code)]

pub mod auth;
pub mod classroom;
pub mod commands;
pub mod config;
pub mod copy;
pub mod delivery;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
pub mod logging;
pub mod net;
pub mod privilege;
pub mod privileged;
pub mod reloadable;
pub mod remote;
pub mod server;
pub mod smtp;
pub mod spool;
pub mod submit;
#[cfg(test)]
mod testing;
pub mod tls;
