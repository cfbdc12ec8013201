"""What TensorFlow's native code writes to standard error as it loads on a machine without an
NVIDIA GPU, and the filter that leaves those lines out while it loads.

The filter is a process of its own, this file run as a script: it reads what the loading
process writes to its standard error through a pipe and passes each line on as it arrives.
A thread could not: it dies with the process it runs in (a fatal check's abort, a segfault,
the OOM killer), and cannot run while native code holds the interpreter, so the last lines
before such an end, the ones that say why, would be lost. The script imports the standard
library alone, so that it starts in milliseconds, on any path."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

# What TensorFlow's native code writes to standard error as it loads and looks for CUDA, on a
# machine without an NVIDIA GPU: information (absl's INFO lines, written before absl is set
# up, which TF_CPP_MIN_LOG_LEVEL does not reach), the wrapped tail of one of them, and CUDA
# failing to start, which is no failure where there is no GPU. Warnings and every other error
# stay.
NATIVE_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"
    r"|I\d{4} [\d:.]+ +\d+ [\w./-]+:\d+\] "
    r"|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: "
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler"
)
# How long the end of the block waits for the filter to pass on what is left in the pipe. It
# ends sooner, once every writer has closed the pipe; a process started in the block may keep
# it open, and the filter then serves that process for as long as it writes.
FILTER_DRAIN_SECONDS = 10.0


def gpu_present(devices: Path = Path("/dev")) -> bool:
    """Whether this machine shows an NVIDIA GPU (its driver's device files)."""
    return any(devices.glob("nvidia[0-9]*"))


def is_noise(line: bytes) -> bool:
    return NATIVE_NOISE.match(line.decode(errors="replace")) is not None


def write_all(target: int, data: bytes) -> None:
    while data:
        data = data[os.write(target, data) :]


def forward_kept(source: int, target: int) -> None:
    """Copy source to target line by line as lines arrive, without the lines of NATIVE_NOISE;
    a last line without its line break too, once source ends."""
    pending, reachable = b"", True
    while chunk := os.read(source, 65536):
        *lines, pending = (pending + chunk).split(b"\n")
        kept = b"".join(line + b"\n" for line in lines if not is_noise(line))
        try:
            if reachable:
                write_all(target, kept)
        except OSError:
            # Standard error is gone; read on all the same, or the writers would block.
            reachable = False
    if pending and reachable and not is_noise(pending):
        with contextlib.suppress(OSError):
            write_all(target, pending)


@contextlib.contextmanager
def native_noise_dropped() -> Iterator[None]:
    """Standard error, file descriptor and all, passed through the filter while the block runs:
    only on a machine without an NVIDIA GPU, and only when TF_CPP_MIN_LOG_LEVEL is not set
    (whoever sets it chooses what TensorFlow shows). What the block writes is on standard error
    when the block ends, or as soon as its process does, however it ends."""
    if gpu_present() or "TF_CPP_MIN_LOG_LEVEL" in os.environ:
        yield
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    try:
        # -I -S: neither the environment nor the site's packages slow its start or change it.
        filtering: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__], stdin=read_end, stdout=subprocess.DEVNULL
        )
    except OSError:
        filtering = None  # no interpreter to run it with (an embedded Python): all of it shows
    os.close(read_end)
    if filtering is None:
        os.close(write_end)
        yield
        return
    original = os.dup(2)
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(original, 2)
        os.close(original)
        with contextlib.suppress(subprocess.TimeoutExpired):
            filtering.wait(FILTER_DRAIN_SECONDS)


if __name__ == "__main__":
    # Ctrl-C reaches the terminal's whole foreground group, this too; the filter ends when its
    # writers have, so that it passes on what they wrote as they stopped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    forward_kept(0, 2)
