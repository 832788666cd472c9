//! The fixed pool of session workers: each takes one accepted connection at a time from a bounded channel and
//! runs its session with blocking I/O. A session that fails or panics never takes its worker with it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use log::{error, warn};

use crate::server::connection::{self, Client, Port, Shared};
use crate::smtp::Detail;
use crate::tls::Stream;

/// An accepted connection on its way to a worker.
pub struct Incoming {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    /// The kind of port it came to.
    pub port: Port,
    /// Holds the client's place in the per-client count until the connection ends.
    pub slot: Option<ClientSlot>,
    /// Holds the connection's place in the pool until it ends.
    pub occupant: Occupant,
}

/// Connections handed to the pool and not finished yet: those being served and those waiting for a worker.
/// Counting them, rather than asking whether the channel has room, admits a burst of connections while the
/// idle workers are still waking up to take them.
#[derive(Default)]
pub struct Occupancy(AtomicUsize);

impl Occupancy {
    /// Takes a place unless `limit` connections are already in the pool. Only the listener thread enters, so
    /// the check and the increment cannot race with another entry.
    pub fn try_enter(self: &Arc<Self>, limit: usize) -> Option<Occupant> {
        if self.0.load(Ordering::Acquire) >= limit {
            return None;
        }
        self.0.fetch_add(1, Ordering::AcqRel);
        Some(Occupant(Arc::clone(self)))
    }
}

/// One connection's place in the pool, given back when dropped.
pub struct Occupant(Arc<Occupancy>);

impl Drop for Occupant {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Open connections per untrusted client address.
#[derive(Default)]
pub struct ClientCounts(Mutex<HashMap<IpAddr, usize>>);

impl ClientCounts {
    /// Takes a place for `ip` unless it already holds `limit` connections.
    pub fn try_take(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<ClientSlot> {
        let mut counts = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = counts.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(ClientSlot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

/// One connection's place in [`ClientCounts`], given back when dropped.
pub struct ClientSlot {
    counts: Arc<ClientCounts>,
    ip: IpAddr,
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self
            .counts
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Starts `workers` threads serving connections from `incoming`. Every thread holds a clone of `done`, so the
/// receiving end sees the channel close when the last worker has finished.
pub fn start(
    workers: usize,
    incoming: Receiver<Incoming>,
    shared: Arc<Shared>,
    done: Sender<()>,
) -> std::io::Result<()> {
    let sessions = Arc::new(AtomicU64::new(0));
    for n in 0..workers {
        let (incoming, shared, done, sessions) = (
            incoming.clone(),
            Arc::clone(&shared),
            done.clone(),
            Arc::clone(&sessions),
        );
        thread::Builder::new()
            .name(format!("session-{n}"))
            .spawn(move || {
                for connection in incoming.iter() {
                    let session_id = format!("s{}", sessions.fetch_add(1, Ordering::Relaxed) + 1);
                    let served = catch_unwind(AssertUnwindSafe(|| serve(connection, &session_id, &shared)));
                    if served.is_err() {
                        error!("{session_id}: the session failed on an internal error; the worker goes on");
                    }
                }
                drop(done);
            })?;
    }
    Ok(())
}

fn serve(connection: Incoming, session_id: &str, shared: &Shared) {
    let Incoming {
        mut stream,
        peer,
        port,
        slot,
        occupant,
    } = connection;
    if let Err(e) = stream
        .set_nonblocking(false)
        .and_then(|()| stream.set_nodelay(true))
    {
        warn!("{session_id}: cannot set up the connection from {peer}: {e}");
        return;
    }
    if shared.shutting_down.load(Ordering::Relaxed) {
        connection::refuse(
            &mut stream,
            Detail::NotAcceptingMessages,
            "Service shutting down, try again later",
            &shared.config.hostname,
        );
        return;
    }
    let client = Client {
        ip: Some(crate::net::canonical(peer.ip())),
        label: peer.to_string(),
        trusted: shared.config.is_trusted(peer.ip()),
        port,
    };
    let mut stream = Stream::Plain(stream);
    match connection::run(&mut stream, &client, session_id, shared) {
        Some(turned) => turned.provide(stream, peer, session_id),
        // The session is over and this is the connection's only descriptor: dropping it closes it. The shutdown
        // in `Stream::close` is for callers that keep a stream after closing it (the relay client).
        None if matches!(stream, Stream::Plain(_)) => drop(stream),
        None => stream.close(),
    }
    drop((slot, occupant));
}
