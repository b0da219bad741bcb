"""ScaleAlibiModel: interface, masking, three distinct contrastive pairs, DDP gradients, learning."""

from __future__ import annotations

import os
import socket
import tempfile

import pytest
import torch
import torch.multiprocessing as mp

from scale_alibi.model.nn.config import get_config
from scale_alibi.model.nn.losses import ContrastiveLoss, masked_patch_mse
from scale_alibi.model.nn.scale_alibi import (
    ScaleAlibiModel,
    expand_to_hires,
    group_hires,
    random_mask,
    split_ids_from_mask,
)
from scale_alibi.model.nn.vit import patchify

# tiny config on 64 px tiles (4x4 low-res grid, 8x8 hires): fast on 2 shared cores
PX = 64
SMALL = dict(dim=32, heads=4, lores_depth=1, radar_depth=1, hires_depth=1, cross_depth=1,
             decoder_dim=32, decoder_heads=4)


def make_batch(b: int, seed: int = 0, px: int = PX) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"s1": torch.randn(b, 2, px, px, generator=g),
            "s2": torch.randn(b, 3, px, px, generator=g),
            "naip_hires": torch.randn(b, 3, 2 * px, 2 * px, generator=g),
            "tile_size_m": 600.0 + 400.0 * torch.rand(b, generator=g)}


def make_model(name: str = "tiny", seed: int = 0, **overrides) -> ScaleAlibiModel:
    torch.manual_seed(seed)
    return ScaleAlibiModel(get_config(name, **{**SMALL, **overrides}))


def test_forward_interface_and_embed():
    model = make_model()
    batch = make_batch(3)
    out = model(batch)
    for key in ("loss", "contrastive", "reconstruction"):
        assert out[key].dim() == 0 and torch.isfinite(out[key])
    assert set(out["embeddings"]) == {"s1", "s2", "naip_hires"}
    for emb in out["embeddings"].values():
        assert emb.shape == (3, 32)
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    mask = out["mask"]
    assert mask.shape == (3, 16) and (mask.sum(1) == 12).all()  # 75% of the 4x4 grid
    with torch.no_grad():
        e = model.embed(batch, "naip_hires")
    assert e.shape == (3, 32)
    torch.testing.assert_close(e.norm(dim=-1), torch.ones(3))


def test_model_flex_backend_equals_reference_forward():
    batch = {**make_batch(2), "mask": random_mask(2, 16, 0.75, "cpu")}
    outs = {}
    for backend in ("flex", "reference"):
        model = make_model(attn_backend=backend)
        with torch.no_grad():  # CPU flex is forward-only
            outs[backend] = model(batch)
    for key in ("loss", "contrastive", "reconstruction"):
        torch.testing.assert_close(outs["flex"][key], outs["reference"][key], atol=1e-5, rtol=1e-5)
    for m in outs["flex"]["embeddings"]:
        torch.testing.assert_close(outs["flex"]["embeddings"][m],
                                   outs["reference"]["embeddings"][m], atol=1e-5, rtol=1e-5)


