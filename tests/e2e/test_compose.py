"""docker-compose.yml and the Dockerfile agree with the code: every service's command exists and
parses with the real CLI, the image holds every package, and only the trainer's image is CUDA."""

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


def _documented_runs() -> list[list[str]]:
    """The `docker compose run --rm curate ...` examples in the file's header, joined across lines."""
    header = "\n".join(line[1:].strip() for line in (ROOT / "docker-compose.yml").read_text().splitlines()
                       if line.startswith("#"))
    runs = re.findall(r"docker compose run --rm curate ((?:[^\n]*\\\n)*[^\n]*)", header)
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


@pytest.mark.parametrize("name", sorted(COMPOSE["services"]))
def test_every_service_command_parses_with_the_real_cli(name, tmp_path):
    argv = _argv(COMPOSE["services"][name])
    if argv == ["curate"]:  # the `cli` profile: its documented runs are checked below
        return
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


def test_only_the_trainer_image_is_built_with_the_cuda_torch_wheel():
    default_index = re.search(r"^ARG TORCH_INDEX=(\S+)$", DOCKERFILE, flags=re.M).group(1)
    assert default_index == CPU_INDEX
    for name, service in COMPOSE["services"].items():
        index = (service.get("build") or {}).get("args", {}).get("TORCH_INDEX", default_index)
        gpu = bool(service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices"))
        assert ("/whl/cu" in index) == gpu, f"service {name}: GPU reservation {gpu} but torch from {index}"
    images = {s["image"] for s in COMPOSE["services"].values()}
    assert len(images) == 2, "one CPU image shared by the other roles and one GPU image for the trainer"


def test_the_server_healthcheck_hits_a_route_the_app_serves(tmp_path):
    from scale_alibi.serve.app import create_app

    check = " ".join(COMPOSE["services"]["server"]["healthcheck"]["test"])
    path = re.search(r"http://127\.0\.0\.1:\d+(/[\w/]*)", check).group(1)
    from starlette.testclient import TestClient

    with TestClient(create_app(tmp_path)) as client:  # an empty data directory is a healthy server
        assert client.get(path).status_code == 200
