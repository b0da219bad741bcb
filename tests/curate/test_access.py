"""Planetary Computer access through the real planetary-computer SDK code path, against the world's token
service (the SDK's PC_SDK_SAS_URL points at it): subscription keys, refused tokens, fresh tokens after a
403 and tokens that expire sooner than announced; and `curate build` without a key (one line, before any
metatile is cut)."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest
import rasterio
from rasterio.warp import transform_bounds

from scale_alibi.contract.errors import UserError
from scale_alibi.curate.access import KEY_VARIABLE, TokenRefused
from scale_alibi.curate.reader import read_window, signed_href
from scale_alibi.curate.search import resolve_signer

KEY = "world-subscription-key"


def _reset_sdk() -> None:
    """The SDK reads its settings once per process and caches tokens per container: start clean."""
    from planetary_computer.sas import TOKEN_CACHE
    from planetary_computer.settings import Settings

    Settings.get.cache_clear()
    TOKEN_CACHE.clear()


@pytest.fixture
def token_service(world, monkeypatch):
    """The world's file server as token service of the SDK, files readable with a valid token only."""
    monkeypatch.setenv("PC_SDK_SAS_URL", world.files.token_url)
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    monkeypatch.setenv("HOME", "/nonexistent")  # no ~/.planetarycomputer/settings.env key either
    _reset_sdk()
    world.files.require_signature()
    yield world.files
    _reset_sdk()


def _asset(world, collection: str, name: str) -> tuple[str, Path]:
    """(unsigned URL, local path) of the first scene's asset file `name` (measurement/iw-vv.rtc.tiff, image.tif, ...) in `collection`."""
    path = sorted((world.dir / "files" / collection).glob(f"*/{name}"))[0]
    return f"{world.files_url}/{path.relative_to(world.dir / 'files').as_posix()}", path


def _centre_window(path: Path) -> tuple[tuple[float, float, float, float], float]:
    """3857 bounds of a 200 m square in the middle of a local COG, and its pixel size there."""
    with rasterio.open(path) as ds:
        w, s, e, n = transform_bounds(ds.crs, "EPSG:3857", *ds.bounds)
    cx, cy = (w + e) / 2, (s + n) / 2
    return (cx - 100, cy - 100, cx + 100, cy + 100), 10.0


def _token_of(url: str) -> str:
    return parse_qs(urlparse(url).query)["skn"][0]


def test_the_default_signer_signs_through_the_sdk_and_a_forced_resign_gets_a_new_token(world, token_service):
    href, _ = _asset(world, "sentinel-1-rtc", "measurement/iw-vv.rtc.tiff")
    signer = resolve_signer("planetary-computer")
    first = signed_href(href, signer)
    assert first.startswith(href + "?") and "sig=" in first  # a container token from the service
    assert signed_href(href, signer) == first  # reused while valid
    assert signer(href) == first  # the SDK's cache holds the token
    second = signed_href(href, signer, force=True)
    assert second != first and _token_of(second) != _token_of(first)  # a token newly issued by the service
    assert signer(href) == second  # and the SDK's cache now holds the new one


def test_a_revoked_token_the_sdk_still_caches_is_renewed_on_403(world, token_service):
    from scale_alibi.curate.reader import clear_http_cache

    href, path = _asset(world, "sentinel-1-rtc", "measurement/iw-vh.rtc.tiff")
    signer = resolve_signer("planetary-computer")
    bounds, res = _centre_window(path)
    reference = read_window(href, signer, bounds, res)
    assert reference is not None
    used = signed_href(href, signer)
    # The token in use is refused after its next request (a key rotated mid-build) while the SDK's
    # cache still holds it as valid for an hour: re-signing from that cache would be refused again.
    clear_http_cache()
    token_service.revoke_tokens(path_contains="/sentinel-1-rtc/", after=1)
    again = read_window(href, signer, bounds, res)
    assert again is not None and (again.data == reference.data).all()
    assert _token_of(signed_href(href, signer)) != _token_of(used)  # read with a token issued after the revocation


