"""The model against CROMA and the paper's Eq. 4, each point checked with an independent reference:
reconstruction summed over modalities, CROMA's 16 heads and their slopes, independent radar and
optical masks, CROMA's bias in patches of its own grid, L_ref following the training zoom."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from scale_alibi.contract.tiles import ground_size_at_lat_m
from scale_alibi.model.nn.attention import scale_alibi_bias
from scale_alibi.model.nn.config import get_config
from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel, coords, group_hires, random_mask, split_ids_from_mask
from scale_alibi.model.nn.vit import patchify

PX = 64
SMALL = dict(dim=32, heads=4, lores_depth=1, radar_depth=1, hires_depth=1, cross_depth=1,
             decoder_dim=32, decoder_heads=4, patch_size=16)


def _batch(b: int, seed: int = 0, tile_m: float = 800.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"s1": torch.randn(b, 2, PX, PX, generator=g), "s2": torch.randn(b, 3, PX, PX, generator=g),
            "naip_hires": torch.randn(b, 3, 2 * PX, 2 * PX, generator=g),
            "tile_size_m": torch.full((b,), tile_m)}


def _model(name: str, **overrides) -> ScaleAlibiModel:
    torch.manual_seed(0)
    return ScaleAlibiModel(get_config(name, **{**SMALL, **overrides}))


def _mse_by_hand(pred: torch.Tensor, target_patches: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """MAE's norm_pix loss written out: per patch (or sub-patch) mean/var normalisation, squared error."""
    t = target_patches[torch.arange(len(masked))[:, None], masked]  # (B, M, [S,] P)
    mean = t.mean(dim=-1, keepdim=True)
    var = t.var(dim=-1, keepdim=True, unbiased=False)
    t = ((t - mean) / torch.sqrt(var + 1e-6)).reshape(pred.shape)
    return ((pred - t) ** 2).mean()


