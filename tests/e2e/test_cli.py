"""The `tricklab` console script, run as people and scripts run it, against real API and
worker processes: its output on a terminal and off one, `-o json`, and its exit statuses."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.spec import DATASET_CLASSES, JobSpec
from tests.support.auth import ADMIN_TOKEN
from tests.support.cluster import Cluster, serving, wait_for
from tests.support.data import TINY, tiny_images
from tests.support.ids import chosen_ids
from tests.support.images import encode

pytestmark = pytest.mark.e2e
TRICKLAB = Path(sys.prefix) / "bin" / "tricklab"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
IMAGES, LABELS = tiny_images(2, seed=21)
NO_SUCH_ID = "0" * 32


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[Cluster]:
    with serving(tmp_path_factory.mktemp("cli"), data_dir) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny job spec, its study, and two images to classify."""
    folder = tmp_path_factory.mktemp("files")
    (folder / "tiny.json").write_text(json.dumps(TINY))
    (folder / "study.json").write_text(json.dumps({"base": TINY, "repeats": 2}))
    for number, image in enumerate(IMAGES):
        (folder / f"{number}.png").write_bytes(encode(image))
    return folder


def environment(stack: Cluster, config: Path, **extra: str) -> dict[str, str]:
    """The URL and the admin's token, and a config folder of the test's own, so that a saved
    login of whoever runs the tests plays no part."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRICKLAB_")}
    return {
        **env,
        "TRICKLAB_URL": stack.url,
        "TRICKLAB_TOKEN": ADMIN_TOKEN,
        "XDG_CONFIG_HOME": str(config),
        **extra,
    }


def tricklab(
    stack: Cluster, *args: str, cwd: Path | None = None, **env: str
) -> subprocess.CompletedProcess[str]:
    folder = cwd or stack.root
    result = subprocess.run(
        [str(TRICKLAB), *args],
        capture_output=True,
        text=True,
        env=environment(stack, folder / "config", **env),
        cwd=folder,
        timeout=120,
    )
    assert "Traceback" not in result.stderr, result.stderr  # expected failures never show one
    return result


def in_terminal(stack: Cluster, *args: str) -> tuple[int, str]:
    """Run in a pseudo-terminal, 120 columns wide: the exit status and what it showed."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = environment(stack, stack.root / "config", TERM="xterm-256color", COLUMNS="120")
    process = subprocess.Popen(
        [str(TRICKLAB), *args], stdin=terminal, stdout=terminal, stderr=terminal, env=env
    )
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if select.select([controller], [], [], 1)[0]:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process has closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    os.close(controller)
    return process.wait(timeout=30), ANSI.sub("", shown.decode(errors="replace"))


