"""The analytic ground truth g(lon, lat): smooth land-cover classes plus a fine non-periodic texture.

Everything is defined on a local metric frame (x, y) = affine(lon, lat) around the world centre.
Textures are sums of sinusoids with incommensurate wavelengths and random phases, so the area
average of any texture over a parallelogram (a UTM sensor pixel) or a lon/lat rectangle (a web-
mercator tile pixel) is exact and cheap: each component is multiplied by sinc factors. Sums over
components on a pixel grid p(r, c) = P[r] + Q[c] become one real matrix product.

Land cover is a softmax of low-frequency fields (transitions ~10 m wide), smooth at the sensors'
scales, so its value at a pixel centre equals its 10 m pixel average to ~1 DN.
"""

from __future__ import annotations

import math

import numpy as np

from scale_alibi.devworld.config import DEG, EARTH_RADIUS_M, WorldConfig

CLASSES = ("water", "forest", "crops", "urban", "bare", "grass")
WATER, FOREST, CROPS, URBAN, BARE, GRASS = range(len(CLASSES))
# Logit bias per class: water and urban rarer.
_BIAS = np.array([-0.9, 0.0, 0.25, -0.35, -0.1, 0.0])
_TAU = 0.22  # softmax temperature: smaller -> sharper class edges

# Optical reflectance-like colours in NAIP DN (R, G, B, NIR) per class.
COLOURS = np.array(
    [
        [40, 62, 84, 22],  # water
        [52, 84, 48, 172],  # forest
        [116, 142, 72, 205],  # crops
        [152, 146, 140, 112],  # urban
        [184, 162, 128, 140],  # bare
        [122, 128, 86, 152],  # grass
    ],
    dtype=np.float64,
)
# Relative texture modulation per class (multiplies the common texture T, std 1).
_TEX_GAIN = np.array([0.03, 0.22, 0.10, 0.12, 0.10, 0.08])
_STRIPE_GAIN = 0.14  # crops: row stripes
_GRID_GAIN = 0.22  # urban: street grid

# Sentinel-1 linear gamma0 (VV, VH) per class, and log-texture gain per class.
S1_GAMMA0 = np.array(
    [[0.008, 0.0015], [0.16, 0.045], [0.11, 0.028], [0.55, 0.075], [0.05, 0.008], [0.085, 0.021]]
)
_S1_TEX = np.array([0.15, 0.45, 0.35, 0.5, 0.3, 0.3])

# S2 visual (TCI) DN from the optical colour: dimmer and hazier than NAIP.
S2_GAIN = np.array([0.78, 0.80, 0.84])
S2_OFFSET = np.array([14.0, 12.0, 16.0])

# Sensor band-limit: components whose wavelength is under 2.5 sensor pixels are removed (ramp
# to full amplitude at 3.5 pixels), so the sensor grid never aliases them.
TAPER_LO, TAPER_HI = 2.5, 3.5


