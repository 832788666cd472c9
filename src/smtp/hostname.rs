//! Host and domain names: the one check of their syntax, for mail domains, configured names, ETRN nodes and
//! names looked up in the DNS. Labels are letters, digits and hyphens (not first or last), 1 to 63 octets
//! (RFC 1123 §2.1, RFC 1035 §2.3.1); what differs between uses is said by [`HostNameRules`].

/// What a use of host names allows beyond letters, digits and hyphens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostNameRules {
    /// Labels may hold non-ASCII characters (U-labels): domains of SMTPUTF8 addresses (RFC 6531).
    pub u_labels: bool,
    /// Labels may hold underscores: DNS names in general (`_service.example`) are not only host names.
    pub underscores: bool,
    /// The longest name, in octets.
    pub max_length: usize,
}

impl HostNameRules {
    /// The domain of a mail address: U-labels allowed (SMTPUTF8 decides whether the client may use them),
    /// up to the 255 octets of RFC 5321 §4.5.3.1.2.
    pub const MAIL_DOMAIN: HostNameRules = HostNameRules {
        u_labels: true,
        underscores: false,
        max_length: 255,
    };
    /// A host name of this server's own: configured names, ETRN nodes. 253 characters are the 255 octets a
    /// name may take in a DNS message (RFC 1035 §2.3.4).
    pub const HOST_NAME: HostNameRules = HostNameRules {
        u_labels: false,
        underscores: false,
        max_length: 253,
    };
    /// A name to look up in the DNS.
    pub const DNS_NAME: HostNameRules = HostNameRules {
        u_labels: false,
        underscores: true,
        max_length: 253,
    };
}

/// Why a name is not a host name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostNameError {
    Empty,
    TooLong,
    /// An empty label (a leading, trailing or double dot) or one longer than 63 octets.
    LabelLength,
    /// A character the rules do not allow, or a hyphen at the start or end of a label.
    BadCharacter,
    /// A non-ASCII character where only ASCII is allowed.
    NotAscii,
}

impl HostNameError {
    pub fn describe(self) -> &'static str {
        match self {
            HostNameError::Empty => "the name is empty",
            HostNameError::TooLong => "the name is too long",
            HostNameError::LabelLength => "a label is empty or longer than 63 octets",
            HostNameError::BadCharacter => {
                "a label holds a character other than letters, digits and inner hyphens"
            }
            HostNameError::NotAscii => "the name is not ASCII",
        }
    }
}

/// Checks that `name` is a host name under `rules`.
pub fn check_host_name(name: &str, rules: HostNameRules) -> Result<(), HostNameError> {
    if name.is_empty() {
        return Err(HostNameError::Empty);
    }
    if !rules.u_labels && !name.is_ascii() {
        return Err(HostNameError::NotAscii);
    }
    if name.len() > rules.max_length {
        return Err(HostNameError::TooLong);
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(HostNameError::LabelLength);
        }
        let allowed = |c: char| {
            c.is_ascii_alphanumeric()
                || c == '-'
                || (c == '_' && rules.underscores)
                || (!c.is_ascii() && rules.u_labels)
        };
        if label.starts_with('-') || label.ends_with('-') || !label.chars().all(allowed) {
            return Err(HostNameError::BadCharacter);
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "hostname_tests.rs"]
mod tests;
