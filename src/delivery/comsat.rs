//! New-mail notices for biff(1): after a mailbox append, the datagram `user@offset` (where the new message
//! starts) to the comsat service, as 4.2BSD's delivery agents and Postfix's local(8) with `biff = yes` send it.

use std::net::UdpSocket;

use log::debug;

/// Sends `user@offset` to `address` (`host:port`). Best effort: a notice that cannot be sent is only logged.
pub fn notify(address: &str, user: &str, offset: u64) {
    let sent = UdpSocket::bind(if address.starts_with('[') {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    })
    .and_then(|socket| socket.send_to(format!("{user}@{offset}").as_bytes(), address));
    if let Err(e) = sent {
        debug!("comsat: cannot send the notice for {user} to {address}: {e}");
    }
}
