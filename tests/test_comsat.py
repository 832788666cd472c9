"""The comsat key: after each mailbox append, the datagram `user@offset` goes to the comsat (biff) service, here a
UDP socket the test listens on."""

import socket

from mboxutil import DELIVER


def test_each_append_sends_user_at_offset(make_postel):
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    server = make_postel(**DELIVER, comsat=f"127.0.0.1:{listener.getsockname()[1]}")
    try:
        notices = []
        for n in range(2):
            conn = server.session()
            conn.expect("MAIL FROM:<carol@example.org>", 250)
            conn.expect("RCPT TO:<alice@localhost>", 250)
            conn.expect("DATA", 354)
            conn.send(f"Subject: {n}\r\n\r\nHello.\r\n.\r\n")
            assert conn.reply().code == 250
            notices.append(listener.recvfrom(512)[0])
            conn.expect("QUIT", 221)
        box = server.mailboxes / "alice"
        first_len = box.read_bytes().index(b"\nFrom carol@example.org ") + 1
        assert notices == [b"alice@0", b"alice@%d" % first_len], notices
    finally:
        listener.close()
