"""docker-compose.yml, docker-compose.gpu.yml and the Dockerfile agree with the code and with each
other: every service's command exists and parses with the real CLI, the image holds every package,
only the GPU override's trainer is CUDA, and the settings a first `docker-compose up` needs are there.
tests/e2e/test_compose_up.py runs the stack."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import tomllib
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # `<<` merge keys resolved
GPU = yaml.safe_load((ROOT / "docker-compose.gpu.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _interpolate(text: str) -> str:
    """Compose's `${VAR:-default}` with no VAR set: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", text)


def _argv(service: dict) -> list[str]:
    entry = service.get("entrypoint") or []
    command = service.get("command") or []
    if isinstance(command, str):
        command = shlex.split(_interpolate(command))
    return [*entry, *command]


def _programs(service: dict) -> list[list[str]]:
    """The command lines a service runs: its command, or each `&&` step of an `sh -c` script."""
    argv = _argv(service)
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    return [shlex.split(step.strip().removeprefix("exec ")) for step in argv[2].split("&&")]


def _option(argv: list[str], name: str) -> str:
    for i, a in enumerate(argv):
        if a == name:
            return argv[i + 1]
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{name} not in {argv}")


def _documented_runs() -> list[list[str]]:
    """The `docker compose run --rm curate ...` examples in the file's header, joined across lines."""
    header = "\n".join(line[1:].strip() for line in (ROOT / "docker-compose.yml").read_text().splitlines()
                       if line.startswith("#"))
    runs = re.findall(r"docker[ -]compose run --rm curate ((?:[^\n]*\\\n)*[^\n]*)", header)
    return [["curate", *shlex.split(run.replace("\\\n", " "))] for run in runs]


def _parse(argv: list[str], volume: Path) -> None:
    """Parse `argv` with the real click command it names (no side effects: nothing is invoked)."""
    argv = [str(volume) if a == "/data" else a.replace("/data/", f"{volume}/") for a in argv]
    if argv[0] == "curate":
        from scale_alibi.cli.main import main as group

        command = group.get_command(click.Context(group), argv[1])
        assert command is not None, f"`curate {argv[1]}` is not a command"
        command.make_context(f"curate {argv[1]}", argv[2:])
    elif argv[:2] in (["dask", "scheduler"], ["dask", "worker"]):
        from distributed.cli import dask_scheduler, dask_worker

        command = dask_scheduler.main if argv[1] == "scheduler" else dask_worker.main
        command.make_context(f"dask {argv[1]}", argv[2:])
    else:
        pytest.fail(f"unknown program in a compose command: {argv}")


SERVICES = {**COMPOSE["services"], "trainer (gpu)": {**COMPOSE["services"]["trainer"], **GPU["services"]["trainer"]}}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_service_command_parses_with_the_real_cli(name, tmp_path):
    if _argv(SERVICES[name]) == ["curate"]:  # the `cli` profile: its documented runs are checked below
        return
    for argv in _programs(SERVICES[name]):
        _parse(argv, tmp_path)


def test_the_documented_cluster_build_parses():
    runs = _documented_runs()
    assert runs and all(run[1] == "build" for run in runs)
    for run in runs:
        _parse(run, Path("/nonexistent-volume"))


def test_the_image_copies_every_package_the_wheel_installs():
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    copied = set(re.findall(r"^COPY (\S+) \1$", DOCKERFILE, flags=re.M))
    assert packages <= copied, f"the Dockerfile does not COPY {sorted(packages - copied)}"


def _stage(name: str) -> str:
    """The Dockerfile's lines of stage `name`, up to the next FROM."""
    return re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, flags=re.M | re.S).group(1)