def test_presets():
    base, croma, tiny = get_config("base"), get_config("croma"), get_config("tiny")
    assert (base.dim, base.lores_depth, base.heads, base.patch_size) == (768, 12, 16, 8)
    assert base.use_hires and not croma.use_hires and croma.dim == base.dim
    assert (tiny.patch_size, tiny.mask_ratio) == (16, 0.75)
    assert (2 * base.lores_px // base.patch_size) ** 2 == 4096  # NAIP tokens (paper: "4092")
    # L_ref: one 8 px patch of a 256 px zoom-15 tile at 38 N, about 30 m
    assert base.reference_length_m == pytest.approx(963.7 / 32, rel=1e-3)
    assert get_config("base", l_ref_m=10.0).reference_length_m == 10.0
    with pytest.raises(KeyError):
        get_config("huge")


def test_croma_has_no_hires_encoder():
    model = make_model("croma")
    assert model.modalities == ("s1", "s2")
    assert "naip_hires" not in model.encoders and model.cross_hires is None
    batch = make_batch(2)
    del batch["naip_hires"]
    out = model(batch)
    assert set(out["embeddings"]) == {"s1", "s2"}
    assert set(out["contrastive_per_pair"]) == {("s1", "s2")}
    with pytest.raises(KeyError):
        model.embed(batch, "naip_hires")


def test_mask_is_ground_consistent_and_taken_from_batch():
    torch.manual_seed(5)
    m1 = random_mask(4, 16, 0.75, "cpu")
    torch.manual_seed(5)
    assert torch.equal(m1, random_mask(4, 16, 0.75, "cpu"))  # global RNG, reproducible
    ids, masked = split_ids_from_mask(m1)
    assert ids.shape == (4, 4) and not m1.gather(1, ids).any()
    assert masked.shape == (4, 12) and m1.gather(1, masked).all()
    hi = expand_to_hires(ids, 4)  # children of a kept low-res patch cover the same ground
    for b in range(4):
        for k, parent in enumerate(ids[b].tolist()):
            r, c = divmod(parent, 4)
            kids = {(2 * r + i) * 8 + 2 * c + j for i in (0, 1) for j in (0, 1)}
            assert set(hi[b, 4 * k: 4 * k + 4].tolist()) == kids
    # packing hires patches onto the low-res grid keeps each parent's children together
    img = torch.arange(8 * 8, dtype=torch.float32).reshape(1, 1, 8, 8)
    grouped = group_hires(patchify(img, 1), 4)  # 1 px "patches": values are pixel indices
    assert grouped[0, 5].flatten().tolist() == [18.0, 19.0, 26.0, 27.0]  # parent (1, 1)
    model = make_model()
    out = model({**make_batch(4), "mask": m1})
    assert torch.equal(out["mask"], m1)


def test_masked_ground_does_not_leak_into_the_encodings():
    model = make_model()
    batch = make_batch(2)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, [0, 5, 10, 15]] = False  # keep the diagonal
    with torch.no_grad():
        base = model({**batch, "mask": mask})
        noisy = {k: v.clone() for k, v in batch.items()}
        # overwrite low-res patch (0, 1) (masked) in every modality, hires = its 2x2 children
        noisy["s1"][:, :, 0:16, 16:32] = 9.0
        noisy["s2"][:, :, 0:16, 16:32] = 9.0
        noisy["naip_hires"][:, :, 0:32, 32:64] = 9.0
        out = model({**noisy, "mask": mask})
    for m in base["embeddings"]:
        torch.testing.assert_close(out["embeddings"][m], base["embeddings"][m])
    assert out["reconstruction"] != base["reconstruction"]  # the masked target did change


def test_contrastive_uses_three_distinct_pairs():
    loss_fn = ContrastiveLoss()
    g = torch.Generator().manual_seed(0)
    embs = {m: torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
            for m in ("s1", "s2", "naip_hires")}
    loss, pairs = loss_fn(embs)
    assert set(pairs) == {("s1", "s2"), ("s1", "naip_hires"), ("s2", "naip_hires")}
    assert all(a != b for a, b in pairs)
    torch.testing.assert_close(loss, torch.stack(list(pairs.values())).mean())
    for changed in embs:  # perturbing one modality changes exactly the two pairs involving it
        other = dict(embs)
        other[changed] = torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=-1)
        _, new_pairs = loss_fn(other)
        moved = {p for p in pairs if not torch.equal(pairs[p], new_pairs[p])}
        assert moved == {p for p in pairs if changed in p} and len(moved) == 2
    # identical embeddings across modalities with a sharp temperature: near-zero loss
    same = {m: embs["s1"] for m in embs}
    assert float(ContrastiveLoss(temperature_init=0.01)(same)[0].detach()) < float(loss.detach())


