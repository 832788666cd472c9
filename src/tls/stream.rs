//! A TCP connection that may turn into a TLS one (STARTTLS) or start as one (implicit TLS): the blocking
//! stream both the SMTP server and the SMTP client read and write.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection, StreamOwned};

use super::TlsInfo;

/// Plain TCP, or TLS over it, as the server or as the client.
pub enum Stream {
    Plain(TcpStream),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
}

/// Runs `$body` with `$s` bound to whichever stream is inside.
macro_rules! each {
    ($stream:expr, $s:ident => $body:expr) => {
        match $stream {
            Stream::Plain($s) => $body,
            Stream::Server($s) => $body,
            Stream::Client($s) => $body,
        }
    };
}

impl Stream {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Server(tls) => &tls.sock,
            Stream::Client(tls) => &tls.sock,
        }
    }

    /// What the handshake agreed on, once TLS is up.
    pub fn tls(&self) -> Option<TlsInfo> {
        match self {
            Stream::Plain(_) => None,
            Stream::Server(tls) => Some(TlsInfo::of(&tls.conn)),
            Stream::Client(tls) => Some(TlsInfo::of(&tls.conn)),
        }
    }

    /// Runs the server side of a handshake, waiting at most `timeout` for each read; Err says why it failed.
    pub fn accept_tls(
        &mut self,
        config: Arc<ServerConfig>,
        timeout: Duration,
    ) -> Result<TlsInfo, String> {
        let mut connection = ServerConnection::new(config).map_err(|e| e.to_string())?;
        let tcp = self.handshake(&mut connection, timeout)?;
        let info = TlsInfo::of(&connection);
        *self = Stream::Server(Box::new(StreamOwned::new(connection, tcp)));
        Ok(info)
    }

    /// Runs the client side of a handshake with `name` (sent as SNI, and verified if `config` verifies).
    pub fn connect_tls(
        &mut self,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        timeout: Duration,
    ) -> Result<TlsInfo, String> {
        let mut connection = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
        let tcp = self.handshake(&mut connection, timeout)?;
        let info = TlsInfo::of(&connection);
        *self = Stream::Client(Box::new(StreamOwned::new(connection, tcp)));
        Ok(info)
    }

    /// Drives a handshake to its end over (a clone of) the plain connection, which it returns.
    fn handshake<D: rustls::SideData>(
        &mut self,
        connection: &mut rustls::ConnectionCommon<D>,
        timeout: Duration,
    ) -> Result<TcpStream, String> {
        let Stream::Plain(tcp) = self else {
            return Err("TLS is already active".into());
        };
        let mut tcp = tcp.try_clone().map_err(|e| e.to_string())?;
        tcp.set_read_timeout(Some(timeout))
            .and_then(|()| tcp.set_write_timeout(Some(timeout)))
            .map_err(|e| e.to_string())?;
        while connection.is_handshaking() {
            match connection.complete_io(&mut tcp) {
                Ok((0, 0)) if connection.wants_read() => {
                    return Err("the peer closed the connection during the handshake".into());
                }
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Err("timed out during the handshake".into());
                }
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => {
                    return Err("the peer closed the connection during the handshake".into());
                }
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(tcp)
    }

    /// Ends the connection: TLS's close_notify first when TLS is up (best effort), then the TCP shutdown.
    pub fn close(&mut self) {
        match self {
            Stream::Plain(_) => {}
            Stream::Server(tls) => {
                tls.conn.send_close_notify();
                let _ = tls.conn.complete_io(&mut tls.sock);
            }
            Stream::Client(tls) => {
                tls.conn.send_close_notify();
                let _ = tls.conn.complete_io(&mut tls.sock);
            }
        }
        let _ = self.tcp().shutdown(Shutdown::Both);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        each!(self, s => s.read(buf))
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        each!(self, s => s.write(buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        each!(self, s => s.flush())
    }
}
