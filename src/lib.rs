//! Postel, a mail server for small Unix hosts.
#![forbid(unsafe_code)]
