"""Scale-ALiBi attention: FlexAttention == reference, and the bias is CROMA's / true geometry."""

from __future__ import annotations

import math

import pytest
import torch

from scale_alibi.contract.tiles import EQUATOR_M, tile_ground_size_m
from scale_alibi.model.nn.attention import (
    alibi_slopes,
    attend,
    choose_backend,
    flex_attention_scale_alibi,
    reference_attention,
    scale_alibi_bias,
)
from scale_alibi.model.nn.geometry import patch_centres_m
from scale_alibi.model.nn.scale_alibi import coords, expand_to_hires
from scale_alibi.model.nn.vit import gather_tokens

L_REF = 40.0  # metres per bias unit in these tests


def _croma_slopes(n: int) -> list[float]:
    """ALiBi slopes written out as in CROMA's get_alibi (independent of scale_alibi.model.nn.attention)."""
    def pow2(k):
        start = 2 ** (-2 ** -(math.log2(k) - 3))
        return [start * start ** i for i in range(k)]
    if math.log2(n).is_integer():
        return pow2(n)
    c = 2 ** math.floor(math.log2(n))
    return pow2(c) + _croma_slopes(2 * c)[0::2][: n - c]


def _random_subset(b: int, n: int, keep: int, gen: torch.Generator) -> torch.Tensor:
    return torch.argsort(torch.rand(b, n, generator=gen), dim=1)[:, :keep].sort(dim=1).values


@pytest.mark.parametrize("q_grid,k_grid", [(16, 16), (32, 32), (16, 32)])
def test_flex_equals_reference_on_mae_subsets(q_grid, k_grid):
    gen = torch.Generator().manual_seed(q_grid * 100 + k_grid)
    b, h, d = 2, 4, 16
    tile_m = torch.tensor([q_grid * L_REF, 1.7 * q_grid * L_REF])  # two GSDs in one batch
    lq, lk = q_grid * q_grid // 4, k_grid * k_grid // 4  # MAE-style: keep a quarter
    if q_grid == k_grid:  # self-attention: queries and keys are the same kept tokens
        ids_q = ids_k = _random_subset(b, q_grid * q_grid, lq, gen)
    else:  # cross 16x16 -> 32x32: ground-consistent subsets (hires = 2x2 children)
        ids_q = _random_subset(b, q_grid * q_grid, lq, gen)
        ids_k = expand_to_hires(ids_q, q_grid)
        lk = ids_k.shape[1]
    q_xy = gather_tokens(coords(tile_m, q_grid, L_REF), ids_q)
    k_xy = gather_tokens(coords(tile_m, k_grid, L_REF), ids_k)
    q = torch.randn(b, h, lq, d, generator=gen)
    k = torch.randn(b, h, lk, d, generator=gen)
    v = torch.randn(b, h, lk, d, generator=gen)
    slopes = alibi_slopes(h)
    ref = reference_attention(q, k, v, q_xy, k_xy, slopes)
    flex = flex_attention_scale_alibi(q, k, v, q_xy, k_xy, slopes)
    assert flex.shape == (b, h, lq, d)
    torch.testing.assert_close(flex, ref, atol=1e-5, rtol=1e-5)
    # and the bias matters: without it the output is different
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert (plain - ref).abs().max() > 1e-3


@pytest.mark.parametrize("heads", [4, 8, 12, 16])
def test_slopes_are_alibis(heads):
    assert alibi_slopes(heads).tolist() == pytest.approx(_croma_slopes(heads), rel=1e-6)
    if heads == 8:  # Press et al.: 1/2, 1/4, ..., 1/256
        assert alibi_slopes(8).tolist() == pytest.approx([2.0 ** -i for i in range(1, 9)])


def test_lowres_bias_is_croma_2d_alibi():
    grid, heads = 6, 12
    tile_m = torch.tensor([grid * L_REF])  # one low-res patch == L_ref
    xy = coords(tile_m, grid, L_REF)
    bias = scale_alibi_bias(xy, xy, alibi_slopes(heads))[0]  # (H, N, N)
    slopes = _croma_slopes(heads)
    points = [(r, c) for r in range(grid) for c in range(grid)]  # CROMA's itertools.product
    expected = torch.tensor([[[-s * math.sqrt((p1[0] - p2[0]) ** 2 + (p1[1] - p2[1]) ** 2)
                               for p2 in points] for p1 in points] for s in slopes])
    torch.testing.assert_close(bias, expected, atol=1e-5, rtol=1e-6)


