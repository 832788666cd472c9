//! The SMTP protocol, sans I/O: command lines, addresses, replies, message content and the session state machine.
//! Nothing here touches a socket, a file or a clock, so every protocol rule is a unit test.

mod address;
mod command;
mod data;
mod reply;
pub mod sasl;
mod session;
mod status;

pub use address::{AddressError, Domain, ForwardPath, Mailbox, ReversePath, parse_mailbox};
pub use command::{BodyType, MailParams};
pub use data::BareLf;
pub use reply::Reply;
pub use session::{Envelope, Policy, Protocol, RcptVerdict, Session, SessionParams, Step};
pub use status::{Class, Detail, Status, Subject};
