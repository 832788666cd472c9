//! Enhanced mail system status codes (RFC 3463): `class.subject.detail`, built from enums so that a code
//! that does not exist cannot be written.
//!
//! A [`Detail`] names one subject-and-detail pair of the registry (RFC 3463 §3 and the later RFCs that added
//! codes to it); a [`Class`] says whether it reports success, a temporary or a permanent failure. Together
//! they make a [`Status`]: `Status::new(Class::PermanentFailure, Detail::BadDestinationMailbox)` is `5.1.1`.
//! Replies to clients take the class from their reply code (see `Reply::new`); the delivery side says
//! which class it means (`Status::new`).

use std::fmt;

/// The first number: how the attempt ended (RFC 3463 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// 2.X.X: the action succeeded.
    Success = 2,
    /// 4.X.X: the action failed for now; the same request may succeed later.
    TransientFailure = 4,
    /// 5.X.X: the action failed and will fail again unless something changes.
    PermanentFailure = 5,
}

impl Class {
    /// The class that matches an SMTP reply code: 2yz, 4yz and 5yz replies have one; 1yz and 3yz do not.
    pub const fn of_reply_code(code: u16) -> Option<Class> {
        match code / 100 {
            2 => Some(Class::Success),
            4 => Some(Class::TransientFailure),
            5 => Some(Class::PermanentFailure),
            _ => None,
        }
    }
}

/// The second number: what the status is about (RFC 3463 §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// X.0.X
    Other = 0,
    /// X.1.X: the sender's or a recipient's address.
    Addressing = 1,
    /// X.2.X: the recipient's mailbox.
    Mailbox = 2,
    /// X.3.X: the receiving mail system.
    MailSystem = 3,
    /// X.4.X: the network or routing between systems.
    Network = 4,
    /// X.5.X: the mail delivery protocol (SMTP itself).
    Protocol = 5,
    /// X.6.X: the message content or its media.
    Content = 6,
    /// X.7.X: security or policy.
    Security = 7,
}

/// Defines [`Detail`] and its lookups from one list of `Variant = subject.detail, "RFC", "meaning";`.
macro_rules! details {
    ($($name:ident = $code:literal, $rfc:literal, $meaning:literal;)*) => {
        /// The subject and detail numbers of a registered status code, by the name the registry gives it.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Detail {
            $(#[doc = concat!("X.", stringify!($code), ": ", $meaning, " (", $rfc, ")")] $name,)*
        }

        impl Detail {
            /// Every registered code this server knows, in registry order.
            pub const ALL: &'static [Detail] = &[$(Detail::$name),*];

            /// What the status is about.
            pub const fn subject(self) -> Subject {
                match self {
                    $(Detail::$name => const { numbers(stringify!($code)).0 },)*
                }
            }

            /// The third number.
            pub const fn number(self) -> u16 {
                match self {
                    $(Detail::$name => const { numbers(stringify!($code)).1 },)*
                }
            }

            /// The registry's name for the code, in plain words.
            pub const fn meaning(self) -> &'static str {
                match self {
                    $(Detail::$name => $meaning,)*
                }
            }

            /// Where the code is defined, e.g. "RFC 3463 §3.3".
            pub const fn reference(self) -> &'static str {
                match self {
                    $(Detail::$name => $rfc,)*
                }
            }
        }
    };
}

/// Splits `"1.10"` (how the table writes a code) into its subject and detail; a bad code fails the build.
const fn numbers(code: &str) -> (Subject, u16) {
    let bytes = code.as_bytes();
    assert!(bytes.len() >= 3 && bytes[1] == b'.');
    let subject = match bytes[0] {
        b'0' => Subject::Other,
        b'1' => Subject::Addressing,
        b'2' => Subject::Mailbox,
        b'3' => Subject::MailSystem,
        b'4' => Subject::Network,
        b'5' => Subject::Protocol,
        b'6' => Subject::Content,
        b'7' => Subject::Security,
        _ => panic!("RFC 3463 has subjects 0 to 7"),
    };
    let (mut detail, mut i) = (0, 2);
    while i < bytes.len() {
        assert!(bytes[i].is_ascii_digit() && i < 5);
        detail = detail * 10 + (bytes[i] - b'0') as u16;
        i += 1;
    }
    (subject, detail)
}

