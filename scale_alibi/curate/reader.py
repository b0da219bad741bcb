"""COG window reads over HTTP: overview-aware, signed lazily, retried with backoff.

GDAL reads a COG over HTTP range requests (``/vsicurl/``). The settings in ``GDAL_ENV`` are applied
inside the worker that reads (``gdal_env()`` in each task), because environment set in the Dask
client never reaches worker processes. The process-wide vsicurl block cache is sized so a worker
never fetches a byte range twice while it cuts neighbouring metatiles, and a signed href is
reused for as long as its token is valid (a fresh token would be a new URL, a cache miss).

The file's own georeferencing (its transform and CRS) is used, never the item's ``proj:*``; an
overview is read as its own dataset, with its own transform (GDAL sizes overviews by rounding
W/f, H/f, so an overview pixel is not exactly f source pixels).
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import parse_qs, urlparse

import numpy as np
import rasterio
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from scale_alibi.contract.errors import ScaleAlibiError, UserError
from scale_alibi.curate.search import TIMEOUT_S

log = logging.getLogger(__name__)

GDAL_ENV: dict[str, object] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "GDAL_HTTP_VERSION": "2",
    "VSI_CACHE": "TRUE",
    "VSI_CACHE_SIZE": str(64 * 2**20),
    # Global (per process) vsicurl block cache: survives closing a dataset, so a neighbouring
    # metatile finds the blocks it shares with the previous one.
    "CPL_VSIL_CURL_CACHE_SIZE": str(512 * 2**20),
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.TIF,.TIFF",
    "GDAL_HTTP_MAX_RETRY": "2",
    "GDAL_HTTP_RETRY_DELAY": "0.2",
    "GDAL_CACHEMAX": 256 * 2**20,  # bytes: rasterio passes an int to GDALSetCacheMax64
    # A server that stalls fails the request instead of hanging the build (gdal_env adds the
    # timeouts): under LOW_SPEED_LIMIT bytes/s for the timeout, or connecting for longer, or a
    # whole request 10x longer (a window read may be large).
    "GDAL_HTTP_LOW_SPEED_LIMIT": "1",
}

RETRIES = 6  # application-level attempts on top of GDAL's own
TIMEOUT_RETRIES = 2  # of those, how many may be timeouts (each already waited GDAL_HTTP_MAX_RETRY + 1 times)
AUTH_RETRIES = 1  # re-signs after a 403 before the read is refused for good
BACKOFF_S = 0.25  # first delay; doubles, with jitter, capped at 8 s


class TransientError(ScaleAlibiError, RuntimeError):
    """A read that kept failing with a retryable error (HTTP 429/5xx, timeouts)."""


class AccessDenied(UserError):
    """A read refused with HTTP 403 even with a freshly signed href: retrying cannot help."""


def gdal_env(timeout_s: float = TIMEOUT_S) -> rasterio.Env:
    """The rasterio environment every read runs in (call inside the worker); `timeout_s` bounds every wait."""
    wait = max(1, math.ceil(timeout_s))  # curl takes whole seconds for the low-speed time
    return rasterio.Env(**GDAL_ENV, GDAL_HTTP_CONNECTTIMEOUT=str(wait), GDAL_HTTP_LOW_SPEED_TIME=str(wait),
                        GDAL_HTTP_TIMEOUT=str(10 * wait))


# ---------------------------------------------------------------- lazy signing

_signed: dict[tuple[object, str], tuple[str, float]] = {}
_lock = threading.Lock()


def _expiry(href: str) -> float:
    """Expiry (unix seconds) of a SAS-style ``se=`` token in `href`, inf if none."""
    se = parse_qs(urlparse(href).query).get("se")
    if not se:
        return math.inf
    try:
        from datetime import datetime, timezone

        value = se[0]
        if value.replace(".", "", 1).isdigit():
            return float(value)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    except ValueError:
        return math.inf


def signed_href(href: str, signer, force: bool = False) -> str:
    """The signed form of an unsigned `href`, reused while its token has > 60 s left; re-signed when `force`
    (with a newly requested token where the signer can get one: its `fresh` method)."""
    now = time.time()
    key = (signer, href)  # one process may build with several signers (tests do)
    with _lock:
        cached = _signed.get(key)
    if cached and not force and cached[1] - now > 60:
        return cached[0]
    # Always from the unsigned href: a signed one would not be re-signed. Forced: a signer's own
    # token cache may still hold the token the server just refused.
    fresh = (getattr(signer, "fresh", signer) if force else signer)(href)
    with _lock:
        _signed[key] = (fresh, _expiry(fresh))
    return fresh


def _gdal_lib():
    """The GDAL shared library that rasterio loaded (for the cache calls rasterio does not wrap)."""
    import ctypes
    import glob
    import os

    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(rasterio.__file__)), "rasterio.libs", "libgdal*"))
    return ctypes.CDLL(libs[0]) if libs else ctypes.CDLL(None)


def _forget(url: str) -> None:
    """Drop vsicurl's cached state for `url` (it remembers a failed open)."""
    try:
        _gdal_lib().VSICurlPartialClearCache(("/vsicurl/" + url).encode())
    except (OSError, AttributeError):  # not fatal: the next attempt may still succeed
        pass