def test_only_the_gpu_override_builds_the_cuda_image_and_reserves_a_gpu():
    assert re.search(r"^ARG BASE_IMAGE=\S+$", DOCKERFILE, flags=re.M) and "FROM ${BASE_IMAGE} AS base" in DOCKERFILE
    assert re.search(r"^ARG TORCH_INDEX=(\S+)$", _stage("cpu"), flags=re.M).group(1) == CPU_INDEX
    assert "TORCH_INDEX" not in _stage("gpu")  # PyPI's torch of the pinned version is its CUDA build
    for name, service in COMPOSE["services"].items():
        assert service["build"]["target"] == "cpu" and "deploy" not in service, name
        assert "--device cuda" not in " ".join(_argv(service)), name
    gpu = GPU["services"]["trainer"]
    assert gpu["build"]["target"] == "gpu" and gpu["image"] != COMPOSE["services"]["trainer"]["image"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert _option(_argv(gpu), "--device") == "cuda"


def test_both_images_install_the_torch_the_readme_pins():
    readme = re.search(r"pip install torch==(\S+) -e \. && curate demo", (ROOT / "README.md").read_text()).group(1)
    for stage in ("cpu", "gpu"):
        assert re.search(r"^ARG TORCH_VERSION=(\S+)$", _stage(stage), flags=re.M).group(1) == readme, stage
        assert '"torch==${TORCH_VERSION}"' in _stage(stage), stage


def test_the_gpu_image_has_a_compiler_and_reports_its_torch_at_start():
    gpu = _stage("gpu")
    assert re.search(r"apt-get install .*\bgcc\b", gpu) and "ENTRYPOINT" in gpu
    check = (ROOT / "docker" / re.search(r"COPY docker/(\S+) /usr/local/bin/(\S+)", gpu).group(1)).read_text()
    assert "torch.version.cuda" in check and "torch.__version__" in check and "--version" in check


def test_images_run_as_a_user_with_the_s3_extra_and_the_dashboard_where_it_is_published():
    base = _stage("base")
    assert "optional-dependencies']['s3']" in base and "useradd" in base
    for stage in ("cpu", "gpu"):
        assert re.search(r"^USER (?!root)\w+$", _stage(stage), flags=re.M), stage
    assert "bokeh" in _stage("cpu")  # the image of the scheduler, which publishes the dashboard
    assert "8787" in " ".join(COMPOSE["services"]["scheduler"]["ports"])


def test_one_release_variable_names_what_build_writes_and_server_and_trainer_use():
    build, stats = _programs(COMPOSE["services"]["build"])
    assert build[:2] == ["curate", "build"] and stats[:2] == ["curate", "stats"]
    release = _option(build, "--release")
    assert _option(stats, "--release") == release and _option(stats, "--data") == _option(build, "--out") == "/data"
    assert _option(_argv(COMPOSE["services"]["trainer"]), "--release") == release
    assert "${RELEASE:-" in COMPOSE["services"]["build"]["command"] and "${RELEASE:-" in COMPOSE["services"]["trainer"]["command"]
    assert COMPOSE["services"]["server"]["depends_on"]["build"]["condition"] == "service_completed_successfully"
    # offline by default: the build reads the world service's catalog; one variable switches it
    assert re.search(r"--catalog \$\{CATALOG:-http://world:8080\}", COMPOSE["services"]["build"]["command"])


def test_workers_share_their_container_memory_limit_and_the_trainer_has_shared_memory():
    worker = COMPOSE["services"]["worker"]
    argv = _argv(worker)
    assert _option(argv, "--memory-limit") == "auto" and "replicas" not in str(worker.get("deploy", {}))
    limit = _interpolate(worker["mem_limit"])
    gib = float(limit[:-1]) / (1 if limit.endswith("g") else 1024)
    assert gib / int(_option(argv, "--nworkers")) >= 2  # docs/scaling.md: 2 GiB per single-threaded worker
    trainer = COMPOSE["services"]["trainer"]
    assert trainer.get("ipc") == "host" or _interpolate(str(trainer.get("shm_size"))).endswith("gb")


def test_the_server_healthcheck_has_a_start_period():
    check = COMPOSE["services"]["server"]["healthcheck"]
    assert _interpolate(check["start_period"]).endswith("s") and int(_interpolate(check["start_period"])[:-1]) >= 60


def test_the_server_healthcheck_hits_a_route_the_app_serves(tmp_path):
    from scale_alibi.serve.app import create_app

    check = " ".join(COMPOSE["services"]["server"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:\d+(/[\w/]*)", check).group(1)
    from starlette.testclient import TestClient

    with TestClient(create_app(tmp_path)) as client:  # an empty data directory is a healthy server
        assert client.get(path).status_code == 200
