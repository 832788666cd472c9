//! The client side, for relaying: TLS to an MX without checking its certificate (what MX delivery does in
//! practice: most MX certificates do not name the MX), and TLS to a smarthost with the certificate and host
//! name verified against the system's roots or a given CA file.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::TlsError;

/// A configuration that encrypts but accepts any certificate: the handshake's signatures are still checked,
/// so the session key is bound to the certificate shown, but nobody vouches for that certificate.
pub fn unverified() -> Arc<ClientConfig> {
    let algorithms = provider().signature_verification_algorithms;
    let config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(algorithms)))
        .with_no_client_auth();
    Arc::new(config)
}

/// A configuration that verifies the server's certificate and name: against the certificates in `ca_file`
/// when given, else the system's trusted roots.
pub fn verified(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| TlsError(format!("{}: cannot read: {e}", path.display())))?;
            for certificate in CertificateDer::pem_slice_iter(&pem) {
                let certificate = certificate.map_err(|e| {
                    TlsError(format!(
                        "{}: not a PEM certificate file: {e}",
                        path.display()
                    ))
                })?;
                roots.add(certificate).map_err(|e| {
                    TlsError(format!("{}: unusable CA certificate: {e}", path.display()))
                })?;
            }
            if roots.is_empty() {
                return Err(TlsError(format!(
                    "{}: no CERTIFICATE block in the file",
                    path.display()
                )));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError(format!(
                    "no trusted root certificates found on this system ({}); set tls_ca_file",
                    found
                        .errors
                        .first()
                        .map_or("none installed".to_string(), |e| e.to_string())
                )));
            }
        }
    }
    let config = ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name a certificate must carry to be `host`'s: a DNS name, or an IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|_| TlsError(format!("'{host}' is not a host name TLS can verify")))
}

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[derive(Debug)]
struct AnyCertificate(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
