"""Small socket helpers: a free port, and what an SMTP server says first."""

import socket


def free_port(ip="127.0.0.1"):
    with socket.socket() as s:
        s.bind((ip, 0))
        return s.getsockname()[1]


def greeting(addr, timeout=2):
    """The first reply line of the SMTP server at (ip, port), or "" when none answers."""
    try:
        with socket.create_connection(addr, timeout=timeout) as s:
            s.settimeout(timeout)
            data = b""
            while b"\n" not in data:
                chunk = s.recv(512)
                if not chunk:
                    break
                data += chunk
            s.sendall(b"QUIT\r\n")
            return data.decode("latin-1").strip()
    except OSError:
        return ""
