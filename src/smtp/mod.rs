//! The SMTP protocol, sans I/O: command lines, addresses, replies, message content and the session state machine.
//! Nothing here touches a socket, a file or a clock, so every protocol rule is a unit test.

pub(crate) mod address;
pub(crate) mod command;
pub(crate) mod data;
#[doc(hidden)]
pub mod harness;
mod hostname;
mod reply;
#[cfg(test)]
mod reply_text_tests;
pub mod sasl;
mod session;
mod status;

pub use address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath, parse_mailbox};
pub use command::{BodyType, MailParams};
pub use data::BareLf;
pub use hostname::{HostNameError, HostNameRules, check_host_name};
pub use reply::{
    CANNOT_EXPN_REMOTE, CANNOT_VRFY_REMOTE, ETRN_NOT_PERMITTED, ETRN_TOO_OFTEN, EXPN_DISABLED,
    Echo, Reply,
};
pub use session::{
    EXTENSIONS, Envelope, Extension, Mode, Policy, Protocol, RcptVerdict, Session, SessionParams,
    State, Step, VERBS, Verb, find_verb,
};
pub use status::{Class, Detail, Status, Subject};
