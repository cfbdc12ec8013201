"""Files and folders that hold tricklab's data (the database, models, checkpoints, archives)
and its secrets (the admin's token file, the scraper's): readable by the user that runs it
alone (or as `mode` says), whatever the process's umask. A folder that already
exists keeps its mode: an operator may have shared it on purpose."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("tricklab.service")

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def private_folder(path: Path) -> None:
    """Create `path` and its missing parents, each 0700."""
    missing = []
    for folder in (path, *path.parents):
        if folder.is_dir():
            break
        missing.append(folder)
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=FOLDER_MODE)
        except FileExistsError:  # made meanwhile, by another process
            continue
        os.chmod(folder, FOLDER_MODE)  # mkdir's mode passes through the umask


def private_file(path: Path) -> None:
    """Create `path`, empty and 0600, unless it exists."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(descriptor, FILE_MODE)  # as for mkdir, the umask may have narrowed it
    finally:
        os.close(descriptor)


def secret_file(
    path: Path,
    make: Callable[[], str],
    mode: int = FILE_MODE,
    min_length: int = 1,
    setting: str = "",
) -> tuple[str, bool]:
    """The secret in `path`, and whether it was made now: if the file does not exist, `make()`
    is written there with `mode`, whatever the umask. Several processes starting at once agree
    on one: the first writes it, the others wait for it to be written. A file holding fewer
    than `min_length` characters is refused (SecretFileTooShort, naming `setting`, the
    setting that names the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        if path.stat().st_mode & 0o077 & ~mode:
            log.warning("%s can be read by more users than it should: chmod %o it", path, mode)
        return _written(path, min_length, setting), False
    os.fchmod(descriptor, mode)  # as for mkdir, the umask may have narrowed it
    secret = make()
    with os.fdopen(descriptor, "w") as file:
        file.write(secret + "\n")
    return secret, True


class SecretFileTooShort(RuntimeError):
    """A secret's file holds too few characters to be one."""


def _written(path: Path, min_length: int, setting: str) -> str:
    for _ in range(50):  # the process that created it may not have written it yet
        secret = path.read_text().strip()
        if secret:
            break
        time.sleep(0.1)
    if len(secret) < min_length:
        raise SecretFileTooShort(
            f"{path}{f' ({setting})' if setting else ''} holds {len(secret)} characters, fewer "
            f"than a token's {min_length}: write a longer one (openssl rand -hex 32 > {path}), "
            "or delete the file and a new token is made"
        )
    return secret