def test_reconstruction_is_the_sum_over_modalities_of_each_masked_mse():
    model = _model("tiny")
    batch = _batch(3)
    mask = random_mask(3, (PX // 16) ** 2, 0.75, "cpu")
    predictions = []  # the decoder's own pixel predictions for the masked patches (its last layer)
    model.decoder.head.register_forward_hook(lambda module, args, out: predictions.append(out))
    with torch.no_grad():
        out = model({**batch, "mask": mask})
    _, masked = split_ids_from_mask(mask)
    (pred,) = predictions
    s1, s2, hires = pred.split([2 * 256, 3 * 256, 4 * 3 * 256], dim=-1)
    by_hand = [_mse_by_hand(s1, patchify(batch["s1"], 16), masked),
               _mse_by_hand(s2, patchify(batch["s2"], 16), masked),
               _mse_by_hand(hires, group_hires(patchify(batch["naip_hires"], 16), PX // 16), masked)]
    print(f"\nper modality {[round(float(v), 4) for v in by_hand]}, model {float(out['reconstruction']):.4f}")
    torch.testing.assert_close(out["reconstruction"], sum(by_hand), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss"], out["contrastive"] + sum(by_hand), rtol=1e-4, atol=1e-5)


def test_croma_and_base_have_16_heads_with_alibis_slopes():
    # ALiBi (Press et al.) for 16 heads: 2^(-8/16 * h), h = 1..16 (CROMA's get_slopes)
    expected = torch.tensor([2.0 ** (-0.5 * h) for h in range(1, 17)])
    for name in ("croma", "base"):
        cfg = get_config(name)
        assert cfg.heads == 16, name
    model = ScaleAlibiModel(get_config("croma", dim=64, lores_depth=1, radar_depth=1, cross_depth=1,
                                       decoder_dim=32, decoder_heads=4))
    slopes = [mod.slopes for mod in model.modules() if getattr(mod, "slopes", None) is not None]
    assert slopes and all(torch.allclose(s, expected) for s in slopes)


def test_croma_draws_independent_radar_and_optical_masks():
    model = _model("croma")
    batch = _batch(4)
    del batch["naip_hires"]
    torch.manual_seed(7)
    out = model(batch)
    torch.manual_seed(7)
    n = (PX // 16) ** 2
    first, second = random_mask(4, n, 0.75, "cpu"), random_mask(4, n, 0.75, "cpu")
    assert torch.equal(out["masks"]["s1"], first) and torch.equal(out["masks"]["s2"], second)
    assert not torch.equal(first, second)
    # the shared-mask configs still draw one mask for every modality
    shared = _model("tiny")(_batch(4))
    assert torch.equal(shared["masks"]["s1"], shared["masks"]["s2"])


def test_per_modality_masks_inside_the_batch_are_refused_not_ignored():
    n = (PX // 16) ** 2
    masks = {"s1": random_mask(2, n, 0.75, "cpu"), "s2": random_mask(2, n, 0.75, "cpu")}
    with pytest.raises(ValueError, match="masks="), torch.no_grad():
        _model("croma")({**_batch(2), "masks": masks})


def test_croma_reconstructs_each_modality_on_its_own_masked_patches():
    model = _model("croma")
    batch = _batch(2)
    del batch["naip_hires"]
    n = (PX // 16) ** 2
    torch.manual_seed(3)
    masks = {"s1": random_mask(2, n, 0.75, "cpu"), "s2": random_mask(2, n, 0.75, "cpu")}
    with torch.no_grad():
        base = model(batch, masks=masks)
        # change S2 pixels only where S2 is masked: its encoder cannot see them, its loss must
        changed = batch["s2"].clone()
        grid = PX // 16
        for b in range(2):
            for i in masks["s2"][b].nonzero().flatten().tolist():
                r, c = divmod(i, grid)
                changed[b, :, r * 16:(r + 1) * 16, c * 16:(c + 1) * 16] += torch.randn(3, 16, 16)
        after = model({**batch, "s2": changed}, masks=masks)
    torch.testing.assert_close(after["embeddings"]["s2"], base["embeddings"]["s2"])
    torch.testing.assert_close(after["reconstruction_per_modality"]["s1"], base["reconstruction_per_modality"]["s1"])
    assert not torch.allclose(after["reconstruction_per_modality"]["s2"], base["reconstruction_per_modality"]["s2"])


def _croma_2d_alibi(grid: int, slopes: torch.Tensor) -> torch.Tensor:
    """CROMA's get_2dalibi: -slope * Euclidean distance between patch indices, (H, N, N)."""
    points = list(itertools.product(range(grid), range(grid)))
    dist = torch.tensor([[math.dist(p, q) for q in points] for p in points])
    return -slopes[:, None, None] * dist


def test_croma_bias_counts_patches_of_its_own_grid_whatever_the_ground_size():
    cfg = get_config("croma")
    from scale_alibi.model.nn.attention import alibi_slopes

    slopes = alibi_slopes(cfg.heads)
    for tile_m in (4 * 241.0, 241.0):  # a zoom-15 and a zoom-17 tile at 38 N
        xy = coords(torch.tensor([tile_m]), 4, cfg.reference_length_m, cfg.bias_units)
        torch.testing.assert_close(scale_alibi_bias(xy, xy, slopes)[0], _croma_2d_alibi(4, slopes))
    model = _model("croma")
    batch = _batch(2)
    with torch.no_grad():
        near = model.embed({**batch, "tile_size_m": torch.full((2,), 250.0)}, "s2")
        far = model.embed({**batch, "tile_size_m": torch.full((2,), 4000.0)}, "s2")
    torch.testing.assert_close(near, far)


def test_reference_length_follows_the_training_zoom_and_old_checkpoints_keep_theirs():
    from scale_alibi.model.nn.config import config_from_dict

    z17 = get_config("tiny", ref_zoom=17).resolved()
    assert z17.l_ref_m == pytest.approx(ground_size_at_lat_m(17, 38.0) * 16 / 256)
    # a sidecar written before these fields existed (null l_ref_m, zoom 15, no mask/bias fields)
    old = get_config("tiny").to_dict()
    for field in ("independent_masks", "bias_units"):
        old.pop(field)
    restored = config_from_dict({**old, "some_future_field": 1})
    assert restored.reference_length_m == pytest.approx(ground_size_at_lat_m(15, 38.0) * 16 / 256)
    assert not restored.independent_masks and restored.bias_units == "ground"


def test_a_checkpoint_from_before_the_new_fields_loads_with_its_old_reference_length(tmp_path):
    from scale_alibi.model.eval.embeddings import load_model
    from scale_alibi.model.train.checkpoint import save_checkpoint, stored_config

    torch.manual_seed(0)
    old_cfg = get_config("tiny")  # l_ref_m null, zoom 15: what `curate train` stored before
    model = ScaleAlibiModel(old_cfg)
    sidecar = old_cfg.to_dict()
    for field in ("independent_masks", "bias_units"):
        sidecar.pop(field)
    save_checkpoint(tmp_path, 5, model, None, {"model_config": sidecar})
    assert stored_config(tmp_path).reference_length_m == pytest.approx(old_cfg.reference_length_m)
    loaded = load_model(tmp_path)
    assert loaded.l_ref_m == pytest.approx(ground_size_at_lat_m(15, 38.0) * 16 / 256)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
