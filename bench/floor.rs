//! The floor of Postel's design, for `make bench`: a mio loop accepts connections and hands them over a
//! crossbeam channel to a fixed pool of threads, parked while idle as Postel's are (`pool::Idle`), each of
//! which answers SMTP with blocking reads and writes, as Postel's sessions do, but stores and logs nothing.
//! What Postel costs beyond this is the work it does for a message (the spool, its sync, the delivery, the
//! log); what this costs beyond smtp-sink, one process in one loop, is the thread per connection.
//!
//! usage: floor IP:PORT [THREADS]   (100 threads unless given, as Postel's `workers`)

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::process::exit;
use std::sync::Arc;
use std::thread;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use postel::server::pool::Idle;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), threads) = (
        args.first().and_then(|a| a.parse::<SocketAddr>().ok()),
        args.get(1).map_or(Ok(100), |t| t.parse::<usize>()),
    ) else {
        eprintln!("usage: floor IP:PORT [THREADS]");
        exit(2);
    };
    let Ok(threads) = threads else {
        eprintln!("floor: THREADS must be a number");
        exit(2);
    };
    if let Err(e) = serve(addr, threads) {
        eprintln!("floor: {addr}: {e}");
        exit(1);
    }
}

/// Accepts connections on `addr` for ever and hands each to one of `threads` session threads.
fn serve(addr: SocketAddr, threads: usize) -> io::Result<()> {
    let (connections, incoming) = crossbeam_channel::bounded::<TcpStream>(threads);
    let idle = Arc::new(Idle::default());
    for _ in 0..threads {
        let (incoming, idle) = (incoming.clone(), Arc::clone(&idle));
        thread::spawn(move || {
            while let Some(stream) = idle.next(&incoming) {
                let _ = session(stream);
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

/// One SMTP session: every command is accepted, and the message is read to its end and dropped.
fn session(stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut replies = stream.try_clone()?;
    let mut commands = BufReader::new(stream);
    replies.write_all(b"220 floor.bench.test ESMTP\r\n")?;
    let mut line = Vec::new();
    let mut in_data = false;
    loop {
        line.clear();
        if commands.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if in_data {
            if line == b".\r\n" {
                in_data = false;
                replies.write_all(b"250 2.0.0 Ok: queued\r\n")?;
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
