//! What a transport (mbox, pipe, relay) made of one delivery. Transports say only done, try again or give up;
//! the attempt turns that into a journal record with a retry time or a bounce.

use crate::smtp::{Class, Detail, Status};

/// The result of delivering to one target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// The message is where it belongs.
    Done,
    /// Not now; trying again later may work (a 4xx).
    Temporary(Problem),
    /// Trying again cannot help (a 5xx): the sender is told.
    Permanent(Problem),
}

/// Why a delivery did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The RFC 3463 enhanced status code, e.g. "4.2.0": ours, or as another server gave it.
    pub status: String,
    /// What happened, for the log and the notification.
    pub diagnostic: String,
    /// True when `diagnostic` is another server's reply (`550 5.1.1 ...`), which a notification labels as an
    /// SMTP diagnostic (RFC 3464 Diagnostic-Code: smtp) rather than a reason of our own.
    pub remote_reply: bool,
}

impl Delivery {
    /// A temporary failure with a reason of our own: status 4.`detail`.
    pub fn temporary(detail: Detail, diagnostic: impl Into<String>) -> Delivery {
        Delivery::Temporary(Problem::local(Class::TransientFailure, detail, diagnostic))
    }

    /// A failure of the destination rather than of the message: no server of it answered (4.4.1), or its
    /// servers could not be looked up (4.4.3). The other messages of a job for it would meet the same.
    pub fn destination_down(&self) -> bool {
        matches!(self, Delivery::Temporary(problem)
            if !problem.remote_reply && (problem.status == "4.4.1" || problem.status == "4.4.3"))
    }

    /// A permanent failure with a reason of our own: status 5.`detail`.
    pub fn permanent(detail: Detail, diagnostic: impl Into<String>) -> Delivery {
        Delivery::Permanent(Problem::local(Class::PermanentFailure, detail, diagnostic))
    }

    /// A failure with a reason of our own and `status`, temporary or permanent as its class says.
    pub fn failed(status: Status, diagnostic: impl Into<String>) -> Delivery {
        let problem = Problem::local(status.class, status.detail, diagnostic);
        match status.class {
            Class::PermanentFailure => Delivery::Permanent(problem),
            Class::TransientFailure | Class::Success => Delivery::Temporary(problem),
        }
    }
}

impl Problem {
    fn local(class: Class, detail: Detail, diagnostic: impl Into<String>) -> Problem {
        Problem {
            status: Status::new(class, detail).to_string(),
            diagnostic: diagnostic.into(),
            remote_reply: false,
        }
    }
}
