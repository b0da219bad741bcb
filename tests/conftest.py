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
