//! Sending mail onward to other hosts: finding them in the DNS, talking SMTP to them, and relaying a message's
//! remote recipients with one copy per destination.

pub mod client;
pub mod dns;
pub mod relay;
