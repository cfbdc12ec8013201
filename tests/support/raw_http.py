"""HTTP/1.1 spoken by hand over sockets, for clients that no library would be: silent, slow,
half-sent or oversized."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from tests.support.auth import ADMIN_HEADERS

GENEROUS = 60  # seconds a socket waits for the server, far beyond any timeout the tests set


def connect(url: str, timeout: float = GENEROUS) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=timeout)


def head(
    method: str,
    path: str,
    length: int,
    content_type: str,
    *extra: str,
    authorization: str | None = ADMIN_HEADERS["Authorization"],
) -> bytes:
    """A request's line and headers, announcing a body of `length` bytes."""
    lines = [
        f"{method} {path} HTTP/1.1",
        "Host: 127.0.0.1",
        *([f"Authorization: {authorization}"] if authorization else []),
        f"Content-Type: {content_type}",
        f"Content-Length: {length}",
        *extra,
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the connection after {data!r}"
        data += chunk
    return data


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response: status, headers (lower-case names) and the body its Content-Length says."""
    data = read_head(sock)
    top, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = top.decode().split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, value in (line.split(":", 1) for line in header_lines)
    }
    while len(body) < int(headers.get("content-length", 0)):
        chunk = sock.recv(4096)
        assert chunk, "the server closed the connection inside the body"
        body += chunk
    return int(status_line.split()[1]), headers, body


def closed(sock: socket.socket) -> bool:
    """Whether the server closes the connection (waiting as long as the socket's timeout)."""
    try:
        return sock.recv(4096) == b""
    except ConnectionResetError:
        return True
