//! TLS with rustls (ring as the crypto provider) over the blocking streams the rest of the server uses: the
//! server's certificate and key, and the configurations for talking TLS to other servers.

pub mod client;
pub mod server;
pub mod stream;
mod x509;

use std::fmt;

pub use server::{Certificate, ServerTls};
pub use stream::Stream;

/// A TLS file problem, worded for the admin with the file it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsError(pub String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

/// What a finished handshake agreed on, for logs and the Received header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TlsInfo {
    /// "TLSv1.3" or "TLSv1.2".
    pub version: &'static str,
    /// The cipher suite's IANA-style name, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher: &'static str,
}

impl TlsInfo {
    /// Reads a connection whose handshake is complete.
    pub fn of(connection: &rustls::CommonState) -> TlsInfo {
        let version = match connection.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        let cipher = connection
            .negotiated_cipher_suite()
            .and_then(|suite| suite.suite().as_str())
            .unwrap_or("unknown");
        TlsInfo { version, cipher }
    }
}

impl fmt::Display for TlsInfo {
    /// As Postfix writes it into Received: "TLSv1.3 with cipher TLS13_AES_256_GCM_SHA384".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} with cipher {}", self.version, self.cipher)
    }
}
