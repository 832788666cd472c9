//! The server side: the certificate chain and key from PEM files, checked and turned into a rustls
//! configuration that every listener shares.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{TlsError, x509};

/// Sessions remembered for resumption (TLS 1.2 ids and TLS 1.3 stateful tickets).
const SESSION_CACHE: usize = 4096;

/// What the certificate says about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Certificate {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// A loaded certificate and key, ready for handshakes.
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub certificate: Certificate,
}

impl ServerTls {
    /// Reads the certificate chain (PEM, the server's certificate first) and its key (PKCS#8, RSA or EC, in
    /// PEM) and checks that they belong together. Errors name the file.
    pub fn load(certificate: &Path, key: &Path) -> Result<ServerTls, TlsError> {
        ServerTls::from_pem(certificate, &read(certificate)?, key, &read(key)?)
    }

    /// As [`ServerTls::load`], from the files' contents (read by someone who may read them); the paths name them
    /// in errors.
    pub fn from_pem(
        certificate: &Path,
        cert_pem: &[u8],
        key: &Path,
        key_pem: &[u8],
    ) -> Result<ServerTls, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                TlsError(format!(
                    "{}: not a PEM certificate chain: {e}",
                    certificate.display()
                ))
            })?;
        let Some(first) = chain.first() else {
            return Err(TlsError(format!(
                "{}: no CERTIFICATE block in the file",
                certificate.display()
            )));
        };
        let (not_before, not_after) = x509::validity(first).ok_or_else(|| {
            TlsError(format!(
                "{}: the first certificate cannot be read",
                certificate.display()
            ))
        })?;
        let private_key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            TlsError(format!(
                "{}: no private key (PKCS#8, RSA or EC, in PEM) in the file: {e}",
                key.display()
            ))
        })?;
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, private_key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => TlsError(format!(
                    "{}: the key does not match the certificate in {}",
                    key.display(),
                    certificate.display()
                )),
                e => TlsError(format!("{}: unusable key: {e}", key.display())),
            })?;
        config.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
        // The server's order of cipher suites (strongest first) wins over the client's.
        config.ignore_client_order = true;
        config.ticketer = rustls::crypto::ring::Ticketer::new()
            .map_err(|e| TlsError(format!("cannot set up TLS session tickets: {e}")))?;
        Ok(ServerTls {
            config: Arc::new(config),
            certificate: Certificate {
                not_before,
                not_after,
            },
        })
    }

    /// Whether the certificate is valid at `now`; Err says since or until when it is not.
    pub fn check_validity(&self, certificate: &Path, now: DateTime<Utc>) -> Result<(), TlsError> {
        let Certificate {
            not_before,
            not_after,
        } = self.certificate;
        if now > not_after {
            Err(TlsError(format!(
                "{}: the certificate expired on {}",
                certificate.display(),
                not_after.format("%Y-%m-%d %H:%M UTC")
            )))
        } else if now < not_before {
            Err(TlsError(format!(
                "{}: the certificate is not valid before {}",
                certificate.display(),
                not_before.format("%Y-%m-%d %H:%M UTC")
            )))
        } else {
            Ok(())
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    fs::read(path).map_err(|e| TlsError(format!("{}: cannot read: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::TempDir;
    use chrono::TimeZone;

    /// A self-signed certificate for `name` with its key, written as PEM files in `dir`.
    fn write_pair(
        dir: &Path,
        name: &str,
        key: &rcgen::KeyPair,
    ) -> (std::path::PathBuf, std::path::PathBuf) {
        let mut params = rcgen::CertificateParams::new(vec![name.into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2024, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 1, 1);
        let certificate = params.self_signed(key).unwrap();
        let (cert_path, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        fs::write(&cert_path, certificate.pem()).unwrap();
        fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    #[test]
    fn a_matching_pair_loads_with_its_validity() {
        let dir = TempDir::new("tls-load");
        for algorithm in [
            &rcgen::PKCS_ECDSA_P256_SHA256,
            &rcgen::PKCS_ED25519,
            &rcgen::PKCS_RSA_SHA256,
        ] {
            let key = match rcgen::KeyPair::generate_for(algorithm) {
                Ok(key) => key,
                // ring cannot generate RSA keys; openssl-made RSA keys are covered by the integration tests.
                Err(_) => continue,
            };
            let (cert, key_path) = write_pair(&dir.0, "mx.example.test", &key);
            let tls = ServerTls::load(&cert, &key_path).unwrap();
            assert_eq!(
                tls.certificate.not_after,
                Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
            );
            let now = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
            assert_eq!(tls.check_validity(&cert, now), Ok(()));
            let later = Utc.with_ymd_and_hms(2031, 1, 1, 0, 0, 0).unwrap();
            let error = tls.check_validity(&cert, later).unwrap_err().0;
            assert!(
                error.ends_with("the certificate expired on 2030-01-01 00:00 UTC"),
                "{error}"
            );
        }
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = TempDir::new("tls-errors");
        let key_a = rcgen::KeyPair::generate().unwrap();
        let key_b = rcgen::KeyPair::generate().unwrap();
        let (cert_a, key_a_path) = write_pair(&dir.0, "a.example.test", &key_a);
        let (_, key_b_path) = write_pair(&dir.0, "b.example.test", &key_b);
        let missing = dir.0.join("missing.pem");
        let garbage = dir.0.join("garbage.pem");
        fs::write(&garbage, "hello\n").unwrap();
        let error = |cert: &Path, key: &Path| ServerTls::load(cert, key).unwrap_err().0;
        assert!(
            error(&missing, &key_a_path)
                .starts_with(&format!("{}: cannot read:", missing.display()))
        );
        assert!(
            error(&cert_a, &missing).starts_with(&format!("{}: cannot read:", missing.display()))
        );
        assert_eq!(
            error(&garbage, &key_a_path),
            format!("{}: no CERTIFICATE block in the file", garbage.display())
        );
        assert!(
            error(&cert_a, &garbage).starts_with(&format!("{}: no private key", garbage.display()))
        );
        assert!(
            error(&cert_a, &cert_a).starts_with(&format!("{}: no private key", cert_a.display()))
        );
        assert_eq!(
            error(&cert_a, &key_b_path),
            format!(
                "{}: the key does not match the certificate in {}",
                key_b_path.display(),
                cert_a.display()
            )
        );
    }
}
