//! The files the daemon reads at start and again on SIGHUP: the aliases file, the TLS certificate and key, and
//! `auth_users`.
//! A file that fails to load on reload keeps the old contents in force and says why.
//!
//! Loading goes through [`load_tls`] alone: under the `user` account the privileged helper reads the files (the
//! key may be readable by root alone) and hands their contents over.

use std::sync::Arc;

use chrono::Utc;
use log::{info, warn};

use crate::auth::{AuthUsers, AuthUsersError};
use crate::config::Config;
use crate::delivery::aliases::Aliases;
use crate::privilege::helper;
use crate::reloadable::Reloadable;
use crate::tls::{ServerTls, TlsError};

/// The certificate and key of the configuration, or None when TLS is not configured. An expired certificate
/// loads (clients decide what to do with it) and is warned about.
pub fn load_tls(config: &Config) -> Result<Option<ServerTls>, TlsError> {
    // Under the `user` account the helper reads the files again (and the aliases, which say what commands it runs).
    let read_by_helper = match helper::installed() {
        Some(helper) => helper.reload().map_err(TlsError)?,
        None => None,
    };
    let (Some(certificate), Some(key)) = (&config.tls_certificate, &config.tls_key) else {
        return Ok(None);
    };
    let tls = match read_by_helper {
        Some(files) => ServerTls::from_pem(certificate, &files.certificate, key, &files.key)?,
        None => ServerTls::load(certificate, key)?,
    };
    if let Err(e) = tls.check_validity(certificate, Utc::now()) {
        warn!("tls: {e}");
    }
    Ok(Some(tls))
}

/// The users of the configuration's `auth_users` file; none when it is not set.
pub fn load_auth_users(config: &Config) -> Result<AuthUsers, AuthUsersError> {
    match &config.auth_users {
        Some(path) => AuthUsers::load(path),
        None => Ok(AuthUsers::empty()),
    }
}

/// What SIGHUP refreshes.
pub struct Reloaded {
    /// Shared with the delivery workers.
    pub aliases: Arc<Reloadable<Aliases>>,
    pub tls: Reloadable<Option<ServerTls>>,
    pub auth_users: Reloadable<AuthUsers>,
}

impl Reloaded {
    /// Re-reads every file; each one that fails keeps its old contents.
    pub fn reload(&self, config: &Config) {
        match Aliases::configured(config) {
            Ok(aliases) => {
                if let Some(path) = &config.aliases {
                    info!("reload: {}: {} aliases", path.display(), aliases.len());
                }
                self.aliases.set(aliases);
            }
            Err(e) => warn!("reload: keeping the old aliases: {e}"),
        }
        match load_tls(config) {
            Ok(tls) => {
                if let Some(tls) = &tls {
                    info!(
                        "reload: TLS certificate valid until {}",
                        tls.certificate.not_after
                    );
                }
                self.tls.set(tls);
            }
            Err(e) => warn!("reload: keeping the old TLS certificate and key: {e}"),
        }
        match load_auth_users(config) {
            Ok(users) => {
                if config.auth_users.is_some() {
                    info!("reload: {} users may authenticate", users.len());
                }
                self.auth_users.set(users);
            }
            Err(e) => warn!("reload: keeping the old auth_users: {e}"),
        }
    }
}
