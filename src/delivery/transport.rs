//! What a transport (mbox, pipe, relay) made of one delivery. Transports say only done, try again or give up;
//! the attempt turns that into a journal record with a retry time or a bounce.

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
    /// The RFC 3463 enhanced status code, e.g. "4.2.0".
    pub status: String,
    /// What happened, for the log and the notification.
    pub diagnostic: String,
    /// True when `diagnostic` is another server's reply (`550 5.1.1 ...`), which a notification labels as an
    /// SMTP diagnostic (RFC 3464 Diagnostic-Code: smtp) rather than a reason of our own.
    pub remote_reply: bool,
}

impl Delivery {
    /// A temporary failure with a reason of our own.
    pub fn temporary(status: impl Into<String>, diagnostic: impl Into<String>) -> Delivery {
        Delivery::Temporary(Problem::local(status, diagnostic))
    }

    /// A permanent failure with a reason of our own.
    pub fn permanent(status: impl Into<String>, diagnostic: impl Into<String>) -> Delivery {
        Delivery::Permanent(Problem::local(status, diagnostic))
    }
}

impl Problem {
    fn local(status: impl Into<String>, diagnostic: impl Into<String>) -> Problem {
        Problem {
            status: status.into(),
            diagnostic: diagnostic.into(),
            remote_reply: false,
        }
    }
}
