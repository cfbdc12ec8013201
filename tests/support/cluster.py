"""A local cluster of real processes for tests: `python -m service` and `python -m worker`,
configured by TRICKLAB_* variables, with their logs, and signals to send them."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx2 as httpx

from jobqueue.db import make_engine
from jobqueue.reads import Reads
from jobqueue.store import JobStore
from tests.support.auth import ADMIN_HEADERS, ADMIN_TOKEN

T = TypeVar("T")
# Short enough that lost workers are noticed within seconds, long enough that a busy 2-core
# machine does not starve heartbeats into false alarms.
FAST_LEASES = {"LEASE_SECONDS": "3", "HEARTBEAT_SECONDS": "0.5", "SWEEP_SECONDS": "0.5"}


def wait_for(condition: Callable[[], T], timeout: float, what: str, every: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Cluster:
    """One database and artifact store, an API on a free port, workers by name."""

    def __init__(self, root: Path, data_dir: Path, database_url: str, **settings: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.root = root
        self.url = f"http://127.0.0.1:{port}"
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "TRICKLAB_DATABASE_URL": database_url,
            "TRICKLAB_ARTIFACTS_DIR": str(root / "artifacts"),
            "TRICKLAB_DATA_DIR": str(data_dir),
            "TRICKLAB_PORT": str(port),
            "TRICKLAB_POLL_SECONDS": "0.1",
            "TRICKLAB_ADMIN_TOKEN": ADMIN_TOKEN,
            "TRICKLAB_WORKER_METRICS": "",  # a test that wants them gives a free port
            **{f"TRICKLAB_{key}": value for key, value in settings.items()},
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.client = httpx.Client(base_url=self.url, timeout=30, headers=ADMIN_HEADERS)
        self.store = JobStore(make_engine(database_url))
        self.reads = Reads(self.store.engine)

    def start(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        """Start (or restart) a process; its output goes to <root>/<name>.log, appended."""
        with (self.root / f"{name}.log").open("ab") as log:
            process = subprocess.Popen(
                [sys.executable, *command], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.processes[name] = process
        return process

    def start_api(self) -> None:
        self.start("api", "-m", "service")
        wait_for(self._ready, 60, "the API to be ready")

    def start_worker(self, name: str, *command: str) -> subprocess.Popen[bytes]:
        return self.start(name, *(command or ("-m", "worker")), "--name", name)

    def signal(self, name: str, number: int) -> None:
        self.processes[name].send_signal(number)

    def kill(self, name: str) -> None:
        self.signal(name, signal.SIGKILL)
        self.processes[name].wait()

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "".join(self.log(name) for name in self.processes)

    def _ready(self) -> bool:
        try:
            return self.client.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
        self.client.close()
        self.store.engine.dispose()


@contextlib.contextmanager
def serving(root: Path, data_dir: Path) -> Iterator[Cluster]:
    """An API and one worker ("worker") on a SQLite file under `root`, until the block ends."""
    with Cluster(root, data_dir, f"sqlite:///{root / 'tricklab.db'}") as cluster:
        cluster.start_api()
        cluster.start_worker("worker")
        yield cluster
