//! `postel check`: reads the configuration and every file it names (aliases, TLS certificate and key,
//! auth_users, the smarthost's CA file and credentials), reports each problem, and prints the effective
//! configuration.

use std::io::Write;

use chrono::Utc;

use crate::auth::{AuthUsers, Credentials, credentials};
use crate::config::Config;
use crate::delivery::aliases::Aliases;
use crate::privilege::{self, Account};
use crate::tls::{self, ServerTls};

/// Every problem found, one per line, or Ok after printing the configuration as TOML.
pub fn run(config: &Config, out: &mut dyn Write) -> Result<(), String> {
    let problems = problems(config);
    if let Some(warning) = privilege::root_warning(config) {
        log::warn!("{warning}");
    }
    if !problems.is_empty() {
        return Err(problems.join("\n"));
    }
    write!(out, "{}", config.to_toml()).map_err(|e| e.to_string())
}

fn problems(config: &Config) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = Account::configured(config) {
        problems.push(e.to_string());
    }
    if let Err(e) = Aliases::configured(config) {
        problems.push(e.to_string());
    }
    if let (Some(certificate), Some(key)) = (&config.tls_certificate, &config.tls_key) {
        match ServerTls::load(certificate, key) {
            Ok(tls) => {
                if let Err(e) = tls.check_validity(certificate, Utc::now()) {
                    problems.push(e.to_string());
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(path) = &config.auth_users {
        match AuthUsers::load(path) {
            Ok(users) => {
                for (domain, user) in &config.odmr_domains {
                    if !users.contains(user) {
                        problems.push(format!(
                            "odmr_domains: {domain} is held for {user}, who is not in {}: nobody can take its mail with ATRN",
                            path.display()
                        ));
                    }
                }
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if let Some(path) = &config.tls_ca_file
        && let Err(e) = tls::client::verified(Some(path))
    {
        problems.push(e.to_string());
    }
    if let Some(path) = &config.smarthost_credentials
        && let Err(e) = credentials::check_private(path).and_then(|()| Credentials::load(path))
    {
        problems.push(e);
    }
    problems
}
