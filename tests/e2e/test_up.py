"""Starting the service for real: `python -m service` on a port that is taken, and `make up`,
which must never leave one of its two processes running without the other, with
scripts/foreground.py, which makes its supervisor the terminal's foreground job."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import shutil
import signal
import socket
import stat
import subprocess
import sys
import termios
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2 as httpx
import pytest

from core.native_noise import NATIVE_NOISE
from tests.support.cluster import wait_for

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
VENV = Path(sys.prefix)
TIMEOUT = 120  # seconds: generous, for a loaded machine importing TensorFlow twice at once


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def environment(root: Path, data_dir: Path, port: int) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("TRICKLAB_")
        and key not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
        and key != "TF_CPP_MIN_LOG_LEVEL"  # set by importing JAX, as the suite does; a user's
    }
    return {
        **env,
        "PYTHONUNBUFFERED": "1",
        "TRICKLAB_PORT": str(port),
        "TRICKLAB_DATABASE_URL": f"sqlite:///{root / 'tricklab.db'}",
        "TRICKLAB_ARTIFACTS_DIR": str(root / "artifacts"),
        "TRICKLAB_DATA_DIR": str(data_dir),
        "TRICKLAB_POLL_SECONDS": "0.1",
    }


def test_a_taken_port_is_one_line_naming_the_setting(tmp_path, data_dir, taken_port):
    done = subprocess.run(
        [sys.executable, "-m", "service"],
        env=environment(tmp_path, data_dir, taken_port),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        f"tricklab: cannot listen on 127.0.0.1:{taken_port}: address already in use; "
        "set TRICKLAB_PORT to a free port (or TRICKLAB_HOST)\n"
    )


def as_typed(terminal: bool) -> None:
    """In the child, before make runs: as a shell starts a command typed on a terminal. SIGINT
    is taken back from an ignoring parent (a suite run in the background ignores it, and a shell
    that starts with it ignored cannot trap it); after setsid, the terminal on standard input
    becomes the session's own."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    if terminal:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Up:
    """`make up` in a process group of its own (as a terminal runs it), its output in a file;
    with `terminal`, a session of its own whose controlling terminal is a pseudo-terminal,
    `make up` its foreground job and standard input, as in a shell."""

    def __init__(self, root: Path, data_dir: Path, port: int, terminal: bool = False) -> None:
        self.log = root / "make-up.log"
        self.root, self.port = root, port
        self.controller: int | None = None
        # The venv running these tests, without reinstalling it (-o: take the install stamp
        # as up to date, whatever pyproject.toml's time).
        command = ["make", "up", f"VENV={VENV}", "-o", f"{VENV}/.runtime-stamp"]
        stdin: int | None = None
        if terminal:
            self.controller, stdin = pty.openpty()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=environment(root, data_dir, port),
                stdin=stdin,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lambda: as_typed(terminal),
            )
        if stdin is not None:
            os.close(stdin)
        self.group = self.process.pid

    def ctrl_c(self) -> None:
        """Type Ctrl-C on the terminal: it signals the terminal's foreground process group."""
        assert self.controller is not None
        os.write(self.controller, b"\x03")

    def ctrl_z(self) -> None:
        """Type Ctrl-Z: it sends SIGTSTP to the terminal's foreground process group."""
        assert self.controller is not None
        os.write(self.controller, b"\x1a")

    def stopped(self) -> list[str]:
        """The command lines of the processes in make's session that a signal has stopped."""
        found = []
        for pid, command in self.members().items():
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                # The state is the field after the parenthesised command name.
                if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T":
                    found.append(command)
        return found

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def members(self) -> dict[int, str]:
        """The processes left in make's session (its group, and on a terminal the foreground
        job's), with their command lines."""
        found = {}
        for entry in Path("/proc").iterdir():
            try:
                # The session is the 6th field, after the parenthesised command name.
                if entry.name.isdigit():
                    stat = (entry / "stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[3]) == self.group:
                        command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
                        found[int(entry.name)] = command.decode(errors="replace")
            except (FileNotFoundError, ProcessLookupError):
                continue  # gone meanwhile
        return found

    def left_behind(self, grace: float = 5.0) -> dict[int, str]:
        """The members still there after a moment's grace: a process that dies while loading
        TensorFlow leaves the filter of its standard error to pass on its last lines, and the
        filter ends just after it. A process truly left behind is still there."""
        deadline = time.monotonic() + grace
        while (found := self.members()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    def wait_until_serving(self) -> None:
        def ready() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/readyz").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, TIMEOUT, f"the API to be ready; make up said:\n{self.output()}")
        wait_for(lambda: " started device=" in self.output(), TIMEOUT, "the worker to start")

    def wait(self) -> int:
        try:
            return self.process.wait(TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"make up still running; it said:\n{self.output()}") from None

    def close(self) -> None:
        for pid in self.members():  # on a terminal, the foreground job has a group of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.group, signal.SIGKILL)
        self.process.wait()
        if self.controller is not None:
            os.close(self.controller)


@pytest.fixture
def up(tmp_path: Path, data_dir: Path) -> Iterator[Callable[..., Up]]:
    started: list[Up] = []

    def start(port: int, terminal: bool = False) -> Up:
        started.append(Up(tmp_path, data_dir, port, terminal))
        return started[-1]

    yield start
    for each in started:
        each.close()


def test_make_up_stops_the_worker_and_fails_when_the_api_cannot_start(up, taken_port):
    run = up(taken_port)
    assert run.wait() != 0
    output = run.output()
    assert f"cannot listen on 127.0.0.1:{taken_port}: address already in use" in output
    assert "make up: the api ended (exit status 1); stopping the worker" in output
    assert run.left_behind() == {}  # the worker is gone, not training on unseen


def test_make_up_stops_the_api_and_fails_when_the_worker_dies(up):
    run = up(free_port())
    run.wait_until_serving()
    (worker,) = (
        pid for pid, command in run.members().items() if command.split()[1:3] == ["-m", "worker"]
    )
    os.kill(worker, signal.SIGKILL)
    assert run.wait() != 0
    assert "make up: the worker ended (killed by SIGKILL); stopping the api" in run.output()
    assert run.left_behind() == {}


def test_make_up_says_where_the_admin_token_is_and_how_to_use_it(up):
    run = up(free_port())
    run.wait_until_serving()
    token_file = run.root / "admin-token"  # beside the database
    url = f"http://127.0.0.1:{run.port}/v1/me"
    curl = f'curl -H "Authorization: Bearer $(cat {token_file})" {url}'
    assert f"the admin's token is in {token_file}; try: {curl}" in run.output()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    if shutil.which("curl"):
        answered = subprocess.run(["bash", "-c", curl], capture_output=True, timeout=30)
        me = json.loads(answered.stdout)
    else:
        token = token_file.read_text().strip()
        me = httpx.get(url, headers={"Authorization": f"Bearer {token}"}).json()
    assert (me["name"], me["role"]) == ("admin", "admin")


def test_ctrl_z_on_a_terminal_is_ignored_and_ctrl_c_stops_both_cleanly_and_make_succeeds(up):
    run = up(free_port(), terminal=True)
    run.wait_until_serving()
    run.ctrl_z()
    time.sleep(1)  # the terminal signals at once: time for a stop to show, were there one
    assert run.stopped() == []
    assert httpx.get(f"http://127.0.0.1:{run.port}/readyz").status_code == 200
    run.ctrl_c()
    assert run.wait() == 0, run.output()[-4000:]
    output = run.output()
    assert "make: ***" not in output and " ended (" not in output  # no complaint at all
    assert "signal=SIGINT: stopping after the current epoch" in output
    assert " stopped" in output and "Finished server process" in output
    assert run.left_behind() == {}
    # Neither process's start looked like a failure: no line of TensorFlow's about CUDA.
    noise = [line for line in output.splitlines() if NATIVE_NOISE.match(line)]
    assert noise == [] and "cuInit" not in output and "absl" not in output


def test_ctrl_c_off_a_terminal_stops_both_and_make_says_nothing(up):
    run = up(free_port())
    run.wait_until_serving()
    os.killpg(run.group, signal.SIGINT)  # Ctrl-C as a terminal sends it, to make's group too
    # make takes a SIGINT of its own as its interruption and ends killed by it, as it must
    # (a script that ran it stops too); but its recipe ended cleanly, so it says nothing.
    assert run.wait() == -signal.SIGINT, run.output()[-4000:]
    output = run.output()
    assert "make: ***" not in output and " ended (" not in output
    assert "signal=SIGINT: stopping after the current epoch" in output
    assert " stopped" in output and "Finished server process" in output
    assert run.left_behind() == {}


def test_make_up_stopped_by_sigterm_stops_both_and_fails(up):
    run = up(free_port(), terminal=True)
    run.wait_until_serving()
    os.kill(run.process.pid, signal.SIGTERM)  # as `kill <make>` does
    assert run.wait() != 0
    output = run.output()
    assert "signal=SIGTERM: stopping after the current epoch" in output
    assert " stopped" in output and "Finished server process" in output
    assert run.left_behind() == {}


@pytest.mark.parametrize("target", ["up", "worker"])
def test_running_installs_what_running_needs_and_no_dev_tools(tmp_path, target):
    fresh = tmp_path / "venv"  # a venv make has never installed into: what would it run?
    planned = subprocess.run(
        ["make", "--dry-run", target, f"VENV={fresh}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")},
    )
    assert planned.returncode == 0, planned.stderr
    installs = [line for line in planned.stdout.splitlines() if "pip install" in line]
    assert installs == [
        f"{fresh}/bin/python -m pip install --progress-bar on --editable '.[postgres]'"
    ]


def terminal_session(command: list[str], terminal: bool) -> subprocess.CompletedProcess[str]:
    """The command run as a shell runs a job: in a session of its own whose controlling
    terminal, a pseudo-terminal, is its standard input, or off a terminal."""
    controller, stdin = pty.openpty() if terminal else (None, subprocess.DEVNULL)
    try:
        return subprocess.run(
            command,
            cwd=ROOT,
            stdin=stdin,
            capture_output=True,
            text=True,
            start_new_session=True,
            preexec_fn=(lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)) if terminal else None,
            timeout=60,
        )
    finally:
        if controller is not None:
            os.close(controller)
            os.close(stdin)


