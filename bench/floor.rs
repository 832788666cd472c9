//! The floor of Postel's design, for `make bench`: a mio loop accepts connections and hands them over a
//! crossbeam channel to a fixed pool of threads, parked while idle as Postel's are (`pool::Idle`), each of
//! which answers SMTP with blocking reads and writes, as Postel's sessions do, but stores and logs nothing.
//! What Postel costs beyond this is the work it does for a message (the spool, its sync, the delivery, the
//! log); what this costs beyond smtp-sink, one process in one loop, is the thread per connection.
//!
//! With `--sync FILE` it is the durable floor: before each 250 the message is in FILE, written by one thread
//! with one write and one `fdatasync` for all the messages waiting at that moment (a group commit, as Postel's),
//! over blocks the file already has (as Postel's segments' room). That is the least any server does that keeps
//! the promise of its 250, so its distance from smtp-sink is what that promise costs on this machine's disk.
//!
//! usage: floor IP:PORT [THREADS] [--sync FILE]   (100 threads unless given, as Postel's `workers`)

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::mem;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, Thread};

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use postel::server::pool::Idle;

/// The durable floor writes its messages over the first this many bytes of its file, again and again.
const SYNC_ROOM: u64 = 1024 * 1024;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let sync = args.iter().position(|a| a == "--sync").map(|at| {
        let path = PathBuf::from(
            args.get(at + 1)
                .unwrap_or_else(|| usage("--sync needs a FILE")),
        );
        args.drain(at..at + 2);
        path
    });
    let (Some(addr), threads) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).map_or(Ok(100), |t| t.parse::<usize>()),
    ) else {
        usage("IP:PORT is missing or not an address");
    };
    let Ok(threads) = threads else {
        usage("THREADS must be a number");
    };
    let commit = match sync
        .map(|path| Commit::start(&path).map_err(|e| (path, e)))
        .transpose()
    {
        Ok(commit) => commit,
        Err((path, e)) => {
            eprintln!("floor: {}: {e}", path.display());
            exit(1);
        }
    };
    if let Err(e) = serve(addr, threads, commit) {
        eprintln!("floor: {addr}: {e}");
        exit(1);
    }
}

fn usage(why: &str) -> ! {
    eprintln!("floor: {why}\nusage: floor IP:PORT [THREADS] [--sync FILE]");
    exit(2);
}

/// Accepts connections on `addr` for ever and hands each to one of `threads` session threads.
fn serve(addr: SocketAddr, threads: usize, commit: Option<Arc<Commit>>) -> io::Result<()> {
    let (connections, incoming) = crossbeam_channel::bounded::<TcpStream>(threads);
    let idle = Arc::new(Idle::default());
    for _ in 0..threads {
        let (incoming, idle, commit) = (incoming.clone(), Arc::clone(&idle), commit.clone());
        thread::spawn(move || {
            while let Some(stream) = idle.next(&incoming) {
                let _ = session(stream, commit.as_deref());
            }
        });
    }
    let mut listener = TcpListener::bind(addr)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    loop {
        poll.poll(&mut events, None)?;
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    let stream = TcpStream::from(OwnedFd::from(stream));
                    stream.set_nonblocking(false)?;
                    if connections.send(stream).is_err() {
                        return Err(io::Error::other("the session threads are gone"));
                    }
                    idle.wake_one();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

/// One SMTP session: every command is accepted, and the message is read to its end and dropped, or with a
/// `commit`, kept in memory and made durable before its 250.
fn session(stream: TcpStream, commit: Option<&Commit>) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut replies = stream.try_clone()?;
    let mut commands = BufReader::new(stream);
    replies.write_all(b"220 floor.bench.test ESMTP\r\n")?;
    let mut line = Vec::new();
    let mut message = Vec::new();
    let mut in_data = false;
    loop {
        line.clear();
        if commands.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                if let Some(commit) = commit {
                    commit.durable(mem::take(&mut message));
                }
                replies.write_all(b"250 2.0.0 Ok: queued\r\n")?;
            } else if commit.is_some() {
                message.extend_from_slice(&line);
            }
            continue;
        }
        let verb = line.get(..4).unwrap_or_default().to_ascii_uppercase();
        match &verb[..] {
            b"EHLO" => replies.write_all(
                b"250-floor.bench.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 52428800\r\n",
            )?,
            b"DATA" => {
                in_data = true;
                replies.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")?;
            }
            b"QUIT" => return replies.write_all(b"221 2.0.0 Bye\r\n"),
            _ => replies.write_all(b"250 2.0.0 Ok\r\n")?,
        }
    }
}

/// The durable floor's group commit: sessions queue their messages and park; one thread takes all that are
/// queued, writes them with one write and one `fdatasync`, and wakes their sessions.
struct Commit {
    waiting: Mutex<Vec<Waiting>>,
    queued: Condvar,
}

struct Waiting {
    message: Vec<u8>,
    session: Thread,
    done: Arc<AtomicBool>,
}

impl Commit {
    /// Lays down the file's room (zeros, synced) and starts the commit thread.
    fn start(path: &Path) -> io::Result<Arc<Commit>> {
        let file = File::create(path)?;
        file.write_all_at(&vec![0; SYNC_ROOM as usize], 0)?;
        file.sync_all()?;
        let commit = Arc::new(Commit {
            waiting: Mutex::new(Vec::new()),
            queued: Condvar::new(),
        });
        let thread_commit = Arc::clone(&commit);
        thread::spawn(move || thread_commit.run(&file));
        Ok(commit)
    }

    /// Returns once `message` is on disk.
    fn durable(&self, message: Vec<u8>) {
        let done = Arc::new(AtomicBool::new(false));
        self.lock().push(Waiting {
            message,
            session: thread::current(),
            done: Arc::clone(&done),
        });
        self.queued.notify_one();
        while !done.load(Ordering::Acquire) {
            thread::park();
        }
    }

    fn run(&self, file: &File) {
        let mut offset = 0;
        let mut batch = Vec::new();
        loop {
            let taken = {
                let mut waiting = self.lock();
                while waiting.is_empty() {
                    waiting = self.queued.wait(waiting).unwrap_or_else(|p| p.into_inner());
                }
                mem::take(&mut *waiting)
            };
            batch.clear();
            for waiting in &taken {
                batch.extend_from_slice(&waiting.message);
            }
            if offset + batch.len() as u64 > SYNC_ROOM {
                offset = 0;
            }
            if let Err(e) = file
                .write_all_at(&batch, offset)
                .and_then(|()| file.sync_data())
            {
                eprintln!("floor: the sync file: {e}");
                exit(1);
            }
            offset += batch.len() as u64;
            for waiting in taken {
                waiting.done.store(true, Ordering::Release);
                waiting.session.unpark();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Waiting>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}