def clear_http_cache() -> None:
    """Drop everything vsicurl cached in this process (file sizes, blocks, remembered failures)."""
    try:
        _gdal_lib().VSICurlClearCache()
    except (OSError, AttributeError):
        pass


def _error_text(err: BaseException) -> str:
    """The messages of an error and of the GDAL errors rasterio chained to it, as one line."""
    parts: list[str] = []
    link: BaseException | None = err
    while link is not None and len(parts) < 8:
        parts.append(str(link))
        link = link.__cause__ or link.__context__
    return " | ".join(parts)


def _probe_status(url: str, timeout_s: float) -> int | None:
    """The HTTP status of a one-byte range request to `url`; None if it got no answer (tells an
    expired signature, 403, from a busy server when GDAL's error does not say)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Range": "bytes=0-0"}), timeout=timeout_s) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


# Whole numbers only: GDAL's messages carry offsets such as "row 4294967295"; and never inside a
# URL, whose path or query may hold any digits ("/403/", "?port=5030").
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)
_HTTP_403 = re.compile(r"(?<!\d)403(?!\d)")
_HTTP_RETRYABLE = re.compile(r"(?<!\d)(429|500|502|503|504)(?!\d)")


def _classify(err: Exception, url: str, timeout_s: float) -> str:
    """"auth" (403: re-sign), "timeout", "transient" (429/5xx, connection) or "fatal"."""
    msg = _URL.sub("<url>", _error_text(err))
    lowered = msg.lower()
    if _HTTP_403.search(msg):
        return "auth"
    if "timed out" in lowered or "timeout" in lowered or "too slow" in lowered:
        return "timeout"
    if _HTTP_RETRYABLE.search(msg) or "connection" in lowered:
        return "transient"
    # GDAL names no HTTP status when a request fails in the middle of an open or a read ("Read
    # failed", "not recognized as being in a supported file format"): ask the server.
    status = _probe_status(url, timeout_s)
    if status == 403:
        return "auth"
    if status is None:
        return "timeout"
    if status == 429 or status >= 500:
        return "transient"
    return "fatal"


# ---------------------------------------------------------------- reads

@dataclass
class Source:
    """Pixels read from one asset, with the georeferencing of the array (the file's own)."""

    data: np.ndarray  # (bands, h, w)
    transform: Affine
    crs: object
    nodata: float | None
    res: float  # source pixel size in CRS units at the level read
    valid: np.ndarray | None = None  # (h, w) bool, set by the sensor's rule (curate.validity); None: by `nodata`


def _level(ds, target_res: float) -> int:
    """The coarsest overview decimation whose pixels are still no larger than `target_res`."""
    best = 1
    for f in ds.overviews(1):
        if abs(ds.res[0]) * f <= target_res * 1.0001:
            best = max(best, f)
    return best


@lru_cache(maxsize=64)
def transformer_from_3857(src_crs_wkt: str) -> Transformer:
    """EPSG:3857 -> the source CRS (x, y order); one per CRS, shared by reads and warps."""
    return Transformer.from_crs("EPSG:3857", CRS.from_user_input(src_crs_wkt), always_xy=True)


def _read(ds, bounds_3857: tuple[float, float, float, float], target_res_3857: float, indexes, margin_px: int) -> Source | None:
    # a cached transformer: rasterio's transform_bounds would build one per call
    bounds = transformer_from_3857(ds.crs.to_wkt()).transform_bounds(*bounds_3857, densify_pts=21)
    # Mercator metres are 1/cos(lat) ground metres: compare resolutions in the file's units.
    scale = (bounds[2] - bounds[0]) / (bounds_3857[2] - bounds_3857[0])
    f = _level(ds, target_res_3857 * scale)
    if f == 1:
        return _read_level(ds, ds, bounds, indexes, margin_px)
    # An overview is W/f x H/f rounded (gdaladdo rounds up, the COG driver down), so its pixel is
    # W/ovr_w by H/ovr_h source pixels, not f: the overview opened as a dataset has that transform.
    with rasterio.open(ds.name, overview_level=ds.overviews(1).index(f)) as level:
        return _read_level(ds, level, bounds, indexes, margin_px)


def _read_level(ds, level, bounds, indexes, margin_px: int) -> Source | None:
    """The whole pixels of `level` (the file or one of its overviews) covering `bounds` (in the file's
    CRS) plus `margin_px`, georeferenced by the level's own transform."""
    left, bottom, right, top = bounds
    inv = ~level.transform
    c0, r0 = inv @ (left, top)
    c1, r1 = inv @ (right, bottom)
    c0, c1 = sorted((c0, c1))
    r0, r1 = sorted((r0, r1))
    c0 = max(0, int(math.floor(c0 - margin_px)))
    r0 = max(0, int(math.floor(r0 - margin_px)))
    c1 = min(level.width, int(math.ceil(c1 + margin_px)))
    r1 = min(level.height, int(math.ceil(r1 + margin_px)))
    if c1 <= c0 or r1 <= r0:
        return None
    window = Window(c0, r0, c1 - c0, r1 - r0)
    data = level.read(indexes, window=window)
    return Source(data, level.window_transform(window), ds.crs, ds.nodata, abs(level.res[0]))


def read_window(href: str, signer, bounds_3857: tuple[float, float, float, float], target_res_3857: float, indexes=None,
                margin_px: int = 3, timeout_s: float = TIMEOUT_S) -> Source | None:
    """Read the part of the COG at `href` covering `bounds_3857` (plus a margin for the resampling kernel)
    at the overview level that fits `target_res_3857`; None if it does not overlap.

    Retries HTTP 429/5xx and timeouts with exponential backoff; on 403 (expired or invalid token, at
    open or mid-read) re-signs from the unsigned href. Raises TransientError once retries are
    exhausted, AccessDenied when a fresh signature is refused too."""
    delay = BACKOFF_S
    rng = random.Random(href)
    force = False
    last: Exception | None = None
    counts = {"auth": 0, "timeout": 0, "transient": 0, "fatal": 0}
    for attempt in range(RETRIES + 1):
        url = signed_href(href, signer, force=force)
        force = False
        try:
            with rasterio.open(url) as ds:
                idx = list(indexes) if indexes else list(range(1, ds.count + 1))
                return _read(ds, bounds_3857, target_res_3857, idx, margin_px)
        except RasterioIOError as e:
            last = e
            kind = _classify(e, url, timeout_s)
            counts[kind] += 1
            _forget(url)
            if kind == "fatal" and attempt > 0:
                raise
            if kind == "auth":
                if counts["auth"] > AUTH_RETRIES:
                    raise AccessDenied(
                        f"reading {href} was refused (HTTP 403) {counts['auth']} times, also with a fresh signature; "
                        "check the token or subscription key (PC_SDK_SUBSCRIPTION_KEY) and --signer") from None
                force = True  # expired or revoked token: sign again from the unsigned href
                log.info("403 on %s: re-signing", href)
            elif kind == "timeout" and counts["timeout"] > TIMEOUT_RETRIES:
                break
            else:
                log.info("retryable read error on %s (%s); retry in %.2fs", href, str(e)[:80], delay)
            time.sleep(delay * (0.5 + rng.random()))
            delay = min(delay * 2, 8.0)
    if counts["timeout"] > TIMEOUT_RETRIES:
        raise TransientError(f"reading {href} timed out: the server sent no data for {timeout_s:g} s, "
                             f"{counts['timeout']} times")
    raise TransientError(f"reading {href} failed after {RETRIES + 1} attempts: {last}")
