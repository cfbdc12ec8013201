"""The scraper's token (TRICKLAB_METRICS_TOKEN_FILE): it reads `GET /metrics` and nothing else,
so that Prometheus needs neither the admin's token nor any user's. It is no user's: it lives in
its file alone, never in the database, and every other route takes it for an unknown token."""

from __future__ import annotations

import hmac
import logging
import secrets
from pathlib import Path

from starlette.requests import Request

from core.files import secret_file

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
    secret, made = secret_file(
        path,
        lambda: secrets.token_urlsafe(32),
        MODE,
        MIN_LENGTH,
        setting="TRICKLAB_METRICS_TOKEN_FILE",
    )
    if made:
        log.info("the token that reads /metrics (and nothing else) is in %s", path)
    return secret