def test_contrastive_pairs_through_the_model():
    model = make_model()
    batch = make_batch(4)
    mask = random_mask(4, 16, 0.75, "cpu")
    with torch.no_grad():
        base = model({**batch, "mask": mask})["contrastive_per_pair"]
        radar = dict(batch, s1=batch["s1"] + torch.randn_like(batch["s1"]))
        moved = model({**radar, "mask": mask})["contrastive_per_pair"]
    changed = {p for p in base if not torch.equal(base[p], moved[p])}
    assert changed == {("s1", "s2"), ("s1", "naip_hires")}


def test_temperature_is_clamped():
    loss_fn = ContrastiveLoss(temperature_init=0.07, max_logit_scale=100.0)
    with torch.no_grad():
        loss_fn.log_logit_scale.fill_(50.0)
    assert float(loss_fn.logit_scale.detach()) == pytest.approx(100.0)


def test_reconstruction_counts_masked_patches_only():
    target = torch.randn(2, 4, 2, 6)  # 4 patches of 2 sub-patches x 6 pixels
    mask = torch.tensor([[True, False, True, False], [False, False, True, True]])
    _, ids_masked = split_ids_from_mask(mask)
    sub = target.gather(1, ids_masked[..., None, None].expand(-1, -1, 2, 6))
    mean, std = sub.mean(-1, keepdim=True), sub.std(-1, unbiased=False, keepdim=True)
    pred = ((sub - mean) / std).reshape(2, 2, 12)  # exact predictions of the normalised targets
    target[~mask] += 100.0  # kept patches are neither read nor scored
    assert float(masked_patch_mse(pred, target, ids_masked)) == pytest.approx(0.0, abs=1e-9)
    pred[0, 0] += 1.0
    assert float(masked_patch_mse(pred, target, ids_masked)) == pytest.approx(1.0 / 4, rel=1e-5)
    target[0, 0, 1] *= 7.0  # a sub-patch's scale is normalised away on its own
    target[0, 0, 0] += 3.0
    assert float(masked_patch_mse(pred, target, ids_masked)) == pytest.approx(1.0 / 4, rel=1e-4)


def test_tiny_loss_decreases_on_a_fixed_batch():
    model = make_model()
    batch = {**make_batch(8), "mask": random_mask(8, 16, 0.75, "cpu")}
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < 0.8 * losses[0], losses


# ---- DDP: 2 gloo ranks on halves == one process on the union -------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_rank(rank: int, world: int, port: int, batch: dict, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = DDP(make_model(seed=1))
        n = batch["s1"].shape[0] // world
        local = {k: v[rank * n:(rank + 1) * n] for k, v in batch.items()}
        out = model(local)
        out["loss"].backward()
        grads = {k: p.grad for k, p in model.module.named_parameters()}
        torch.save({"grads": grads, "contrastive": out["contrastive"].detach()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_match_one_process_on_the_union():
    batch = {**make_batch(8, seed=3), "mask": random_mask(8, 16, 0.75, "cpu")}
    model = make_model(seed=1)
    out = model(batch)
    out["loss"].backward()
    expected = {k: p.grad for k, p in model.named_parameters()}
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_ddp_rank, args=(2, _free_port(), batch, tmp), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(2)]
    for name, grad in expected.items():
        for r in ranks:  # DDP leaves the averaged gradient on every rank
            torch.testing.assert_close(r["grads"][name], grad, atol=2e-6, rtol=1e-4,
                                       msg=lambda m: f"{name}: {m}")
    # the contrastive loss is gathered: each rank's mean over its rows averages to the union's
    torch.testing.assert_close((ranks[0]["contrastive"] + ranks[1]["contrastive"]) / 2,
                               out["contrastive"].detach(), atol=1e-6, rtol=1e-5)
    assert expected["contrastive.log_logit_scale"].abs() > 0
