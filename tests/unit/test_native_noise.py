"""TensorFlow's start-up lines on a machine without a GPU: what its native code writes to
standard error while the backend loads is passed on as it is written, without the lines that
only say there is no GPU, and with everything else, in order; the last lines before the
process dies in the block (a fatal check's abort, a crash, a kill) are not lost."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from core.native_noise import NATIVE_NOISE, gpu_present

ROOT = Path(__file__).resolve().parents[2]
no_gpu = pytest.mark.skipif(gpu_present(), reason="on a machine with a GPU nothing is filtered")

# As TensorFlow 2.21 writes them on a CPU machine (the first two lines twice: two of its
# libraries log through absl of their own).
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796680364.488500   22218 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796680364.489578   22218 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1796680364.625688   22218 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F FMA, in other operations, rebuild "
    "TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796680373.269080   22218 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
]
# What must still be seen: warnings, other errors, Python's own output.
KEPT = [
    "W0000 00:00:1796680373.269080   22218 gpu_device.cc:2344] Cannot dlopen some GPU libraries.",
    "E0000 00:00:1796680373.269080   22218 op_kernel.cc:1841] OP_REQUIRES failed",
    "F0000 00:00:1796680373.269080   22218 logging.cc:1] Check failed: ok",
    "Traceback (most recent call last):",
    "ImportError: libcudnn.so.9: cannot open shared object file",
]

WRITER = """
import os, sys
from core.native_noise import native_noise_dropped
lines = sys.argv[1:]
print("before", file=sys.stderr, flush=True)
try:
    with native_noise_dropped():
        for line in lines:  # as native code writes: to the file descriptor itself
            os.write(2, (line + "\\n").encode())
        print("from python", file=sys.stderr)
        raise SystemExit(3)
finally:
    print("after", file=sys.stderr, flush=True)
"""


def unset_level() -> dict[str, str]:
    """This process's environment without TF_CPP_MIN_LOG_LEVEL, which turns the filter off and
    which importing JAX sets (the suite imports it)."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


def written(lines: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", WRITER, *lines],
        capture_output=True,
        text=True,
        env={**unset_level(), **env},
        cwd=ROOT,
        timeout=60,
    )


@no_gpu
def test_the_no_gpu_lines_are_dropped_and_the_rest_kept_in_order():
    mixed = [NOISE[0], KEPT[0], *NOISE[1:4], KEPT[1], NOISE[4], KEPT[2], NOISE[5], *KEPT[3:]]
    done = written(mixed)
    assert done.returncode == 3  # what the block raised goes on, after its output
    assert done.stderr.splitlines() == ["before", *KEPT, "from python", "after"]


# A fatal check as TensorFlow's native code fails one: its line, then the process's end.
DYING = """
import os, signal, sys
from core.native_noise import native_noise_dropped
print("before", file=sys.stderr, flush=True)
with native_noise_dropped():
    os.write(2, "\\n".join(sys.argv[1:]).encode())
    %s
print("never", file=sys.stderr, flush=True)
"""


@no_gpu
@pytest.mark.parametrize(
    ("death", "signum"),
    [
        ("os.abort()", signal.SIGABRT),
        ("os.kill(os.getpid(), signal.SIGSEGV)", signal.SIGSEGV),
        ("os.kill(os.getpid(), signal.SIGKILL)", signal.SIGKILL),  # as the OOM killer does
    ],
)
def test_what_was_written_before_the_process_died_in_the_block_is_seen(death, signum):
    last = "without its line break"
    done = subprocess.run(
        [sys.executable, "-c", DYING % death, NOISE[1], KEPT[2], NOISE[2], last],
        capture_output=True,
        text=True,
        env=unset_level(),
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == -signum
    assert done.stderr == f"before\n{KEPT[2]}\n{last}"


# Waits in the block, as a slow load does, until standard input ends or Ctrl-C.
WAITING = """
import os, sys
from core.native_noise import native_noise_dropped
with native_noise_dropped():
    os.write(2, "\\n".join(sys.argv[1:]).encode() + b"\\n")
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        os.write(2, b"interrupted\\n")
        raise SystemExit(130)
"""


def next_line(stream: subprocess.Popen[bytes], seconds: float = 30) -> bytes:
    assert stream.stderr is not None
    readable, _, _ = select.select([stream.stderr], [], [], seconds)
    assert readable, "nothing came in time"
    return stream.stderr.readline()


@no_gpu
def test_lines_are_seen_as_they_are_written_and_ctrl_c_does_not_silence_them():
    waiting = subprocess.Popen(
        [sys.executable, "-c", WAITING, NOISE[1], KEPT[0]],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=unset_level(),
        cwd=ROOT,
        start_new_session=True,  # a process group to send Ctrl-C's SIGINT to, as a terminal does
        # SIGINT as a terminal's shell leaves it, even when this suite runs in the background.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert next_line(waiting) == KEPT[0].encode() + b"\n"  # while the block still runs
        os.killpg(waiting.pid, signal.SIGINT)
        assert next_line(waiting) == b"interrupted\n"
        assert waiting.wait(60) == 130
    finally:
        waiting.kill()
        waiting.wait()


def test_whoever_sets_tf_cpp_min_log_level_sees_all_that_tensorflow_lets_through():
    done = written(NOISE, TF_CPP_MIN_LOG_LEVEL="0")
    assert done.stderr.splitlines() == ["before", *NOISE, "from python", "after"]


def test_only_the_noise_matches():
    assert all(NATIVE_NOISE.match(line) for line in NOISE)
    assert not any(NATIVE_NOISE.match(line) for line in KEPT)


def test_a_gpu_is_seen_by_its_driver_files(tmp_path):
    assert not gpu_present(tmp_path)
    (tmp_path / "nvidiactl").touch()  # the driver without a card is no GPU
    assert not gpu_present(tmp_path)
    (tmp_path / "nvidia0").touch()
    assert gpu_present(tmp_path)
