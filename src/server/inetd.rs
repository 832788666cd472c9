//! inetd mode (`postel inetd`): exactly one session on stdin/stdout, as launched by inetd, xinetd, systemd
//! (Accept=yes) or socat, spooled like the daemon's.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{SockaddrLike, SockaddrStorage, getpeername};

use crate::config::Config;
use crate::delivery::aliases::Aliases;
use crate::delivery::attempt::Deliverer;
use crate::delivery::runner;
use crate::privilege;
use crate::reloadable::Reloadable;
use crate::server::ServeError;
use crate::server::connection::{self, Client, Handoff, Port, Shared, Transport};
use crate::spool::{Spool, SpoolError};

/// stdin and stdout as one byte stream; reads wait at most the timeout.
struct Stdio {
    input: File,
    output: File,
    timeout: Duration,
}

impl Read for Stdio {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let timeout = PollTimeout::try_from(self.timeout).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.input.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, timeout)? == 0 {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.input.read(buf)
    }
}

impl Write for Stdio {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.output.flush()
    }
}

impl Transport for Stdio {
    fn set_read_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.timeout = timeout;
        Ok(())
    }
}

/// Runs one session on stdin/stdout, for the client on the other end of stdin.
pub fn run(config: Config) -> Result<(), ServeError> {
    let ip = client_address();
    let client = Client {
        ip,
        label: ip.map_or_else(|| "unknown".to_string(), |ip| ip.to_string()),
        trusted: ip.is_some_and(|ip| config.is_trusted(ip)),
        port: Port::Smtp,
    };
    let session_id = format!("i{}", std::process::id());
    run_on_stdio(config, &client, &session_id)
}

/// Runs one session on stdin/stdout for `client`, then sees the messages it queued delivered: by the daemon if
/// one runs, else by this process.
pub fn run_on_stdio(config: Config, client: &Client, session_id: &str) -> Result<(), ServeError> {
    let stdio_error = |e: io::Error| SpoolError::Io {
        path: "standard input".into(),
        source: e,
    };
    let input: OwnedFd = io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map_err(stdio_error)?;
    let output: OwnedFd = io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .map_err(stdio_error)?;
    let mut stdio = Stdio {
        input: input.into(),
        output: output.into(),
        timeout: Duration::from_secs(1),
    };
    serve_one(config, &mut stdio, client, session_id)
}

/// Runs one session on `transport` for `client` in this process (inetd mode, the customer's side of ATRN), then
/// sees the messages it queued delivered: by the daemon if one runs, else by this process.
pub fn serve_one(
    config: Config,
    transport: &mut dyn Transport,
    client: &Client,
    session_id: &str,
) -> Result<(), ServeError> {
    // The TLS key is read while the process may still be root; then it becomes the `user` account.
    let account = privilege::Account::configured(&config)?;
    let aliases = Arc::new(Reloadable::new(
        Aliases::configured(&config).map_err(ServeError::Aliases)?,
    ));
    let reloaded = super::load_reloaded(&config, Arc::clone(&aliases))?;
    privilege::settle(&config, account)?;
    let spool = Arc::new(Spool::open(&config.spool_dir)?);
    let deliverer = Arc::new(Deliverer::new(Arc::new(config), spool, aliases));
    let shared = Shared {
        config: Arc::clone(&deliverer.config),
        spool: Arc::clone(&deliverer.spool),
        reloaded,
        handoff: Handoff::Collect(Mutex::new(Vec::new())),
        shutting_down: AtomicBool::new(false),
        etrn_limit: Arc::default(),
        odmr: None,
    };
    connection::run(transport, client, session_id, &shared);
    let Handoff::Collect(queued) = shared.handoff else {
        unreachable!("a stdio session collects its messages");
    };
    let queued = queued.into_inner().unwrap_or_else(|p| p.into_inner());
    runner::hand_off(&deliverer, queued)?;
    Ok(())
}

/// The client's address: the peer of the socket on stdin, else TCPREMOTEIP (ucspi-tcp), else REMOTE_ADDR.
fn client_address() -> Option<IpAddr> {
    let from_socket = getpeername::<SockaddrStorage>(io::stdin().as_raw_fd())
        .ok()
        .and_then(|peer| match peer.family() {
            Some(nix::sys::socket::AddressFamily::Inet) => {
                peer.as_sockaddr_in().map(|a| IpAddr::V4(a.ip()))
            }
            Some(nix::sys::socket::AddressFamily::Inet6) => {
                peer.as_sockaddr_in6().map(|a| IpAddr::V6(a.ip()))
            }
            _ => None,
        });
    from_socket
        .or_else(|| {
            ["TCPREMOTEIP", "REMOTE_ADDR"]
                .iter()
                .find_map(|var| std::env::var(var).ok()?.parse().ok())
        })
        .map(crate::net::canonical)
}