def test_tokens_that_expire_before_their_announced_expiry_are_renewed(world, token_service):
    href, path = _asset(world, "naip", "image.tif")
    signer = resolve_signer("planetary-computer")
    bounds, res = _centre_window(path)
    # Real lifetime 4 s, announced 1 h: the SDK keeps serving the token after the files refuse it.
    token_service.token_service(ttl_s=4, announced_ttl_s=3600)
    first = signed_href(href, signer)
    time.sleep(4.5)
    assert signer(href) == first  # the SDK's cache: the expired token, as on Planetary Computer
    got = read_window(href, signer, bounds, res / 6)
    assert got is not None and got.data.size > 0
    assert _token_of(signed_href(href, signer)) != _token_of(first)


def test_a_collection_requiring_an_account_needs_the_subscription_key(world, token_service, monkeypatch):
    token_service.token_service(key=KEY, key_containers=["sentinel-1-rtc"])
    s1, _ = _asset(world, "sentinel-1-rtc", "measurement/iw-vv.rtc.tiff")
    naip, _ = _asset(world, "naip", "image.tif")
    signer = resolve_signer("planetary-computer")
    assert "sig=" in signer(naip)  # open collections are signed without a key
    with pytest.raises(TokenRefused, match=rf"HTTP 401.*set {KEY_VARIABLE}") as refused:
        signer(s1)
    assert refused.value.status == 401 and "\n" not in str(refused.value)
    # raised on a Dask worker, it reaches the driver pickled: still a UserError with its one line
    back = pickle.loads(pickle.dumps(refused.value))
    assert isinstance(back, UserError) and str(back) == str(refused.value)
    monkeypatch.setenv(KEY_VARIABLE, "not-the-key")
    _reset_sdk()
    with pytest.raises(TokenRefused, match=rf"HTTP 403.*subscription key \({KEY_VARIABLE}\) was refused"):
        signer(s1)
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    _reset_sdk()
    url = signer(s1)
    with rasterio.open(url) as ds:
        assert ds.count == 1


def _curate(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "scale_alibi", "build", *args], capture_output=True, text=True,
                          env=env, timeout=300)
    return done, time.monotonic() - t0


def test_a_build_without_the_key_fails_in_one_line_before_any_metatile(world, tmp_path):
    from scale_alibi.contract.release import Release

    files = world.files
    files.require_signature()
    files.token_service(key=KEY, key_containers=["sentinel-1-rtc"])
    w, s, e, n = world.bbox
    bbox = f"{w + 0.4 * (e - w)},{s + 0.4 * (n - s)},{w + 0.6 * (e - w)},{s + 0.6 * (n - s)}"
    env = {k: v for k, v in os.environ.items() if k != KEY_VARIABLE}
    env.update({"PC_SDK_SAS_URL": files.token_url, "HOME": str(tmp_path)})
    args = ["--bbox", bbox, "--zoom", "16", "--release", "keyed", "--out", str(tmp_path / "out"),
            "--catalog", world.stac_url, "--scheduler", "synchronous", "--no-progress"]  # default signer

    files.reset_stats()
    done, seconds = _curate(args, env)
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert done.returncode == 2, done.stderr
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr
    assert KEY_VARIABLE in errors[0] and "sentinel-1-rtc" in errors[0] and "requires a Planetary Computer account" in errors[0]
    assert files.stats()["requests"] == 0  # not one COG byte read: no metatile was started
    assert not list((tmp_path / "out").rglob("*.png"))
    assert seconds < 60, seconds  # seconds, not a build's worth of reads (generous: a shared machine)

    done, _ = _curate(args, {**env, KEY_VARIABLE: KEY})
    assert done.returncode == 0, done.stderr
    release = Release(tmp_path / "out", "keyed")
    assert release.is_finished and release.read_manifest().num_rows > 0
