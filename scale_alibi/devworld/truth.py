"""Ground-truth renderer: what an ideal, perfectly aligned web-mercator tile of a layer shows.

Each output pixel is the area average, over the pixel's footprint in EPSG:3857, of g band-limited
to the sensor's resolution (the sensor's pixel box and its anti-alias taper, see field.Waves),
computed from g directly (not from the COGs). Textures are averaged exactly (sinc factors per
sinusoid); the smooth land-cover fields by n x n supersampling. S1 is speckle-free and without
the bright point targets (sensor artefacts); S2 is clear sky.

NAD83 (NAIP's EPSG:269xx) is treated as WGS84, as PROJ's default offline transform does (no grid
shift files): a NAIP pixel at NAD83 UTM (E, N) shows g at the WGS84 lon/lat PROJ gives for it,
and this truth follows that convention.
"""

from __future__ import annotations

import functools
import math

import mercantile
import numpy as np

from scale_alibi.devworld import field
from scale_alibi.devworld.config import DEFAULT_WORLD, WorldConfig
from scale_alibi.devworld.field import Truth
from scale_alibi.devworld.raster import single_threaded_blas

LAYERS = ("s2", "s1", "naip")
GSD = {"naip": 0.6, "s2": 10.0, "s1": 10.0}
_R = 6378137.0


@functools.lru_cache(maxsize=8)
def truth_of(cfg: WorldConfig) -> Truth:
    """The (cached) analytic truth of a world config."""
    return Truth(cfg)


def _combine(layer: str, wts: np.ndarray, blend: np.ndarray, tex: dict) -> np.ndarray:
    if layer == "s1":
        return field.s1_gamma0(wts, blend, tex)
    opt = field.optical(wts.astype(np.float32), blend.astype(np.float32), tex)
    return field.s2_visual(opt) if layer == "s2" else field.naip_dn(opt)


def render_truth(layer: str, z: int, x: int, y: int, size: int = 256, cfg: WorldConfig = DEFAULT_WORLD) -> np.ndarray:
    """Ideal tile (bands, size, size) float32 in sensor units: s2 TCI DN RGB, s1 linear VV/VH, naip DN RGBN."""
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {LAYERS}, got {layer!r}")
    t = truth_of(cfg)
    gsd = GSD[layer]
    left, bottom, right, top = mercantile.xy_bounds(x, y, z)
    px = (right - left) / size
    lat_mid = math.degrees(math.atan(math.sinh(((top + bottom) / 2) / _R)))
    ground_px = px * math.cos(math.radians(lat_mid))
    n = int(min(6, max(1, math.ceil(ground_px / 8.0))))  # smooth-field supersampling

    def lat_of(my):
        return np.degrees(np.arctan(np.sinh(np.asarray(my) / _R)))

    def lon_of(mx):
        return np.degrees(np.asarray(mx) / _R)

    cx = left + (np.arange(size) + 0.5) * px  # column centres (merc x)
    cy = top - (np.arange(size) + 0.5) * px  # row centres (merc y)
    xc, _ = t.to_local(lon_of(cx), t.lat0)
    _, yc = t.to_local(t.lon0, lat_of(cy))
    _, ytop = t.to_local(t.lon0, lat_of(cy + px / 2))
    _, ybot = t.to_local(t.lon0, lat_of(cy - px / 2))
    dx = (lon_of(px) - lon_of(0.0)) * t.sx  # pixel width, local metres (constant)
    dy = ytop - ybot  # pixel height per row
    P = np.stack([np.zeros(size), yc], axis=1)
    Q = np.stack([xc, np.zeros(size)], axis=1)
    gains = {}
    for name, s in t.wave_sets().items():
        sensor = s.taper(gsd) * s.box(gsd, 0.0, 0.0, gsd)
        gr = sensor[None, :] * np.sinc(s.ky[None, :] * dy[:, None] / (2 * math.pi))
        gc = np.sinc(s.kx * dx / (2 * math.pi))[None, :]
        gains[name] = (gr, gc)
    with single_threaded_blas():
        tex = t.textures(P, Q, gains)
    # Smooth fields averaged over n x n sub-positions of each output pixel.
    sub = (np.arange(n) + 0.5) / n - 0.5
    sx = (cx[:, None] + sub[None, :] * px).ravel()
    sy = (cy[:, None] - sub[None, :] * px).ravel()
    Xs = t.to_local(lon_of(sx), t.lat0)[0]
    Ys = t.to_local(t.lon0, lat_of(sy))[1]
    Ps = np.stack([np.zeros_like(Ys), Ys], axis=1)  # separable: rows vary y, columns vary x
    Qs = np.stack([Xs, np.zeros_like(Xs)], axis=1)
    with single_threaded_blas():
        wts = t.weights_grid(Ps, Qs).reshape(len(field.CLASSES), size, n, size, n).mean(axis=(2, 4))
        blend = t.stripe_blend_grid(Ps, Qs).reshape(size, n, size, n).mean(axis=(1, 3))
    return _combine(layer, wts, blend, tex)


