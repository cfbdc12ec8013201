"""uvicorn's HTTP protocol with a deadline and a size limit for request headers.

uvicorn closes a keep-alive connection that stays idle between requests, but sets no time
limit on a request's headers: a client that opens a connection and sends nothing, or half a
header line, holds it (and one of TRICKLAB_MAX_CONNECTIONS) for as long as it likes,
and a few hundred such clients turn everyone else away. This subclass closes a connection
whose request headers are not complete `header_timeout` seconds after the connection opened,
or after the first byte of a later request on a kept-alive connection. Nor does the parser
(httptools) limit how long headers may grow: a client could send an endless header line, and
the server would hold it all. This class answers 431 and closes the connection once a request's
line and headers pass `max_header_bytes`. The body has its own deadline, in
service.limits.BodyLimits, where a 408 can be answered.
"""

from __future__ import annotations

import asyncio
import json

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout = 10.0  # seconds; `with_header_limits` makes a subclass with others
    max_header_bytes = 64 * 2**10

    _header_timer: asyncio.TimerHandle | None = None
    _in_headers = True  # what arrives now is a request's line and headers
    _header_bytes = 0  # of them, so far

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # From the connection's opening, not its first byte: one that sends nothing at all
        # holds a slot as surely as one that stops half-way.
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        # Counted before the parser holds them, up to the end of the headers when it is in
        # this read (what follows is body).
        if self._in_headers:
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4
            if self._header_bytes > self.max_header_bytes:
                self._headers_too_large()
                return
        super().data_received(data)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        # A request pipelined behind one in progress: counted from its next read on.
        self._in_headers = True
        if self._header_timer is None:  # a later request on a kept-alive connection
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._in_headers, self._header_bytes = False, 0
        self._cancel_header_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # The request has been read to its end: what comes next on this connection is a new
        # request. Not once the response is sent: an early answer (a 413) can go out while
        # the rest of the body is still arriving, and that is no header.
        self._in_headers = True

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        # No response: there is no complete request to answer, and a client that sent
        # nothing may not even be speaking HTTP.
        self._header_timer = None
        if not self.transport.is_closing():
            self.logger.debug("closing a connection whose request headers took too long")
            self.transport.close()

    def _headers_too_large(self) -> None:
        self._cancel_header_timer()
        detail = (
            f"the request line and headers passed {self.max_header_bytes:,} bytes, the limit "
            "(TRICKLAB_MAX_HEADER_BYTES)"
        )
        body = json.dumps({"detail": detail}).encode()
        head = (
            "HTTP/1.1 431 Request Header Fields Too Large\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        self.transport.write(head.encode() + body)
        self.transport.close()


def with_header_limits(seconds: float, max_bytes: int) -> type[HeaderTimeoutProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`), which creates each
    connection's protocol itself, so the limits travel as class attributes."""
    limits = {"header_timeout": seconds, "max_header_bytes": max_bytes}
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), limits)