def ignored_signals(status: str) -> set[int]:
    """The signals a process ignores, from its /proc/PID/status."""
    (mask,) = (line.split()[1] for line in status.splitlines() if line.startswith("SigIgn:"))
    return {number for number in range(1, 65) if int(mask, 16) >> (number - 1) & 1}


@pytest.mark.parametrize("terminal", [True, False], ids=["on a terminal", "off a terminal"])
def test_the_command_gets_sigpipe_and_sigxfsz_as_commands_expect(terminal):
    foreground = [sys.executable, "scripts/foreground.py"]
    done = terminal_session([*foreground, "cat", "/proc/self/status"], terminal)
    assert done.returncode == 0, done.stderr
    ignored = ignored_signals(done.stdout)
    assert signal.SIGPIPE not in ignored and signal.SIGXFSZ not in ignored
    # Ctrl-Z, which only a terminal sends, is ignored on one.
    assert (signal.SIGTSTP in ignored) is terminal

    # A writer into a closed pipe ends as commands do there, silently.
    done = terminal_session(["bash", "-c", f"{' '.join(foreground)} yes | head -n1"], terminal)
    assert (done.returncode, done.stdout, done.stderr) == (0, "y\n", "")


def test_nothing_starts_when_the_terminal_cannot_be_handed_over(tmp_path):
    started = tmp_path / "started"
    handing_over = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("foreground", "scripts/foreground.py")
foreground = importlib.util.module_from_spec(spec)
spec.loader.exec_module(foreground)
foreground.run_in_foreground(["touch", {str(started)!r}])
"""
    # Standard input is no terminal, so handing it over fails and the parent ends; the output
    # pipes end only once its child has too, whatever it did.
    done = terminal_session([sys.executable, "-c", handing_over], terminal=False)
    assert "OSError" in done.stderr and done.returncode == 1
    assert not started.exists()