details! {
    Undefined = 0.0, "RFC 3463 §3.1", "other or undefined status";

    OtherAddress = 1.0, "RFC 3463 §3.2", "other address status";
    BadDestinationMailbox = 1.1, "RFC 3463 §3.2", "bad destination mailbox address";
    BadDestinationSystem = 1.2, "RFC 3463 §3.2", "bad destination system address";
    BadDestinationSyntax = 1.3, "RFC 3463 §3.2", "bad destination mailbox address syntax";
    DestinationAmbiguous = 1.4, "RFC 3463 §3.2", "destination mailbox address ambiguous";
    DestinationValid = 1.5, "RFC 3463 §3.2", "destination address valid";
    DestinationMoved = 1.6, "RFC 3463 §3.2", "destination mailbox has moved, no forwarding address";
    BadSenderSyntax = 1.7, "RFC 3463 §3.2", "bad sender's mailbox address syntax";
    BadSenderSystem = 1.8, "RFC 3463 §3.2", "bad sender's system address";
    NullMx = 1.10, "RFC 7505 §3", "recipient address has null MX";

    OtherMailbox = 2.0, "RFC 3463 §3.3", "other or undefined mailbox status";
    MailboxDisabled = 2.1, "RFC 3463 §3.3", "mailbox disabled, not accepting messages";
    MailboxFull = 2.2, "RFC 3463 §3.3", "mailbox full";
    MessageExceedsMailboxLimit = 2.3, "RFC 3463 §3.3", "message length exceeds administrative limit";
    ListExpansionProblem = 2.4, "RFC 3463 §3.3", "mailing list expansion problem";

    OtherMailSystem = 3.0, "RFC 3463 §3.4", "other or undefined mail system status";
    MailSystemFull = 3.1, "RFC 3463 §3.4", "mail system full";
    NotAcceptingMessages = 3.2, "RFC 3463 §3.4", "system not accepting network messages";
    FeatureNotSupported = 3.3, "RFC 3463 §3.4", "system not capable of selected features";
    MessageTooBig = 3.4, "RFC 3463 §3.4", "message too big for system";
    MisconfiguredSystem = 3.5, "RFC 3463 §3.4", "system incorrectly configured";

    OtherNetwork = 4.0, "RFC 3463 §3.5", "other or undefined network or routing status";
    NoAnswer = 4.1, "RFC 3463 §3.5", "no answer from host";
    BadConnection = 4.2, "RFC 3463 §3.5", "bad connection";
    DirectoryFailure = 4.3, "RFC 3463 §3.5", "directory server failure";
    UnableToRoute = 4.4, "RFC 3463 §3.5", "unable to route";
    Congestion = 4.5, "RFC 3463 §3.5", "mail system congestion";
    RoutingLoop = 4.6, "RFC 3463 §3.5", "routing loop detected";
    DeliveryTimeExpired = 4.7, "RFC 3463 §3.5", "delivery time expired";

    OtherProtocol = 5.0, "RFC 3463 §3.6", "other or undefined protocol status";
    InvalidCommand = 5.1, "RFC 3463 §3.6", "invalid command";
    SyntaxError = 5.2, "RFC 3463 §3.6", "syntax error";
    TooManyRecipients = 5.3, "RFC 3463 §3.6", "too many recipients";
    InvalidArguments = 5.4, "RFC 3463 §3.6", "invalid command arguments";
    WrongProtocolVersion = 5.5, "RFC 3463 §3.6", "wrong protocol version";
    AuthLineTooLong = 5.6, "RFC 4954 §6", "authentication exchange line is too long";

    OtherContent = 6.0, "RFC 3463 §3.7", "other or undefined media error";
    MediaNotSupported = 6.1, "RFC 3463 §3.7", "media not supported";
    ConversionProhibited = 6.2, "RFC 3463 §3.7", "conversion required and prohibited";
    ConversionNotSupported = 6.3, "RFC 3463 §3.7", "conversion required but not supported";
    ConversionWithLoss = 6.4, "RFC 3463 §3.7", "conversion with loss performed";
    ConversionFailed = 6.5, "RFC 3463 §3.7", "conversion failed";
    NonAsciiAddress = 6.7, "RFC 6531", "non-ASCII addresses not permitted for that sender or recipient";

    OtherSecurity = 7.0, "RFC 3463 §3.8", "other or undefined security status";
    NotAuthorized = 7.1, "RFC 3463 §3.8", "delivery not authorized, message refused";
    ListExpansionProhibited = 7.2, "RFC 3463 §3.8", "mailing list expansion prohibited";
    SecurityConversionImpossible = 7.3, "RFC 3463 §3.8", "security conversion required but not possible";
    SecurityNotSupported = 7.4, "RFC 3463 §3.8", "security features not supported";
    CryptographicFailure = 7.5, "RFC 3463 §3.8", "cryptographic failure";
    AlgorithmNotSupported = 7.6, "RFC 3463 §3.8", "cryptographic algorithm not supported";
    IntegrityFailure = 7.7, "RFC 3463 §3.8", "message integrity failure";
    InvalidCredentials = 7.8, "RFC 4954 §6", "authentication credentials invalid";
    MechanismTooWeak = 7.9, "RFC 4954 §6", "authentication mechanism is too weak";
    EncryptionRequiredForMechanism = 7.11, "RFC 4954 §6", "encryption required for requested authentication mechanism";
}

/// One enhanced status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Status {
    pub class: Class,
    pub detail: Detail,
}

impl Status {
    pub const fn new(class: Class, detail: Detail) -> Status {
        Status { class, detail }
    }

    pub const fn subject(self) -> Subject {
        self.detail.subject()
    }

    /// Appends the code as it goes on the wire, e.g. `5.1.10`, without allocating.
    pub fn write_to(self, out: &mut Vec<u8>) {
        out.push(b'0' + self.class as u8);
        out.push(b'.');
        out.push(b'0' + self.subject() as u8);
        out.push(b'.');
        let number = self.detail.number();
        if number >= 100 {
            out.push(b'0' + (number / 100) as u8);
        }
        if number >= 10 {
            out.push(b'0' + (number / 10 % 10) as u8);
        }
        out.push(b'0' + (number % 10) as u8);
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.class as u8,
            self.subject() as u8,
            self.detail.number()
        )
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