def sample_truth(layer: str, lon, lat, cfg: WorldConfig = DEFAULT_WORLD) -> np.ndarray:
    """Band-limited g at points (bands, N): what a sensor pixel centred there shows (no noise)."""
    t = truth_of(cfg)
    gsd = GSD[layer]
    lx, ly = t.to_local(np.atleast_1d(lon).astype(float), np.atleast_1d(lat).astype(float))
    P = np.stack([lx, ly], axis=1)
    Q = np.zeros((1, 2))
    gains = {n: (s.taper(gsd) * s.box(gsd, 0.0, 0.0, gsd), None) for n, s in t.wave_sets().items()}
    tex = t.textures(P, Q, gains)  # (N, 1)
    wts = t.weights(lx[:, None], ly[:, None])
    blend = t.stripe_blend(lx[:, None], ly[:, None])
    return _combine(layer, wts, blend, tex)[:, :, 0]


def band_limit(layer: str, z: int, lat: float) -> float:
    """Highest spatial frequency (cycles per output pixel, <= 0.5) in a truth tile's texture.

    Above it the truth is empty, so a whitened phase correlation should ignore those frequencies
    (they hold only quantisation and resampling noise, which otherwise biases the shift).
    """
    ground_px = 2 * math.pi * _R / (256 * 2**z) * math.cos(math.radians(lat))
    return float(min(0.5, ground_px / (GSD[layer] * field.TAPER_LO)))


def phase_shift(a: np.ndarray, b: np.ndarray, fmax: float = 0.5, whiten: float = 0.5) -> tuple[float, float]:
    """Sub-pixel (row, col) shift of image a relative to b by phase correlation.

    Hann window; the cross-power spectrum is divided by |F|**whiten (1: classic phase
    correlation, 0: plain cross-correlation; 0.5 is the most precise on these band-limited
    images); frequencies above fmax (cycles/pixel, see band_limit) are ignored; the peak is
    refined by a parabola per axis. Positive row/col: a shows content further down/right.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    win = np.outer(np.hanning(a.shape[0]), np.hanning(a.shape[1]))
    F = np.fft.fft2((a - a.mean()) * win) * np.conj(np.fft.fft2((b - b.mean()) * win))
    F /= (np.abs(F) + 1e-12) ** whiten
    fy, fx = np.fft.fftfreq(a.shape[0])[:, None], np.fft.fftfreq(a.shape[1])[None, :]
    F[np.hypot(fx, fy) > fmax] = 0
    r = np.fft.ifft2(F).real
    i, j = np.unravel_index(np.argmax(r), r.shape)
    n0, n1 = r.shape

    def vertex(m, c, p):
        d = m - 2 * c + p
        return 0.0 if d == 0 else (m - p) / (2 * d)

    di = vertex(r[(i - 1) % n0, j], r[i, j], r[(i + 1) % n0, j])
    dj = vertex(r[i, (j - 1) % n1], r[i, j], r[i, (j + 1) % n1])
    return (float((i + di + n0 / 2) % n0 - n0 / 2), float((j + dj + n1 / 2) % n1 - n1 / 2))
