"""`python scripts/foreground.py COMMAND…`: run a command as the terminal's foreground job,
in a process group of its own, so that Ctrl-C reaches it and not whoever started it.

`make up` runs its supervisor through this. Ctrl-C on a terminal signals the whole foreground
process group; were make in it, make would take the signal as its own interruption and end
killed by it (after an `Error 130` line when its recipe exits 130), however cleanly the
recipe stopped. Here the terminal hands Ctrl-C to the command's group alone: the command
decides how it ends, and make ends as the command did.

Off a terminal, or when this is not the terminal's foreground job, the command simply
replaces this process. Whoever stops make (SIGTERM, SIGHUP) has the command's leader sent
SIGTERM. Ctrl-Z is ignored by the command and its children: a stopped server behind a
foreground make would leave the terminal to no one."""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType
from typing import NoReturn


def holds_terminal() -> bool:
    """Whether standard input is a terminal whose foreground process group is this one."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def execute(command: list[str]) -> NoReturn:
    """Replace this process with the command, with the signal dispositions a command expects
    (as subprocess gives them): Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays
    ignored through exec, so a pipeline's writer would not end when its reader did."""
    for signum in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(signum, signal.SIG_DFL)
    os.execvp(command[0], command)


def become_command(ready: int, go: int, command: list[str]) -> NoReturn:
    """The forked child: once the parent has given its group the terminal, the command."""
    try:
        os.close(go)
        # Anything but the parent's byte (end of file: it died, or failed to hand over the
        # terminal) leaves a group no one owns, which Ctrl-C could not reach: nothing starts.
        if os.read(ready, 1) != b"x":
            os._exit(1)
        os.close(ready)
        signal.signal(signal.SIGTSTP, signal.SIG_IGN)  # inherited through exec
        execute(command)
    except OSError as error:
        print(f"foreground.py: {command[0]}: {error.strerror}", file=sys.stderr)
    finally:
        # Never back into the parent's code, whatever happened (an interrupt too).
        os._exit(127)


def run_in_foreground(command: list[str]) -> int:
    """Fork the command into a group of its own, give it the terminal, wait for it, take the
    terminal back; its exit status (128 + N when signal N ended it)."""
    ready, go = os.pipe()
    child = os.fork()
    if child == 0:
        become_command(ready, go, command)
    os.close(ready)
    os.setpgid(child, child)
    # A group that is not the foreground may take the terminal back only with SIGTTOU ignored.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    own = os.getpgrp()
    os.tcsetpgrp(0, child)
    os.write(go, b"x")
    os.close(go)

    def stop(signum: int, _frame: FrameType | None) -> None:
        # The leader alone: it stops its children itself, each once (a second signal would
        # stop a worker mid-epoch). SIGINT, sent to make's group as a whole, is Ctrl-C's.
        if signum == signal.SIGINT:
            os.killpg(child, signal.SIGINT)
        else:
            os.kill(child, signal.SIGTERM)

    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, stop)
    try:
        _, status = os.waitpid(child, 0)
    finally:
        os.tcsetpgrp(0, own)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python scripts/foreground.py COMMAND [ARG…]", file=sys.stderr)
        return 2
    if not holds_terminal():
        execute(argv)
    return run_in_foreground(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
