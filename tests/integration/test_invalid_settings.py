"""Invalid settings, through every door that reads them: one line naming each bad setting and
the rule it breaks, never a traceback, never the value (it may be a secret), and before
TensorFlow loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.config import Settings, settings_problems

ROOT = Path(__file__).resolve().parents[2]
SECRET = "hunter2-but-far-too-short"
# Runs a module as `python -m` does, then records whether it loaded TensorFlow on its way out.
RUN_MODULE = (
    "import atexit, os, runpy, sys\n"
    "atexit.register(lambda: open(os.environ['IMPORTED'], 'w').write(str('tensorflow' in "
    "sys.modules)))\n"
    "sys.argv = [sys.argv[1], *sys.argv[2:]]\n"
    "runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)\n"
)


def environment(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("TRICKLAB_")}
    return {
        **env,
        "TRICKLAB_DATABASE_URL": f"sqlite:///{tmp_path / 'tricklab.db'}",
        "TRICKLAB_ARTIFACTS_DIR": str(tmp_path / "artifacts"),
        "IMPORTED": str(tmp_path / "imported"),
        **{f"TRICKLAB_{key}": value for key, value in settings.items()},
    }


def test_a_refused_secret_is_named_with_its_rule_and_never_echoed():
    with pytest.raises(ValidationError) as refused:
        Settings(admin_token=SECRET, _env_file=None)
    assert SECRET not in str(refused.value) and SECRET not in repr(refused.value)
    assert settings_problems(refused.value) == (
        "TRICKLAB_ADMIN_TOKEN: must be at least 32 characters (e.g. `openssl rand -hex 32`)"
    )


@pytest.mark.parametrize(
    "module",
    [
        ["service"],
        ["worker", "--once"],
        ["jobqueue.db"],
        ["jobqueue.retention", "--metrics-days", "1"],
    ],
    ids=lambda module: module[0],
)
def test_every_command_says_what_is_wrong_in_one_line(tmp_path, module):
    done = subprocess.run(
        [sys.executable, "-c", RUN_MODULE, *module],
        env=environment(tmp_path, ADMIN_TOKEN=SECRET, PORT="99999"),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr == (
        "tricklab: invalid settings: TRICKLAB_ADMIN_TOKEN: must be at least 32 characters "
        "(e.g. `openssl rand -hex 32`); TRICKLAB_PORT: Input should be less than or equal to "
        "65535\n"
    )
    assert SECRET not in done.stdout
    assert (tmp_path / "imported").read_text() == "False"  # refused before TensorFlow loads


def test_the_command_line_neither_fails_nor_echoes_on_invalid_settings(tmp_path):
    # tricklab reads the settings only to find a local admin token: invalid ones give none.
    done = subprocess.run(
        [str(Path(sys.prefix) / "bin" / "tricklab"), "jobs", "list"],
        env={**environment(tmp_path, ADMIN_TOKEN=SECRET), "TRICKLAB_URL": "http://127.0.0.1:9"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3, done.stderr
    assert "Traceback" not in done.stderr and SECRET not in done.stderr + done.stdout
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_make_up_stops_at_the_one_line(tmp_path):
    venv = Path(sys.prefix)
    done = subprocess.run(
        ["make", "up", f"VENV={venv}", "-o", f"{venv}/.runtime-stamp"],
        env={
            **{
                k: v
                for k, v in environment(tmp_path, ADMIN_TOKEN=SECRET).items()
                if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")
            },
        },
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr and SECRET not in done.stderr + done.stdout
    assert done.stderr.splitlines()[0] == (
        "tricklab: invalid settings: TRICKLAB_ADMIN_TOKEN: must be at least 32 characters "
        "(e.g. `openssl rand -hex 32`)"
    )