class Waves:
    """A sum of sinusoids sum_n amp_n cos(k_n . p + phase_n) on the local frame."""

    def __init__(self, kx: np.ndarray, ky: np.ndarray, amp: np.ndarray, phase: np.ndarray):
        self.kx, self.ky = np.asarray(kx, float), np.asarray(ky, float)
        self.amp, self.phase = np.asarray(amp, float), np.asarray(phase, float)

    @property
    def wavelength(self) -> np.ndarray:
        return 2 * math.pi / np.hypot(self.kx, self.ky)

    @classmethod
    def random(cls, rng: np.random.Generator, n: int, lam_min: float, lam_max: float, slope: float = 0.0) -> Waves:
        """n components, wavelengths log-uniform in [lam_min, lam_max], random directions and phases."""
        lam = np.exp(rng.uniform(math.log(lam_min), math.log(lam_max), n))
        # Stratified directions (shuffled against wavelength): isotropic even for small n.
        theta = rng.permutation((np.arange(n) + rng.uniform(0, 1, n)) * math.pi / n)
        k = 2 * math.pi / lam
        amp = (lam / lam_max) ** slope
        amp = amp / math.sqrt(0.5 * np.sum(amp**2))  # std 1 over the plane
        return cls(k * np.cos(theta), k * np.sin(theta), amp, rng.uniform(0, 2 * math.pi, n))

    def taper(self, gsd: float) -> np.ndarray:
        """Per-component band-limit factor for a sensor of ground sample distance gsd."""
        return np.clip((self.wavelength / gsd - TAPER_LO) / (TAPER_HI - TAPER_LO), 0.0, 1.0)

    def box(self, ax: float, ay: float, bx: float = 0.0, by: float = 0.0) -> np.ndarray:
        """Area-average factor over the parallelogram spanned by (ax, ay) and (bx, by)."""
        return np.sinc((self.kx * ax + self.ky * ay) / (2 * math.pi)) * np.sinc((self.kx * bx + self.ky * by) / (2 * math.pi))

    def points(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Point values at arrays x, y (unfiltered)."""
        out = np.zeros(np.broadcast(x, y).shape)
        for kx, ky, a, ph in zip(self.kx, self.ky, self.amp, self.phase):
            out += a * np.cos(kx * x + ky * y + ph)
        return out

    def grid(self, P: np.ndarray, Q: np.ndarray, gain_r: np.ndarray, gain_c: np.ndarray | None = None) -> np.ndarray:
        """sum_n gain cos(k.(P[r]+Q[c]) + phase) on an (R, C) grid as one matrix product.

        P: (R, 2), Q: (C, 2) local positions; gain_r: (N,) or (R, N); gain_c: None or (C, N).
        """
        ph_r = P[:, 0:1] * self.kx + P[:, 1:2] * self.ky + self.phase  # (R, N), float64
        ph_c = Q[:, 0:1] * self.kx + Q[:, 1:2] * self.ky  # (C, N)
        g_r = np.broadcast_to(self.amp * gain_r, ph_r.shape)
        U = np.concatenate([g_r * np.cos(ph_r), -g_r * np.sin(ph_r)], axis=1).astype(np.float32)
        gc = 1.0 if gain_c is None else gain_c
        V = np.concatenate([gc * np.cos(ph_c), gc * np.sin(ph_c)], axis=1).astype(np.float32)
        return U @ V.T


def _grid_waves(rng: np.random.Generator, period: float, harmonics: int, theta: float) -> Waves:
    """A periodic comb (streets / crop rows) along direction theta, random offset."""
    h = np.arange(1, harmonics + 1)
    k = 2 * math.pi * h / period
    amp = 1.0 / h
    amp = amp / math.sqrt(0.5 * np.sum(amp**2))
    off = rng.uniform(0, 2 * math.pi)
    return Waves(k * math.cos(theta), k * math.sin(theta), amp, h * off)


class Truth:
    """The ground truth g of one WorldConfig: frames, class fields and textures."""

    def __init__(self, cfg: WorldConfig):
        self.cfg = cfg
        self.lon0, self.lat0 = cfg.center
        self.sx = DEG * EARTH_RADIUS_M * math.cos(self.lat0 * DEG)  # metres per degree lon
        self.sy = DEG * EARTH_RADIUS_M
        rng = np.random.default_rng(cfg.seed)
        # Class logits: wavelengths 150-900 m so classes vary between neighbouring z17 tiles.
        self.logits = [Waves.random(rng, 7, 150.0, 900.0, slope=0.5) for _ in CLASSES]
        self.blend = Waves.random(rng, 4, 200.0, 700.0)  # crop-row orientation patches
        # Fine texture, 1.8-300 m, roughly equal energy per octave: strong at 1-3 pixels of
        # NAIP (0.6 m) and of S1/S2 (10 m) alike, non-periodic (incommensurate wavelengths).
        self.texture = Waves.random(rng, 64, 1.8, 300.0, slope=0.0)
        self.rows_a = _grid_waves(rng, 36.0, 3, rng.uniform(0, math.pi))
        self.rows_b = _grid_waves(rng, 29.0, 3, rng.uniform(0, math.pi))
        # Urban street grid: two perpendicular combs (95 m and 115 m blocks).
        gx, gy = _grid_waves(rng, 95.0, 6, 0.0), _grid_waves(rng, 115.0, 6, math.pi / 2)
        self.streets = Waves(np.r_[gx.kx, gy.kx], np.r_[gx.ky, gy.ky], np.r_[gx.amp, gy.amp] / math.sqrt(2), np.r_[gx.phase, gy.phase])
        self.clouds: dict[str, Waves] = {}

    # -- coordinates -------------------------------------------------------------------------
    def to_local(self, lon, lat):
        """(lon, lat) degrees -> local metres (x east, y north)."""
        return (np.asarray(lon) - self.lon0) * self.sx, (np.asarray(lat) - self.lat0) * self.sy

    def to_lonlat(self, x, y):
        """Inverse of to_local."""
        return np.asarray(x) / self.sx + self.lon0, np.asarray(y) / self.sy + self.lat0

    # -- smooth fields -----------------------------------------------------------------------
    def weights(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Soft land-cover weights (C, ...) at local points; they sum to 1."""
        z = np.stack([w.points(x, y) + b for w, b in zip(self.logits, _BIAS)]) / _TAU
        z -= z.max(axis=0, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=0, keepdims=True)

    def weights_grid(self, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """weights() on the grid P[r] + Q[c] (logits as matrix products: no per-point cosines)."""
        one = np.ones(1)
        z = np.stack([w.grid(P, Q, one).astype(np.float64) + b for w, b in zip(self.logits, _BIAS)]) / _TAU
        z -= z.max(axis=0, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=0, keepdims=True)

    def stripe_blend_grid(self, P: np.ndarray, Q: np.ndarray) -> np.ndarray:
        """stripe_blend() on the grid P[r] + Q[c]."""
        return 1.0 / (1.0 + np.exp(-self.blend.grid(P, Q, np.ones(1)).astype(np.float64) / 0.15))

    def stripe_blend(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """0..1 field choosing between the two crop-row orientations."""
        return 1.0 / (1.0 + np.exp(-self.blend.points(x, y) / 0.15))

    def classes(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Dominant land-cover class index at local points."""
        return np.argmax(self.weights(x, y), axis=0)

    def cloud_density(self, date: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """0..1 cloud optical density of a cloudy date (large soft blobs covering ~60%)."""
        if date not in self.clouds:
            self.clouds[date] = Waves.random(np.random.default_rng([self.cfg.seed, int(date.replace("-", ""))]), 6, 400.0, 2500.0)
        return 1.0 / (1.0 + np.exp(-(self.clouds[date].points(x, y) + 0.35) / 0.25))

    # -- textures on grids -------------------------------------------------------------------
    def textures(self, P, Q, gains: dict[str, tuple]) -> dict[str, np.ndarray]:
        """Filtered textures on a grid: texture (common), rows_a / rows_b (crop rows), streets.

        gains[name] = (gain_r, gain_c) per-component filter factors for Waves `name`.
        """
        out = {}
        for name in ("texture", "rows_a", "rows_b", "streets"):
            gr, gc = gains[name]
            out[name] = getattr(self, name).grid(P, Q, gr, gc)
        return out

    def wave_sets(self):
        """The texture Waves by name (filters are computed per set)."""
        return {n: getattr(self, n) for n in ("texture", "rows_a", "rows_b", "streets")}


def _optical_matrix() -> np.ndarray:
    """(16, C) map from class weights to the optical model's per-band coefficient fields."""
    col = COLOURS.T  # (4, C)
    rows = np.zeros_like(col)
    rows[:, CROPS] = col[:, CROPS] * _STRIPE_GAIN
    streets = np.zeros_like(col)
    streets[:, URBAN] = col[:, URBAN] * _GRID_GAIN
    return np.concatenate([col, col * _TEX_GAIN, rows, streets]).astype(np.float32)


_OPTICAL = _optical_matrix()


def optical(w: np.ndarray, blend: np.ndarray, tex: dict[str, np.ndarray]) -> np.ndarray:
    """Optical R, G, B, NIR (NAIP DN scale, float32) from class weights (C, H, W) and textures.

    Each class's colour is modulated by (1 + gain * texture); linear in the weights, so it is
    one small matrix product followed by four multiply-adds per band.
    """
    C, H, W = w.shape
    coef = (_OPTICAL @ np.ascontiguousarray(w, np.float32).reshape(C, -1)).reshape(4, 4, H, W)
    rows = blend * tex["rows_a"] + (1.0 - blend) * tex["rows_b"]
    out = coef[0] + coef[1] * tex["texture"] + coef[2] * rows + coef[3] * tex["streets"]
    return out.astype(np.float32)


def s2_visual(optical_rgbn: np.ndarray) -> np.ndarray:
    """S2 TCI DN (R, G, B floats) from the optical model; clipped to the TCI's valid 1..255."""
    rgb = optical_rgbn[:3] * S2_GAIN[:, None, None] + S2_OFFSET[:, None, None]
    return np.clip(rgb, 1.0, 255.0).astype(np.float32)


def naip_dn(optical_rgbn: np.ndarray) -> np.ndarray:
    """NAIP DN (R, G, B, N floats), clipped to 0..255."""
    return np.clip(optical_rgbn, 0.0, 255.0).astype(np.float32)


def s1_gamma0(w: np.ndarray, blend: np.ndarray, tex: dict[str, np.ndarray]) -> np.ndarray:
    """Speckle-free linear gamma0 (VV, VH) from weights (C, H, W) and filtered textures."""
    rows = blend * tex["rows_a"] + (1.0 - blend) * tex["rows_b"]
    out = np.zeros((2,) + w.shape[1:], np.float64)
    for c in range(len(CLASSES)):
        m = _S1_TEX[c] * tex["texture"]
        if c == CROPS:
            m = m + 0.3 * rows
        if c == URBAN:
            m = m + 0.6 * tex["streets"]
        e = w[c] * np.exp(m)
        out[0] += S1_GAMMA0[c, 0] * e
        out[1] += S1_GAMMA0[c, 1] * e
    return out.astype(np.float32)