def test_submit_wait_follows_a_tiny_job_prints_its_id_and_exits_0(stack, files):
    submitted = tricklab(
        stack, "jobs", "submit", "-f", str(files / "tiny.json"), "--trick", "dropout:rate=0.2",
        "--epochs", "3", "--wait",
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()  # the id alone: `id=$(tricklab jobs submit ...)`
    assert re.fullmatch(r"[0-9a-f]{32}", job_id), submitted.stdout
    job = stack.client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["spec"]["epochs"] == 3
    assert job["spec"]["tricks"] == [{"name": "dropout", "rate": 0.2, "spatial": False}]
    # Off a terminal: one plain line per epoch, then how it ended.
    lines = submitted.stderr.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert "train_loss=" in epochs[0] and "test_accuracy=" in epochs[0]
    assert lines[-1].startswith(f"job {job_id} succeeded: test_accuracy=")

    # Watching an ended job replays it on stdout, and exits as it ended.
    watched = tricklab(stack, "jobs", "watch", job_id)
    assert watched.returncode == 0
    assert watched.stdout.splitlines()[-4:] == [*epochs, lines[-1]]

    for command, path in [
        (("jobs", "show", job_id), f"/v1/jobs/{job_id}"),
        (("jobs", "list"), "/v1/jobs"),
        (("jobs", "list", "--trick", "dropout"), "/v1/jobs?trick=dropout"),
        (("jobs", "metrics", job_id), f"/v1/jobs/{job_id}/metrics"),
        (("tricks",), "/v1/tricks"),
    ]:
        printed = tricklab(stack, *command, "-o", "json")
        assert printed.returncode == 0, printed.stderr
        assert json.loads(printed.stdout) == stack.client.get(path).json(), command
    shown = tricklab(stack, "jobs", "show", job_id)
    assert (
        job_id in shown.stdout
        and "succeeded" in shown.stdout
        and "dropout(rate=0.2, spatial=False)" in shown.stdout
    )

    images = [str(files / "0.png"), str(files / "1.png")]
    predicted = tricklab(stack, "predict", job_id, *images)
    assert predicted.returncode == 0, predicted.stderr
    classes = DATASET_CLASSES["fashion_mnist"]
    for image, label in zip(images, LABELS, strict=True):
        row = next(line for line in predicted.stdout.splitlines() if image in line)
        assert classes[label] in row and "%" in row
    as_json = json.loads(tricklab(stack, "predict", job_id, *images, "-o", "json").stdout)
    assert [p["label"] for p in as_json["predictions"]] == LABELS.tolist()

    target = files / "model.keras"
    downloaded = tricklab(stack, "jobs", "download", job_id, "-O", str(target))
    assert downloaded.returncode == 0, downloaded.stderr
    assert target.read_bytes() == stack.client.get(f"/v1/jobs/{job_id}/model").content


def test_every_job_command_takes_the_short_id_that_tables_show(stack, files, tmp_path):
    submitted = tricklab(stack, "jobs", "submit", "-f", str(files / "tiny.json"), "--wait")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    short = job_id[:8]
    for command, path in [
        (("jobs", "show", short), f"/v1/jobs/{job_id}"),
        (("jobs", "metrics", short), f"/v1/jobs/{job_id}/metrics"),
        (("jobs", "watch", short), f"/v1/jobs/{job_id}"),
    ]:
        printed = tricklab(stack, *command, "-o", "json")
        assert printed.returncode == 0, (command, printed.stderr)
        assert json.loads(printed.stdout) == stack.client.get(path).json(), command
    predicted = tricklab(stack, "predict", short, str(files / "0.png"), "-o", "json")
    assert predicted.returncode == 0 and json.loads(predicted.stdout)["job_id"] == job_id
    downloaded = tricklab(stack, "jobs", "download", job_id[:4], cwd=tmp_path)
    assert downloaded.returncode == 0, downloaded.stderr
    assert (tmp_path / f"tricklab-{job_id}.keras").read_bytes() == (
        stack.client.get(f"/v1/jobs/{job_id}/model").content
    )
    queued = tricklab(stack, "jobs", "submit", "-f", str(files / "tiny.json"), "--epochs", "1000")
    cancelled = tricklab(stack, "jobs", "cancel", queued.stdout.strip()[:8], "-o", "json")
    assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "cancelled"


def test_a_short_id_that_names_none_or_several_it_can_see_exits_4_saying_why(stack, files):
    shared = "abcdef01"
    mine, also_mine, bobs = shared + "0" * 24, shared + "1" * 24, shared + "2" * 24
    bob = stack.client.post("/v1/users", json={"name": "bob-cli", "role": "user"}).json()
    spec = JobSpec.model_validate(TINY)
    with chosen_ids(mine, also_mine, bobs):
        for owner in ("admin", "admin", "bob-cli"):
            stack.store.cancel(stack.store.enqueue(spec, owner)[0].id)

    several = tricklab(stack, "jobs", "show", shared)  # the admin sees everyone's jobs
    assert several.returncode == 4 and several.stdout == ""
    assert (
        f"'{shared}' is ambiguous: 3 jobs you can see have ids starting with it" in several.stderr
    )
    assert all(f"{job_id} cancelled" in several.stderr for job_id in (mine, also_mine, bobs))
    assert tricklab(stack, "jobs", "cancel", mine[:9], "-o", "json").returncode == 0

    # Bob's prefix names his own job alone: the admin's that start the same stay unseen.
    as_bob = {"TRICKLAB_TOKEN": bob["token"]}
    his = tricklab(stack, "jobs", "show", shared, "-o", "json", **as_bob)
    assert his.returncode == 0 and json.loads(his.stdout)["id"] == bobs, his.stderr
    unseen = tricklab(stack, "jobs", "watch", mine[:12], **as_bob)
    assert unseen.returncode == 4 and mine not in unseen.stderr
    assert f"no job you can see has an id starting with '{mine[:12]}'" in unseen.stderr

    image = str(files / "0.png")
    for command in (("jobs", "show"), ("studies", "report"), ("predict",)):
        for given, reason in (
            ("fffffffe", "has an id starting with 'fffffffe'"),
            ("abc", "an id is 32 hex digits"),
            ("not-an-id", "an id is 32 hex digits"),
        ):
            args = (*command, given, image) if command == ("predict",) else (*command, given)
            missing = tricklab(stack, *args)
            assert missing.returncode == 4 and reason in missing.stderr, (args, missing.stderr)


def test_a_job_cancelled_while_watched_exits_1(stack, files):
    submitted = tricklab(
        stack, "jobs", "submit", "-f", str(files / "tiny.json"), "--epochs", "1000"
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    watch = watching(stack, job_id)
    try:
        assert watch.stdout is not None
        while not (line := watch.stdout.readline()).startswith("epoch "):
            assert line, (
                f"watch ended before an epoch: {watch.stderr.read() if watch.stderr else ''}"
            )
        cancelled = tricklab(stack, "jobs", "cancel", job_id, "-o", "json")
        assert cancelled.returncode == 0 and json.loads(cancelled.stdout)["status"] == "cancelled"
        assert watch.wait(timeout=60) == 1
        rest = watch.stdout.read().splitlines()
        assert rest[-1] == f"job {job_id} cancelled"
    finally:
        watch.kill()
        watch.wait()
    again = tricklab(stack, "jobs", "cancel", job_id)
    assert again.returncode == 0  # cancelling twice is harmless, as the API says


def test_on_a_terminal_the_progress_is_a_live_bar_with_the_latest_metrics(stack, files):
    status, shown = in_terminal(
        stack, "jobs", "submit", "-f", str(files / "tiny.json"), "--epochs", "3", "--wait"
    )
    assert status == 0, shown
    assert "submitted job " in shown
    assert "3/3 epochs" in shown and "ETA" in shown  # the bar
    assert "test_acc" in shown and "train_loss" in shown  # the table of the latest epochs
    assert "epoch 1/3 train_loss=" not in shown  # no plain lines on a terminal
    assert re.search(r"job [0-9a-f]{32} succeeded: test_accuracy=", shown)


def test_a_typo_in_a_trick_exits_2_and_names_the_catalogue(stack):
    refused = tricklab(stack, "jobs", "submit", "--trick", "dropot", "--epochs", "0")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "tricks[0]: unknown trick 'dropot' (did you mean 'dropout'?)" in refused.stderr
    catalogue = [trick["name"] for trick in stack.client.get("/v1/tricks").json()["tricks"]]
    assert all(name in refused.stderr for name in catalogue)
    assert "epochs:" in refused.stderr  # every invalid field, not only the first
    malformed = tricklab(stack, "jobs", "submit", "--trick", "weight_decay:l2")
    assert malformed.returncode == 2 and "--trick" in malformed.stderr


def test_an_unknown_id_exits_4(stack):
    for command in (
        ("jobs", "show"),
        ("jobs", "watch"),
        ("studies", "show"),
        ("studies", "report"),
    ):
        missing = tricklab(stack, *command, NO_SUCH_ID)
        assert missing.returncode == 4, (command, missing.stderr)
        assert NO_SUCH_ID in missing.stderr


def test_a_server_that_is_down_or_a_wrong_token_exits_3(stack):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
    down = tricklab(stack, "--url", closed, "jobs", "list")
    assert down.returncode == 3 and f"cannot reach the tricklab API at {closed}" in down.stderr
    down = tricklab(stack, "jobs", "watch", NO_SUCH_ID, TRICKLAB_URL=closed)
    assert down.returncode == 3
    wrong = tricklab(stack, "--token", "tl_wrong", "jobs", "list")
    assert wrong.returncode == 3 and "unknown token" in wrong.stderr


def test_login_checks_the_token_and_saves_it_for_later_commands(stack, tmp_path):
    refused = tricklab(stack, "login", "--token", "tl_wrong", cwd=tmp_path)
    assert refused.returncode == 3 and not (tmp_path / "config").exists()
    logged_in = tricklab(stack, "login", "--url", stack.url, "--token", ADMIN_TOKEN, cwd=tmp_path)
    assert logged_in.returncode == 0 and "as admin (admin)" in logged_in.stdout
    saved = tmp_path / "config" / "tricklab" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    # Neither the URL nor the token in the environment now: both come from the saved login.
    listed = tricklab(
        stack, "jobs", "list", "-o", "json", cwd=tmp_path, TRICKLAB_URL="", TRICKLAB_TOKEN=""
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["total"] == stack.client.get("/v1/jobs").json()["total"]


def test_a_study_is_created_followed_and_reported(stack, files, tmp_path):
    created = tricklab(
        stack, "studies", "create", "-f", str(files / "study.json"), "--trick", "dropout",
        "--name", "dropout or not", "--wait",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    study_id = created.stdout.strip()
    assert created.stderr.splitlines()[-1] == (
        f"study {study_id} succeeded: 4/4 jobs ended (4 succeeded)"
    )
    report = tricklab(stack, "studies", "report", study_id, "-o", "json")
    assert json.loads(report.stdout) == stack.client.get(f"/v1/studies/{study_id}/report").json()
    shown = tricklab(stack, "studies", "report", study_id)
    assert "base + dropout" in shown.stdout and "dropout:" in shown.stdout
    csv = tricklab(stack, "studies", "report", study_id, "--csv", "effects")
    api_csv = stack.client.get(f"/v1/studies/{study_id}/report.csv", params={"table": "effects"})
    assert csv.stdout == api_csv.text
    plot = tricklab(stack, "studies", "plot", study_id, "curves", "-O", str(tmp_path / "c.png"))
    assert plot.returncode == 0 and (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    listed = tricklab(stack, "studies", "list", "-o", "json")
    assert json.loads(listed.stdout) == stack.client.get("/v1/studies").json()
    # The 8 digits the dashboard and narrow tables show name the study in every command.
    short = study_id[:8]
    shown = tricklab(stack, "studies", "show", short, "-o", "json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == study_id, shown.stderr
    watched = tricklab(stack, "studies", "watch", short.upper())  # as people may copy it
    assert watched.returncode == 0 and f"study {study_id} succeeded" in watched.stdout
    csv = tricklab(stack, "studies", "report", short, "--csv", "effects")
    assert csv.stdout == api_csv.text
    plot = tricklab(stack, "studies", "plot", short, "gap", cwd=tmp_path)
    assert plot.returncode == 0 and (tmp_path / f"study-{study_id}-gap.png").exists()


def watching(stack: Cluster, job_id: str, *options: str) -> subprocess.Popen[str]:
    """`tricklab [options] jobs watch JOB` running, its output in pipes."""
    return subprocess.Popen(
        [str(TRICKLAB), *options, "jobs", "watch", job_id],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(stack, stack.root / "config"),
    )


class Relay:
    """A TCP relay in front of the API whose connections can be cut, as a proxy's or a
    network's are: cheaper than restarting the API, and the same break for the client."""

    def __init__(self, url: str) -> None:
        self.target = ("127.0.0.1", int(url.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sockets: list[socket.socket] = []
        self.connections = 0  # opened so far
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        for end in self.sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.cut()
        self.listener.close()


def test_watch_reconnects_when_its_connection_drops_losing_and_repeating_no_epoch(stack, files):
    submitted = tricklab(
        stack, "jobs", "submit", "-f", str(files / "tiny.json"), "--epochs", "1000"
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    relay = Relay(stack.url)
    watch = watching(stack, job_id, "--url", relay.url)
    try:
        assert watch.stdout is not None
        lines = [watch.stdout.readline()]
        # Twice: a connection opened again can break again. Each cut waits for the watch to
        # be connected (the lines read may lag behind the stream it holds).
        for connection, cut_after in enumerate((2, 4), start=1):
            while not lines[-1].startswith(f"epoch {cut_after}/"):
                assert lines[-1], f"watch ended: {lines} {watch.stderr}"
                lines.append(watch.stdout.readline())
            wait_for(lambda n=connection: relay.connections == n, 30, f"connection {connection}")
            relay.cut()
        while not lines[-1].startswith("epoch 6/"):  # resumed
            assert lines[-1], f"watch ended: {lines}"
            lines.append(watch.stdout.readline())
        stack.client.post(f"/v1/jobs/{job_id}/cancel")  # 409 if it has already succeeded
        assert watch.wait(timeout=60) in (0, 1)
        final = stack.client.get(f"/v1/jobs/{job_id}").json()
        lines += watch.stdout.read().splitlines(keepends=True)
    finally:
        watch.kill()
        watch.wait()
        relay.close()
    assert watch.returncode == (0 if final["status"] == "succeeded" else 1)
    epochs = [int(line.split()[1].split("/")[0]) for line in lines if line.startswith("epoch ")]
    assert epochs == list(range(1, final["epochs_done"] + 1))  # every epoch, once, in order
    assert lines[-1].startswith(f"job {job_id} {final['status']}")
    assert stack.log("api").count(f"GET /v1/jobs/{job_id}/events") == 3  # two reconnections
