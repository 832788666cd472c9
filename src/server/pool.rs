//! The fixed pool of session workers: each takes one accepted connection at a time from a bounded channel and
//! runs its session with blocking I/O. A session that fails or panics never takes its worker with it.
//!
//! An idle worker waits parked, not in the channel's blocking receive: that receive spins and yields the CPU
//! several times before it sleeps, and with a hundred workers, most of them idle, those turns cost the sessions'
//! CPU. The listener wakes the worker that went idle last, whose stack is still in the caches.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, Thread};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
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

/// The way into the pool: connections wait in a channel of `capacity`, and each one sent wakes an idle worker.
/// Dropping it closes the pool: the workers serve what is waiting, then end.
pub struct Entrance {
    connections: Option<Sender<Incoming>>,
    idle: Arc<Idle>,
}

impl Entrance {
    /// Hands a connection to the pool; it fails when the channel is full or the workers are gone.
    pub fn try_send(&self, incoming: Incoming) -> Result<(), TrySendError<Incoming>> {
        match &self.connections {
            Some(connections) => connections.try_send(incoming)?,
            None => return Err(TrySendError::Disconnected(incoming)),
        }
        self.idle.wake_one();
        Ok(())
    }
}

impl Drop for Entrance {
    fn drop(&mut self) {
        // The channel closes first, so that every worker woken here finds it closed once it is empty.
        drop(self.connections.take());
        self.idle.wake_all();
    }
}

/// The parked workers, the most recently idle last. bench/floor.rs waits for its connections the same way.
#[derive(Default)]
pub struct Idle(Mutex<Vec<Thread>>);

impl Idle {
    fn lock(&self) -> MutexGuard<'_, Vec<Thread>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Wakes the worker that went idle last, if any is idle.
    pub fn wake_one(&self) {
        if let Some(worker) = self.lock().pop() {
            worker.unpark();
        }
    }

    /// Wakes every idle worker: once the channel has closed, so that they see it.
    pub fn wake_all(&self) {
        for worker in self.lock().iter() {
            worker.unpark();
        }
    }

    /// The next connection for the calling worker, parked until there is one; None when the channel has closed
    /// and is empty. The channel is looked at under the lock [`Idle::wake_one`] takes after a send, so a
    /// connection sent while this worker was about to park always wakes someone.
    pub fn next<T>(&self, incoming: &Receiver<T>) -> Option<T> {
        let me = thread::current();
        let mut woken = false;
        loop {
            {
                let mut parked = self.lock();
                if woken {
                    // Perhaps woken without being taken off the list (a spurious wake-up, or the pool closing).
                    parked.retain(|worker| worker.id() != me.id());
                }
                match incoming.try_recv() {
                    Ok(connection) => return Some(connection),
                    Err(TryRecvError::Disconnected) => return None,
                    Err(TryRecvError::Empty) => parked.push(me.clone()),
                }
            }
            thread::park();
            woken = true;
        }
    }
}

/// Starts `workers` threads serving the connections that come in through the returned entrance, which holds up
/// to `capacity` waiting for a worker. Every thread holds a clone of `done`, so the receiving end sees the
/// channel close when the last worker has finished.
pub fn start(
    workers: usize,
    capacity: usize,
    shared: Arc<Shared>,
    done: Sender<()>,
) -> std::io::Result<Entrance> {
    let (connections, incoming) = crossbeam_channel::bounded(capacity);
    let idle = Arc::new(Idle::default());
    let sessions = Arc::new(AtomicU64::new(0));
    for n in 0..workers {
        let (incoming, idle, shared, done, sessions) = (
            incoming.clone(),
            Arc::clone(&idle),
            Arc::clone(&shared),
            done.clone(),
            Arc::clone(&sessions),
        );
        thread::Builder::new()
            .name(format!("session-{n}"))
            .spawn(move || {
                while let Some(connection) = idle.next(&incoming) {
                    let session_id = format!("s{}", sessions.fetch_add(1, Ordering::Relaxed) + 1);
                    let served = catch_unwind(AssertUnwindSafe(|| serve(connection, &session_id, &shared)));
                    if served.is_err() {
                        error!("{session_id}: the session failed on an internal error; the worker goes on");
                    }
                }
                drop(done);
            })?;
    }
    Ok(Entrance {
        connections: Some(connections),
        idle,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Workers that count what they take, until the channel closes.
    fn workers(
        n: usize,
        idle: &Arc<Idle>,
        incoming: &Receiver<u32>,
    ) -> Vec<thread::JoinHandle<u32>> {
        (0..n)
            .map(|_| {
                let (idle, incoming) = (Arc::clone(idle), incoming.clone());
                thread::spawn(move || {
                    let mut taken = 0;
                    while idle.next(&incoming).is_some() {
                        taken += 1;
                    }
                    taken
                })
            })
            .collect()
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn every_item_sent_is_taken_and_closing_ends_every_worker() {
        let idle = Arc::new(Idle::default());
        let (sender, incoming) = crossbeam_channel::bounded(16);
        let handles = workers(8, &idle, &incoming);
        wait_until("all 8 workers are parked", || idle.lock().len() == 8);
        for n in 0..2000 {
            // Sent one at a time, each woken worker racing the others that are going back to park.
            while sender.try_send(n).is_err() {
                thread::yield_now();
            }
            idle.wake_one();
        }
        wait_until("the channel is empty", || sender.is_empty());
        drop(sender);
        idle.wake_all();
        let taken: u32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(taken, 2000);
    }

    #[test]
    fn the_worker_idle_last_is_woken_first() {
        let idle = Arc::new(Idle::default());
        let (sender, incoming) = crossbeam_channel::bounded::<u32>(1);
        let first = workers(1, &idle, &incoming);
        wait_until("the first worker is parked", || idle.lock().len() == 1);
        let second = workers(1, &idle, &incoming);
        wait_until("the second worker is parked", || idle.lock().len() == 2);
        sender.send(7).unwrap();
        idle.wake_one();
        wait_until("the item is taken", || sender.is_empty());
        drop(sender);
        idle.wake_all();
        assert_eq!(
            second.into_iter().map(|h| h.join().unwrap()).sum::<u32>(),
            1
        );
        assert_eq!(first.into_iter().map(|h| h.join().unwrap()).sum::<u32>(), 0);
    }

    #[test]
    fn items_waiting_when_the_channel_closes_are_still_taken() {
        let idle = Arc::new(Idle::default());
        let (sender, incoming) = crossbeam_channel::bounded(4);
        for n in 0..4 {
            sender.send(n).unwrap();
        }
        drop(sender);
        let taken: u32 = workers(2, &idle, &incoming)
            .into_iter()
            .map(|h| h.join().unwrap())
            .sum();
        assert_eq!(taken, 4);
    }
}
