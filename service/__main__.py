"""`python -m service`: serve the API on TRICKLAB_HOST:TRICKLAB_PORT."""

from __future__ import annotations

import contextlib
import errno
import logging
import resource
import socket
import sys

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from core.backend import load_backend
from core.config import load_settings
from core.logs import setup_logging
from service.protocol import with_header_limits

log = logging.getLogger("tricklab.service")
# Errors that a different port might cure; any other (no such address, a name that does not
# resolve) is the host's.
PORT_ERRORS = (errno.EADDRINUSE, errno.EACCES)
# Connections the kernel completes before the accept loop takes them, as uvicorn's own binding
# has it; Python's default (128) would leave a burst of clients waiting for SYN retries.
BACKLOG = 2048


def serve(factory: str = "service.app:create_app") -> None:
    """Run an app factory under uvicorn as the API runs (the serving benchmark's trivial
    endpoint is served through here too, so the two are compared like for like)."""
    settings = load_settings()  # one line naming each bad setting, not a traceback
    setup_logging(settings.log_level)
    # Before the app is imported (and TensorFlow with it, seconds of start-up lines): a port
    # that is taken is then one line, and the socket bound here is the one uvicorn serves on,
    # so nothing can take the port in between.
    sockets = listen(settings.host, settings.port)
    open_files_for(settings.max_connections)
    load_backend()  # before uvicorn imports the app, which loads it
    config = uvicorn.Config(
        factory,
        factory=True,
        host=settings.host,
        port=settings.port,
        http=with_header_limits(settings.header_timeout_seconds, settings.max_header_bytes),
        # Connections, idle ones included, beyond which uvicorn answers 503; the requests in
        # progress have their own, finer limits (service.admission).
        limit_concurrency=settings.max_connections,
        log_config=None,  # keep the one log format set up above
        # X-Forwarded-For/-Proto from these peers only (the TLS proxy), never uvicorn's own
        # FORWARDED_ALLOW_IPS from the environment.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips,
    )
    server = uvicorn.Server(config)
    # uvicorn shuts down cleanly on Ctrl-C, then raises it again for whoever called it.
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)  # as uvicorn.run does: the app failed to start


def open_files_for(connections: int) -> None:
    """Raise this process's open-file limit, as far as the system allows, to hold
    `connections` sockets besides its own files; a limit too low would turn clients away with
    errors in the accept loop instead of a 503."""
    wanted = connections + 256  # the database, models, logs, the thread pool's files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    raised = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if raised > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
    if raised < wanted:
        log.warning(
            "this process may open %d files, fewer than TRICKLAB_MAX_CONNECTIONS (%d) needs: "
            "lower it, or raise the hard limit (ulimit -Hn)",
            raised,
            connections,
        )


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address `host` resolves to (as uvicorn's own binding does:
    "localhost" is 127.0.0.1 and ::1, "" every interface), or exit with one line naming the
    setting to change."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    sockets: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in dict.fromkeys(found):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            # A restart need not wait for the last run's connections to leave TIME_WAIT; a
            # port that another process listens on is still refused.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # so that "::" and "0.0.0.0" do not collide
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)  # here, not in uvicorn: listen() too can find the port taken
    except OSError as error:
        for sock in sockets:
            sock.close()
        reason = (error.strerror or str(error)).lower()
        if error.errno in PORT_ERRORS:
            hint = "set TRICKLAB_PORT to a free port (or TRICKLAB_HOST)"
        else:
            hint = "set TRICKLAB_HOST to an address of this machine (or TRICKLAB_PORT)"
        sys.exit(f"tricklab: cannot listen on {where}: {reason}; {hint}")
    log.info("listening on http://%s", where)
    return sockets


if __name__ == "__main__":
    serve()
