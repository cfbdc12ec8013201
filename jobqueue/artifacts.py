"""Where trained models live, and how they get there: atomically, with a checksum."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.files import FILE_MODE, private_folder


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _sync_folder(folder: Path) -> None:
    """Make the names just made in a folder durable (its entries, not the files' data)."""
    directory = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class ArtifactStore:
    """Files under one root; the database records paths relative to it, so the root can move."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, relative: str) -> Path:
        path = (self.root / relative).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError(f"artifact path escapes the store: {relative}")
        return path

    @staticmethod
    def attempt_file(job_id: str, token: str, name: str) -> str:
        """A file written under one lease, as the relative path the database records. Each
        lease writes only in its own folder, so a worker that lost its lease (frozen, cut
        off) can never overwrite the files of the worker that took the job over."""
        return f"jobs/{job_id}/{token[:12]}/{name}"

    def write_atomic(
        self, relative: str, write: Callable[[Path], object], exclusive: bool = False
    ) -> str:
        """Have `write` fill a temporary file beside the target, then move it into place, so
        readers see the old file or the complete new one, never half of one. Returns the
        new file's sha256. `exclusive`: never replace a file already there (FileExistsError)."""
        target = self.path(relative)
        private_folder(target.parent)
        # Same folder (a rename never crosses file systems) and same suffix (Keras checks it).
        temporary = target.with_name(f".{secrets.token_hex(6)}.{target.name}")
        try:
            write(temporary)
            os.chmod(temporary, FILE_MODE)  # models and metrics are for this user's eyes only
            with temporary.open("rb") as file:
                os.fsync(file.fileno())
            digest = sha256_of(temporary)
            if exclusive:  # a hard link, unlike a rename, fails when the target exists
                os.link(temporary, target)
            else:
                os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)
        _sync_folder(target.parent)  # make the rename itself durable
        return digest

    def link(self, existing: str, new: str) -> Path:
        """Give a file a second name in the store, durably, never replacing a file already
        there (FileExistsError). Returns the new name's path."""
        target = self.path(new)
        os.link(self.path(existing), target)
        _sync_folder(target.parent)
        return target

    def write_json(self, relative: str, document: Any) -> str:
        text = json.dumps(document, indent=2, sort_keys=True) + "\n"
        return self.write_atomic(relative, lambda path: path.write_text(text))

    def remove_job(self, job_id: str) -> None:
        """Delete every file of a job: its checkpoints and models, from all its leases."""
        shutil.rmtree(self.path(f"jobs/{job_id}"), ignore_errors=True)

    def remove(self, relative: str) -> None:
        """Delete a file, then its parent folders that became empty, up to the root."""
        path = self.path(relative)
        path.unlink(missing_ok=True)
        root = self.root.resolve()
        for parent in path.parents:
            if parent == root or not parent.is_relative_to(root):
                break
            try:
                parent.rmdir()
            except OSError:  # not empty (or already gone): stop pruning
                break
