"""Shared pytest fixtures. Each block is owned by the module named in its comment; add yours below."""

from __future__ import annotations

import pytest


# -- synthetic world (curate/world) ----------------------------------------------------------
@pytest.fixture(scope="session")
def world_dir():
    """The default synthetic world, rendered once and cached between runs ($SCALE_ALIBI_CACHE)."""
    from curate.world import DEFAULT_WORLD, build_world, default_world_dir

    return build_world(default_world_dir(DEFAULT_WORLD), DEFAULT_WORLD)


@pytest.fixture(scope="session")
def world(world_dir):
    """The default world served: STAC API (rustac) + Range file server on free loopback ports."""
    from curate.world import start_world

    w = start_world(world_dir)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(autouse=True)
def _world_faults_cleared(request):
    """After each test that used `world`: drop its leftover faults, delays and signature mode."""
    yield
    callspec = getattr(request.node, "callspec", None)
    parametrized = callspec is not None and "world" in callspec.params  # a parameter, not the fixture
    if "world" in request.fixturenames and not parametrized:
        request.getfixturevalue("world").files.clear_faults()
        from curate.reader import clear_http_cache

        clear_http_cache()  # GDAL remembers a 403 per URL in-process: don't let it outlive the test


# -- curate build (curate/build.py) ----------------------------------------------------------
@pytest.fixture(scope="session")
def built_release_info(world, tmp_path_factory):
    """A z17 build of the whole default world (local Dask cluster, 2 workers), with the bytes and
    requests it fetched: {"root", "name", "result", "requests", "bytes"}."""
    from shapely.geometry import box

    from curate.build import build_release

    root = tmp_path_factory.mktemp("built-release")
    world.files.reset_stats()
    result = build_release(root, zoom=17, region=box(*world.bbox), release="world-z17", catalog=world.stac_url,
                           signer="none", workers=2, progress=False, echo=lambda m: None)
    stats = world.files.stats()
    return {"root": root, "name": "world-z17", "result": result, **stats}


@pytest.fixture(scope="session")
def built_release(built_release_info):
    """(data_root, release_name) of a finished z17 release of the whole default world (~240 triplets)."""
    return built_release_info["root"], built_release_info["name"]
