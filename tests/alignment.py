"""Sub-pixel alignment of a built tile against the ground truth: band-limited phase correlation.

Plain (whitened) phase correlation is unreliable on tiles upsampled from 10 m data: above the
sensor's band limit the cross-power spectrum is only noise (PNG quantisation, speckle), and
whitening gives it the same weight as the signal. So the normalised cross-power spectrum is kept
only below the band limit (wavelengths >= 3 source pixels), and the peak of its inverse transform
is located to 1/100 px with a matrix-multiply upsampled DFT (Guizar-Sicairos et al. 2008).
"""

from __future__ import annotations

import numpy as np


def _gray(img: np.ndarray, layer: str) -> np.ndarray:
    ch = [1, 2] if layer == "s1" else [0, 1, 2]  # s1: R is empty by design
    return img[..., ch].astype(np.float64).mean(-1)


def _upsampled_dft(data, region, factor, offsets):
    """The inverse DFT of `data` sampled on a `region`-sized grid at 1/`factor` px around `offsets`."""
    n0, n1 = data.shape
    k0 = np.fft.ifftshift(np.arange(n0)) - n0 // 2
    k1 = np.fft.ifftshift(np.arange(n1)) - n1 // 2
    r0 = np.arange(region) - offsets[0]
    r1 = np.arange(region) - offsets[1]
    e0 = np.exp(2j * np.pi * np.outer(r0, k0) / (n0 * factor))
    e1 = np.exp(2j * np.pi * np.outer(k1, r1) / (n1 * factor))
    return e0 @ data @ e1


WHITEN = 0.5  # 1 = classic phase correlation, 0 = plain cross-correlation


def measure(img: np.ndarray, ref: np.ndarray, layer: str, source_px: float, whiten: float | None = None,
            band: float = 3.0) -> tuple[float, float, float]:
    """(dx, dy, corr): the shift of `img` relative to `ref` in output pixels (positive = img content
    moved right/down), and the Pearson correlation of the two. `source_px`: the sensor's pixel size
    in output pixels (sets the band limit)."""
    a, b = _gray(img, layer), _gray(ref, layer)
    corr = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    n = a.shape[0]
    win = np.outer(np.hanning(n), np.hanning(n))
    fa = np.fft.fft2((a - a.mean()) * win)
    fb = np.fft.fft2((b - b.mean()) * win)
    cross = fa * np.conj(fb)
    cross /= (np.abs(cross) + 1e-12) ** (WHITEN if whiten is None else whiten)
    fy, fx = np.meshgrid(np.fft.fftfreq(n), np.fft.fftfreq(n), indexing="ij")
    cutoff = min(0.45, 1.0 / (band * max(source_px, 1e-6)))
    cross[np.hypot(fx, fy) > cutoff] = 0
    cc = np.abs(np.fft.ifft2(cross))
    py, px = np.unravel_index(np.argmax(cc), cc.shape)
    shift = np.array([py, px], dtype=np.float64)
    shift[shift > n // 2] -= n
    factor = 100
    region = int(np.ceil(factor * 1.5))
    centre = np.fix(region / 2.0)
    up = np.abs(_upsampled_dft(cross, region, factor, centre - shift * factor))
    uy, ux = np.unravel_index(np.argmax(up), up.shape)
    dy, dx = shift + (np.array([uy, ux]) - centre) / factor
    return float(dx), float(dy), corr


def measure_gradient(img: np.ndarray, ref: np.ndarray, layer: str, iterations: int = 5, margin: int = 8,
                     saturated_px: int = 24) -> tuple[float, float, float]:
    """(dx, dy, corr) like `measure`, by iterated least squares on the reference's gradient
    (Lucas-Kanade) over the whole tile. Used for heavily upsampled S1: there the band-limited
    spectrum has only a few frequencies per tile, and the point scatterers (saturated, absent from
    the truth) are masked out, `saturated_px` around each, instead of dominating a correlation peak."""
    from scipy import ndimage

    a, b = _gray(img, layer), _gray(ref, layer)
    saturated = (img[..., 1:] >= 255).any(-1) | (ref[..., 1:] >= 255).any(-1)
    keep = ~ndimage.binary_dilation(saturated, iterations=saturated_px)
    keep[:margin], keep[-margin:], keep[:, :margin], keep[:, -margin:] = False, False, False, False
    gy, gx = np.gradient(b)
    d = np.zeros(2)  # (dx, dy): img(p) = ref(p - d)
    for _ in range(iterations):
        at = (d[1], d[0])
        residual = (a - ndimage.shift(b, at, order=3, mode="nearest"))[keep]
        jac = -np.stack([ndimage.shift(gx, at, order=3)[keep], ndimage.shift(gy, at, order=3)[keep]], 1)
        d += np.linalg.lstsq(jac, residual, rcond=None)[0]
    corr = float(np.corrcoef(a[keep], b[keep])[0, 1])
    return float(d[0]), float(d[1]), corr
