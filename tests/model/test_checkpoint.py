"""Checkpoints: safetensors for model and optimizer tensors, a JSON sidecar for the rest, atomic writes."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from scale_alibi.model.nn.config import get_config
from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel
from scale_alibi.model.train import checkpoint as ckpt
from scale_alibi.model.train.optim import TrainConfig, build_optimizer


def _batch(n: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"s1": torch.randn(n, 2, 64, 64, generator=g), "s2": torch.randn(n, 3, 64, 64, generator=g),
            "naip_hires": torch.randn(n, 3, 128, 128, generator=g), "tile_size_m": torch.full((n,), 1000.0)}


def _trained(steps: int = 2):
    torch.manual_seed(0)
    model = ScaleAlibiModel(get_config("tiny"))
    opt = build_optimizer(model, TrainConfig(lr=1e-3))
    for _ in range(steps):
        opt.zero_grad()
        model(_batch())["loss"].backward()
        opt.step()
    return model, opt


def test_model_and_optimizer_round_trip(tmp_path):
    model, opt = _trained()
    path = ckpt.save_checkpoint(tmp_path, 2, model, opt, {"epoch": 1, "loader": {"consumed": [3, 4]}})
    assert ckpt.latest_checkpoint(tmp_path) == path

    torch.manual_seed(123)  # different initial weights
    model2 = ScaleAlibiModel(get_config("tiny"))
    opt2 = build_optimizer(model2, TrainConfig(lr=1e-3))
    sidecar = ckpt.load_checkpoint(path, model2, opt2)
    assert sidecar["step"] == 2 and sidecar["epoch"] == 1 and sidecar["loader"] == {"consumed": [3, 4]}
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), name
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    assert s1["state"].keys() == s2["state"].keys() and len(s1["state"]) > 10
    for i in s1["state"]:
        for k, v in s1["state"][i].items():
            assert torch.equal(v, s2["state"][i][k]), (i, k)

    # one more identical step from both: the optimizer really continues (moments, step count)
    for m, o in ((model, opt), (model2, opt2)):
        torch.manual_seed(5)
        o.zero_grad()
        m(_batch())["loss"].backward()
        o.step()
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), name


def test_files_are_safetensors_and_json_only(tmp_path):
    model, opt = _trained(1)
    path = ckpt.save_checkpoint(tmp_path, 1, model, opt, {"config": {"name": "tiny"}})
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "optimizer.safetensors", "state.json"]
    tensors = load_file(str(path / "optimizer.safetensors"))
    assert any(k.endswith(".exp_avg") for k in tensors) and any(k.endswith(".exp_avg_sq") for k in tensors)
    assert set(load_file(str(path / "model.safetensors"))) == set(model.state_dict())
    sidecar = json.loads((path / "state.json").read_text())
    assert sidecar["step"] == 1 and sidecar["config"] == {"name": "tiny"}
    assert sidecar["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-3)


def test_rng_states_round_trip_through_json():
    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    state = json.loads(json.dumps(ckpt.get_rng_state()))
    first = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    ckpt.set_rng_state(state)
    again = (torch.rand(5), np.random.rand(5), [random.random() for _ in range(5)])
    assert torch.equal(first[0], again[0])
    assert np.array_equal(first[1], again[1])
    assert first[2] == again[2]


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model, opt = _trained(1)
    good = ckpt.save_checkpoint(tmp_path, 1, model, opt, {"epoch": 0})
    calls = {"n": 0}
    real = ckpt.save_file

    def dying_save_file(tensors, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # model written, optimizer not: the process "dies" here
            raise KeyboardInterrupt("killed mid-save")
        return real(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", dying_save_file)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, model, opt, {"epoch": 0})
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", good.name]  # no debris
    ckpt.load_checkpoint(good, model, opt)


def test_keeps_only_the_last_checkpoints_and_shared_tensors(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)
            self.b.weight = self.a.weight  # tied weights: safetensors alone refuses aliases

    m = Tied()
    for step in (1, 2, 3):
        last = ckpt.save_checkpoint(tmp_path, step, m, None, {}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-000000002", "step-000000003"]
    m2 = Tied()
    ckpt.load_checkpoint(last, m2)
    assert torch.equal(m2.a.weight, m.a.weight) and m2.b.weight is m2.a.weight
