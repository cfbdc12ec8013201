"""The scraper's token (TRICKLAB_METRICS_TOKEN_FILE): it reads `GET /metrics` and nothing else,
so that Prometheus needs neither the admin's token nor any user's. It is no user's: it lives in
its file alone, never in the database, and every other route takes it for an unknown token."""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import time
from pathlib import Path

from starlette.requests import Request

log = logging.getLogger("tricklab.service")
PATH = "/metrics"
MIN_LENGTH = 32
# Group-readable: compose runs Prometheus in tricklab's group, with the file's folder (and
# nothing else of tricklab's) mounted, so that it reads this one file.
MODE = 0o640


class MetricsToken:
    """Whether a request is the scraper's: `GET /metrics` with its bearer token."""

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode()

    @classmethod
    def from_file(cls, path: Path) -> MetricsToken:
        return cls(token_file(path))

    def admits(self, request: Request) -> bool:
        if request.scope["path"] != PATH or request.method != "GET":
            return False
        scheme, _, presented = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            presented.strip().encode(), self._secret
        )


def token_file(path: Path) -> str:
    """The token in `path`, made there (random, mode MODE) if the file does not exist; several
    API processes starting at once agree on one. A file too short to be a token is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, MODE)
    except FileExistsError:
        if path.stat().st_mode & 0o007:
            log.warning("%s can be read by every user of this machine: chmod 640 it", path)
        return _written(path)
    os.fchmod(descriptor, MODE)  # the group's read, whatever the process's umask
    secret = secrets.token_urlsafe(32)
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    log.info("the token that reads /metrics (and nothing else) is in %s", path)
    return secret


def _written(path: Path) -> str:
    for _ in range(50):  # another process may have just created it
        secret = path.read_text().strip()
        if secret:
            break
        time.sleep(0.1)
    if len(secret) < MIN_LENGTH:
        raise RuntimeError(
            f"{path} (TRICKLAB_METRICS_TOKEN_FILE) holds {len(secret)} characters, fewer than a "
            f"token's {MIN_LENGTH}: write a longer one (openssl rand -hex 32 > {path}), or delete "
            "the file and a new token is made"
        )
    return secret
