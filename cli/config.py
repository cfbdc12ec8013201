"""Which server the command line talks to, and with which token.

The URL: `--url`, else `TRICKLAB_URL`, else the one `tricklab login` saved, else the local
default. The token: `--token`, else `TRICKLAB_TOKEN`, else the one `tricklab login` saved for
that URL, else, for a service on this machine only, the admin's token as the service itself
finds it (`TRICKLAB_ADMIN_TOKEN` or the file it writes on first start)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Connection:
    url: str
    token: str | None
    token_from: str  # where the token came from, named in an authentication error


def normalise_url(url: str) -> str:
    """`localhost:8000/` → `http://localhost:8000`: what people type, made a base URL."""
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


def config_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "tricklab" / "config.json"


def saved_login() -> dict[str, str]:
    """What `tricklab login` saved: {"url", "token"}, or {} when nothing usable is there."""
    try:
        saved = json.loads(config_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict) or not all(
        isinstance(saved.get(k), str) for k in ("url", "token")
    ):
        return {}
    return saved


def save_login(url: str, token: str) -> Path:
    """Write the URL and token, readable by this user only (the token acts as them)."""
    path = config_file()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    # Created 0600 from the start: a token must never sit in a file others can read.
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump({"url": url, "token": token}, file, indent=2)
        file.write("\n")
    os.chmod(temporary, 0o600)  # the file may have existed with wider permissions
    os.replace(temporary, path)
    return path


def local_admin_token() -> tuple[str, str] | None:
    """The admin's token as a service on this machine, started from this folder, has it:
    TRICKLAB_ADMIN_TOKEN, else the file it generated (read with the service's own settings,
    so TRICKLAB_ADMIN_TOKEN_FILE, TRICKLAB_DATABASE_URL and .env move it the same way)."""
    # Imported here: most commands never need it, and it costs a tenth of a second.
    from pydantic import ValidationError

    from core.config import Settings

    try:
        settings = Settings()
    except ValidationError:
        return None  # settings the service would refuse too: nothing to read
    if settings.admin_token is not None:
        return settings.admin_token.get_secret_value(), "TRICKLAB_ADMIN_TOKEN"
    try:
        token = settings.token_file.read_text().strip()
    except OSError:
        return None
    return (token, str(settings.token_file)) if token else None


def is_loopback_url(url: str) -> bool:
    from core.config import is_loopback

    return is_loopback(urlsplit(url).hostname or "")


def resolve(url: str | None, token: str | None) -> Connection:
    """`url` and `token` are the options (Typer has already read the environment into them)."""
    saved = saved_login()
    resolved_url = normalise_url(url or saved.get("url") or DEFAULT_URL)
    if token:
        return Connection(resolved_url, token, "--token or TRICKLAB_TOKEN")
    if saved and normalise_url(saved["url"]) == resolved_url:
        return Connection(resolved_url, saved["token"], str(config_file()))
    # Only to this machine: the admin's token must never be sent anywhere else.
    if is_loopback_url(resolved_url) and (local := local_admin_token()):
        return Connection(resolved_url, local[0], local[1])
    return Connection(resolved_url, None, "no token")
