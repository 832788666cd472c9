//! `postel atrn`: the customer's side of On-Demand Mail Relay (RFC 2645). Connects to the provider, STARTTLS
//! with its certificate verified (`tls_ca_file` or the system's roots), AUTH with `smarthost_credentials`, and
//! ATRN; once the roles have turned, takes the mail as an SMTP server on the same connection, with the normal
//! session code, spooled and delivered here.

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};

use crate::auth::Credentials;
use crate::commands::{CliError, Exit};
use crate::config::Config;
use crate::delivery::relay::{self, split_port};
use crate::remote::client::{ClientError, Connection, Security, TlsMode};
use crate::server::connection::{Client, Port};
use crate::server::inetd;
use crate::tls;

/// The ODMR port RFC 2645 names.
pub const ODMR_PORT: u16 = 366;

/// Asks `server` ("host" or "host:port") for the mail of `domains` ("example.org,example.net") and takes it.
pub fn run(
    config: Config,
    server: &str,
    domains: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let domains = domains.split(',').map(str::trim).collect::<Vec<_>>();
    if let Some(foreign) = domains.iter().find(|d| !config.is_local_domain(d)) {
        return Err(CliError::new(
            Exit::Config,
            format!(
                "atrn: {foreign} is not in local_domains: its mail would have nowhere to go here"
            ),
        ));
    }
    let (host, port) = split_port(server, ODMR_PORT);
    let addr = resolve(&host, port)?;
    let security = security(&config, &host)?;
    let timeouts = relay::timeouts(&config);
    let refused = |e: ClientError| CliError::new(Exit::TempFail, format!("atrn: {server}: {e}"));
    let connection =
        Connection::open(addr, &config.hostname, &timeouts, &security).map_err(refused)?;
    let mut stream = match connection.atrn(&domains.join(",")) {
        Ok(stream) => stream,
        // RFC 2645's "453 You have no mail".
        Err(ClientError::Rejected { reply, .. }) if reply.code == 453 => {
            writeln!(out, "{server}: no mail waiting for {}", domains.join(","))?;
            return Ok(());
        }
        Err(e) => return Err(refused(e)),
    };
    let client = Client {
        ip: Some(crate::net::canonical(addr.ip())),
        label: addr.to_string(),
        trusted: false,
        port: Port::Smtp,
    };
    let session_id = format!("a{}", std::process::id());
    inetd::serve_one(config, &mut stream, &client, &session_id)?;
    Ok(())
}

/// STARTTLS required with a verified certificate, and the credentials: ATRN is for a logged-in customer only.
fn security(config: &Config, host: &str) -> Result<Security, CliError> {
    let unset = || {
        CliError::new(
            Exit::Config,
            "atrn: smarthost_credentials is not set: the provider wants a user and password",
        )
    };
    let path = config.smarthost_credentials.as_deref().ok_or_else(unset)?;
    let credentials =
        Credentials::load(path).map_err(|e| CliError::new(Exit::Config, format!("atrn: {e}")))?;
    let bad_tls = |e: tls::TlsError| CliError::new(Exit::Config, format!("atrn: {}", e.0));
    Ok(Security {
        mode: TlsMode::Required,
        config: tls::client::verified(config.tls_ca_file.as_deref()).map_err(bad_tls)?,
        name: tls::client::server_name(host).map_err(bad_tls)?,
        credentials: Some(credentials),
    })
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, CliError> {
    let failed = |why: String| CliError::new(Exit::TempFail, format!("atrn: {host}: {why}"));
    (host, port)
        .to_socket_addrs()
        .map_err(|e| failed(e.to_string()))?
        .next()
        .ok_or_else(|| failed("no address".to_string()))
}