def test_cross_grid_bias_is_ground_distance():
    grid, heads = 4, 4
    tile_m = torch.tensor([grid * 37.5, grid * 12.0])  # patch ground sizes 37.5 m and 12 m
    q_xy = coords(tile_m, grid, L_REF)  # low-res grid
    k_xy = coords(tile_m, 2 * grid, L_REF)  # hires grid over the same ground
    slopes = alibi_slopes(heads)
    bias = scale_alibi_bias(q_xy, k_xy, slopes)  # (B, H, N, 4N)
    for b in range(2):
        t = float(tile_m[b])
        for i in range(grid * grid):
            ri, ci = divmod(i, grid)
            yi, xi = (ri + 0.5) * t / grid, (ci + 0.5) * t / grid  # metres from the corner
            for j in range(4 * grid * grid):
                rj, cj = divmod(j, 2 * grid)
                yj, xj = (rj + 0.5) * t / (2 * grid), (cj + 0.5) * t / (2 * grid)
                dist = math.hypot(xi - xj, yi - yj)
                for h in range(heads):
                    assert float(bias[b, h, i, j]) == pytest.approx(
                        -float(slopes[h]) * dist / L_REF, rel=1e-5, abs=1e-5)
    # a low-res patch's own four hires children sit a quarter patch diagonal away
    t = float(tile_m[0])
    children = expand_to_hires(torch.tensor([[5]]), grid)[0]
    quarter_diag = math.sqrt(2) / 4 * (t / grid) / L_REF
    for j in children.tolist():
        assert float(bias[0, 0, 5, j]) == pytest.approx(-float(slopes[0]) * quarter_diag,
                                                        rel=1e-6)


def test_bias_scales_with_gsd_from_data():
    xy_small = coords(torch.tensor([1000.0]), 8, L_REF)
    xy_large = coords(torch.tensor([3000.0]), 8, L_REF)
    s = alibi_slopes(4)
    torch.testing.assert_close(scale_alibi_bias(xy_large, xy_large, s),
                               3 * scale_alibi_bias(xy_small, xy_small, s))


def test_patch_centres_and_tile_ground_size():
    c = patch_centres_m(4, torch.tensor([10.0]))[0]
    assert c[0].tolist() == [5.0, 5.0]
    assert c[1].tolist() == [15.0, 5.0]  # (x = col, y = row), row-major tokens
    assert c[4].tolist() == [5.0, 15.0]
    assert tile_ground_size_m(0, 0) == pytest.approx(EQUATOR_M)
    # zoom 15, row of latitude ~40 N: 2 pi R cos(lat_centre) / 2^15, symmetric about the equator
    z, y = 15, 12300
    n = 1 << z
    lat = math.atan(math.sinh(math.pi * (1 - 2 * (y + 0.5) / n)))
    assert tile_ground_size_m(z, y) == pytest.approx(2 * math.pi * 6378137 * math.cos(lat) / n)
    assert tile_ground_size_m(z, y) == pytest.approx(tile_ground_size_m(z, n - 1 - y))
    assert 900 < tile_ground_size_m(z, y) < 1000


def test_backend_choice_on_cpu():
    q = torch.randn(1, 2, 8, 16)
    assert choose_backend(q, q, q) == "reference"  # CPU: no flex backward, slow flex forward
    assert choose_backend(q, q, q, "flex") == "flex"  # forced, fine without gradients
    qg = q.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="no backward on CPU"):
        choose_backend(qg, q, q, "flex")
    with torch.no_grad():
        assert choose_backend(qg, q, q, "flex") == "flex"
    with pytest.raises(ValueError):
        choose_backend(q, q, q, "fast")
    xy = coords(torch.tensor([8 * L_REF]), 8, L_REF)[:, :8]
    out = attend(qg, q, q, xy, xy, alibi_slopes(2))  # auto: must not raise, gradients flow
    out.sum().backward()
    assert qg.grad is not None and torch.isfinite(qg.grad).all()
