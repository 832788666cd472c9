//! The daemon (`postel serve`) and inetd mode (`postel inetd`): sockets, threads and signals around the protocol.

pub mod connection;
pub mod inetd;
pub mod listener;
pub mod pace;
pub mod policy;
pub mod pool;
pub mod reload;
pub mod send;
pub mod submission;

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_channel::RecvTimeoutError;
use log::{info, warn};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, bind as bind_socket, setsockopt,
    socket, sockopt,
};

use crate::auth::AuthUsersError;
use crate::config::Config;
use crate::delivery::aliases::{AliasError, Aliases};
use crate::delivery::attempt::{Deliverer, SetupError};
use crate::delivery::odmr::Odmr;
use crate::delivery::scheduler::Scheduler;
use crate::privilege::{self, Account, PrivilegeError};
use crate::reloadable::Reloadable;
use crate::spool::{Queued, Scan, Spool, SpoolError, SpoolLock};
use crate::tls::TlsError;
use connection::{Handoff, Port, Shared};
use reload::Reloaded;

/// Why the server could not start.
#[derive(Debug)]
pub enum ServeError {
    Spool(SpoolError),
    Listen(String, std::io::Error),
    Setup(&'static str, std::io::Error),
    Aliases(AliasError),
    Tls(TlsError),
    AuthUsers(AuthUsersError),
    Privilege(PrivilegeError),
}

impl fmt::Display for ServeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServeError::Spool(SpoolError::Busy) => f.write_str(
                "another postel process is already serving this spool (its lock file is held)",
            ),
            ServeError::Spool(e) => write!(f, "{e}"),
            ServeError::Listen(addr, e) => write!(f, "cannot listen on {addr}: {e}"),
            ServeError::Setup(what, e) => write!(f, "cannot {what}: {e}"),
            ServeError::Aliases(e) => write!(f, "{e}"),
            ServeError::Tls(e) => write!(f, "{e}"),
            ServeError::AuthUsers(e) => write!(f, "{e}"),
            ServeError::Privilege(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ServeError {}

impl From<SpoolError> for ServeError {
    fn from(e: SpoolError) -> ServeError {
        ServeError::Spool(e)
    }
}

impl From<PrivilegeError> for ServeError {
    fn from(e: PrivilegeError) -> ServeError {
        ServeError::Privilege(e)
    }
}

impl From<SetupError> for ServeError {
    fn from(e: SetupError) -> ServeError {
        match e {
            SetupError::Aliases(e) => ServeError::Aliases(e),
            SetupError::Spool(e) => ServeError::Spool(e),
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT, then lets sessions in flight finish (up to `shutdown_grace`).
/// SIGHUP re-reads the aliases file, the TLS files and `auth_users`.
///
/// Started as root, it reads the files and binds the sockets only root may, then becomes the `user` account
/// before any thread starts (see doc/security.md).
pub fn serve(config: Config) -> Result<(), ServeError> {
    let config = Arc::new(config);
    let account = Account::configured(&config)?;
    let aliases = Aliases::configured(&config).map_err(ServeError::Aliases)?;
    let reloaded = load_reloaded(&config, Arc::new(Reloadable::new(aliases)))?;
    let signals = block_signals()?;
    let bound = bind(&config)?;
    privilege::settle(&config, account)?;
    let (spool, _lock, scan) = open_spool(&config)?;
    let queued = scan.messages.len();
    let delivery = start_delivery(&config, &spool, &reloaded.aliases, scan.messages)?;
    // The ODMR service shares the workers' deliverer: its relay is where a turned connection is lent.
    let odmr = delivery
        .as_ref()
        .filter(|_| !config.odmr_listen.is_empty())
        .map(|(scheduler, deliverer)| Odmr::new(Arc::clone(deliverer), scheduler.handle()));
    let scheduler = delivery.map(|(scheduler, _)| scheduler);
    let shared = Arc::new(Shared {
        config: Arc::clone(&config),
        spool,
        reloaded,
        handoff: scheduler
            .as_ref()
            .map_or(Handoff::Hold, |s| Handoff::Scheduler(s.handle())),
        shutting_down: AtomicBool::new(false),
        etrn_limit: Arc::default(),
        odmr,
    });
    let (done_tx, done_rx) = crossbeam_channel::bounded::<()>(0);
    let entrance = pool::start(
        config.workers,
        config.workers + config.accept_queue,
        Arc::clone(&shared),
        done_tx,
    )
    .map_err(|e| ServeError::Setup("start the session workers", e))?;
    let listeners = listen(bound)?;
    log_ready(&config, queued);

    let doorbell = || {
        if let Some(scheduler) = &scheduler {
            scheduler.handle().ring();
        }
    };
    let reload = || shared.reloaded.reload(&config);
    listener::run(&config, listeners, &signals, &entrance, &doorbell, &reload)
        .map_err(|e| ServeError::Setup("accept connections", e))?;
    shared.shutting_down.store(true, Ordering::Relaxed);
    drop(entrance);
    wait_for_sessions(&done_rx, config.shutdown_grace);
    if let Some(scheduler) = scheduler {
        scheduler.stop();
    }
    Ok(())
}

/// Blocks the stop signals, SIGUSR1 (the scheduler's doorbell) and SIGHUP (reload) before any
/// thread starts, so that every thread inherits the mask and the signals queue up on the
/// descriptor the listener polls.
fn block_signals() -> Result<SignalFd, ServeError> {
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGUSR1);
    signals.add(Signal::SIGHUP);
    signals
        .thread_block()
        .map_err(|e| ServeError::Setup("block signals", e.into()))?;
    SignalFd::with_flags(&signals, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| ServeError::Setup("create a signal descriptor", e.into()))
}

/// Takes the spool's lock (held until the returned guard drops) and repairs the spool; returns it
/// with the group-commit thread running, and the messages waiting in it.
fn open_spool(config: &Config) -> Result<(Arc<Spool>, SpoolLock, Scan), ServeError> {
    let mut spool = Spool::open(&config.spool_dir)?;
    let lock = spool.lock()?;
    let scan = spool.scan(true)?;
    for problem in &scan.problems {
        warn!("spool: {problem}");
    }
    spool.start_group_commit(config.spool_segment_age)?;
    Ok((Arc::new(spool), lock, scan))
}

/// Starts the scheduler and its delivery workers with the messages already waiting; returns it with the
/// workers' deliverer, or None when `delivery_workers = 0`.
fn start_delivery(
    config: &Arc<Config>,
    spool: &Arc<Spool>,
    aliases: &Arc<Reloadable<Aliases>>,
    waiting: Vec<Queued>,
) -> Result<Option<(Scheduler, Arc<Deliverer>)>, ServeError> {
    if config.delivery_workers == 0 {
        warn!("delivery_workers = 0: accepted mail is held in the queue, nothing is delivered");
        return Ok(None);
    }
    let deliverer = Arc::new(Deliverer::new(
        Arc::clone(config),
        Arc::clone(spool),
        Arc::clone(aliases),
    ));
    let scheduler = Scheduler::start(Arc::clone(&deliverer), waiting)
        .map_err(|e| ServeError::Setup("start the delivery workers", e))?;
    Ok(Some((scheduler, deliverer)))
}

/// A socket bound to each configured address (port 25 needs root), with the kind of port it is, not listening
/// yet: clients are refused, not kept waiting, until the server is ready.
fn bind(config: &Config) -> Result<Vec<(OwnedFd, Port, SocketAddr)>, ServeError> {
    let ports = [
        (&config.listen, Port::Smtp),
        (&config.submission_listen, Port::Submission),
        (&config.submissions_listen, Port::Submissions),
        (&config.odmr_listen, Port::Odmr),
    ];
    ports
        .into_iter()
        .flat_map(|(addresses, port)| addresses.iter().map(move |addr| (*addr, port)))
        .map(|(addr, port)| {
            let failed = |e: nix::Error| ServeError::Listen(addr.to_string(), e.into());
            let family = if addr.is_ipv4() {
                AddressFamily::Inet
            } else {
                AddressFamily::Inet6
            };
            let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
            let socket = socket(family, SockType::Stream, flags, None).map_err(failed)?;
            setsockopt(&socket, sockopt::ReuseAddr, &true).map_err(failed)?;
            bind_socket(socket.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(failed)?;
            Ok((socket, port, addr))
        })
        .collect()
}

/// Starts listening on the bound sockets.
fn listen(
    bound: Vec<(OwnedFd, Port, SocketAddr)>,
) -> Result<Vec<(mio::net::TcpListener, Port)>, ServeError> {
    bound
        .into_iter()
        .map(|(socket, port, addr)| {
            nix::sys::socket::listen(&socket, Backlog::MAXCONN)
                .map_err(|e| ServeError::Listen(addr.to_string(), e.into()))?;
            let listener = std::net::TcpListener::from(socket);
            Ok((mio::net::TcpListener::from_std(listener), port))
        })
        .collect()
}

fn log_ready(config: &Config, queued: usize) {
    let listening: Vec<String> = config
        .listen
        .iter()
        .map(|a| a.to_string())
        .chain(
            config
                .submission_listen
                .iter()
                .map(|a| format!("{a} (submission)")),
        )
        .chain(
            config
                .submissions_listen
                .iter()
                .map(|a| format!("{a} (submissions)")),
        )
        .chain(config.odmr_listen.iter().map(|a| format!("{a} (odmr)")))
        .collect();
    info!(
        "postel ready: listening on {}, hostname {}, spool {}, {queued} messages queued",
        listening.join(" "),
        config.hostname,
        config.spool_dir.display(),
    );
}

/// The files read before anything else starts (the TLS key may be readable only by root), and again on SIGHUP;
/// `aliases`, loaded already, is shared with the deliverer.
pub fn load_reloaded(
    config: &Config,
    aliases: Arc<Reloadable<Aliases>>,
) -> Result<Reloaded, ServeError> {
    Ok(Reloaded {
        aliases,
        tls: Reloadable::new(reload::load_tls(config).map_err(ServeError::Tls)?),
        auth_users: Reloadable::new(
            reload::load_auth_users(config).map_err(ServeError::AuthUsers)?,
        ),
    })
}

/// Waits until every worker has finished its session, or the grace time is over.
fn wait_for_sessions(done: &crossbeam_channel::Receiver<()>, grace: Duration) {
    match done.recv_timeout(grace) {
        Err(RecvTimeoutError::Disconnected) | Ok(()) => info!("all sessions finished; stopping"),
        Err(RecvTimeoutError::Timeout) => {
            warn!(
                "sessions still open after the shutdown grace of {}s; stopping anyway",
                grace.as_secs()
            )
        }
    }
}
