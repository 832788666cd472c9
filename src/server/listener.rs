//! The accept loop: one mio Poll over every listening socket and the signal descriptor. Accepted connections go
//! to the worker pool over a bounded channel; when it is full, or one client holds too many connections, the
//! newcomer gets 421 and is closed at once.

use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crossbeam_channel::TrySendError;
use log::{info, warn};
use mio::net::TcpListener;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;

use crate::config::Config;
use crate::net::canonical;
use crate::server::connection::{Port, refuse};
use crate::server::pool::{ClientCounts, Entrance, Incoming, Occupancy};
use crate::smtp::Detail;

const SIGNALS: Token = Token(usize::MAX);

/// Accepts connections until SIGTERM or SIGINT arrives on `signals`; then returns, closing the listeners.
/// SIGUSR1 (a request from `postel queue` or `postel sendmail`) calls `doorbell`; SIGHUP calls `reload`.
pub fn run(
    config: &Config,
    listeners: Vec<(TcpListener, Port)>,
    signals: &SignalFd,
    pool: &Entrance,
    doorbell: &dyn Fn(),
    reload: &dyn Fn(),
) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut listeners = listeners;
    for (n, (listener, _)) in listeners.iter_mut().enumerate() {
        poll.registry()
            .register(listener, Token(n), Interest::READABLE)?;
    }
    poll.registry().register(
        &mut SourceFd(&signals.as_raw_fd()),
        SIGNALS,
        Interest::READABLE,
    )?;
    let counts = Arc::new(ClientCounts::default());
    let occupancy = Arc::new(Occupancy::default());
    let mut events = Events::with_capacity(64);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == SIGNALS {
                while let Ok(Some(signal)) = signals.read_signal() {
                    if signal.ssi_signo == Signal::SIGUSR1 as u32 {
                        doorbell();
                        continue;
                    }
                    if signal.ssi_signo == Signal::SIGHUP as u32 {
                        info!(
                            "received SIGHUP: reading the aliases, the TLS files and auth_users again"
                        );
                        reload();
                        continue;
                    }
                    info!(
                        "received signal {}: no longer accepting connections",
                        signal.ssi_signo
                    );
                    return Ok(());
                }
                continue;
            }
            if let Some((listener, port)) = listeners.get(event.token().0) {
                accept_all(config, listener, *port, &counts, &occupancy, pool);
            }
        }
    }
}

/// Accepts every connection waiting on `listener` (until WouldBlock) and hands each to the pool.
fn accept_all(
    config: &Config,
    listener: &TcpListener,
    port: Port,
    counts: &Arc<ClientCounts>,
    occupancy: &Arc<Occupancy>,
    pool: &Entrance,
) {
    loop {
        let (mut stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of file descriptors or a connection reset before accept: log and wait for the next event.
                warn!("accept failed: {e}");
                return;
            }
        };
        let Some(occupant) = occupancy.try_enter(config.workers + config.accept_queue) else {
            warn!("refused {peer}: all session workers are busy");
            refuse(
                &mut stream,
                Detail::NotAcceptingMessages,
                "All session workers are busy, try again later",
                &config.hostname,
            );
            continue;
        };
        let ip = canonical(peer.ip());
        let slot = if config.is_trusted(ip) {
            None
        } else {
            match counts.try_take(ip, config.max_connections_per_client) {
                Some(slot) => Some(slot),
                None => {
                    warn!("refused {peer}: too many connections from this address");
                    refuse(
                        &mut stream,
                        Detail::NotAcceptingMessages,
                        "Too many connections from your address, try again later",
                        &config.hostname,
                    );
                    continue;
                }
            }
        };
        let incoming = Incoming {
            stream: stream.into(),
            peer,
            port,
            slot,
            occupant,
        };
        // The channel holds as many as the occupancy admits, so it has room; it fails only at shutdown.
        if let Err(TrySendError::Full(refused) | TrySendError::Disconnected(refused)) =
            pool.try_send(incoming)
        {
            warn!("refused {}: the session workers are gone", refused.peer);
        }
    }
}
