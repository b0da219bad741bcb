"""Training through the real server: the tiny model learns the synthetic world (loss falls, held-out
S1->S2 retrieval far above chance and above the untrained model), resume is exact, the CLI works.

One training run (the session fixture `trained` in conftest.py, also read by tests/model/test_eval.py)
is shared by the assertions; budget: 3 minutes on 2 cores (the hyper-parameters and the figures
they gave are in docs/model.md, "Training on CPU").
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from scale_alibi.cli.main import main as cli
from scale_alibi.contract.tiles import ground_size_at_lat_m
from scale_alibi.model.eval.retrieval import top1_from_embeddings
from scale_alibi.model.train.data import PrepareBatch, StreamSource
from scale_alibi.model.train.optim import TrainConfig, lr_at
from scale_alibi.model.train.trainer import Trainer
from tests.conftest import BUDGET_S, LR, MIN_HELDOUT, STEPS
from tests.conftest import tiny_model as _model


def test_loss_falls(trained):
    losses = trained["losses"]
    assert len(losses) == STEPS
    assert trained["figures"]["ratio"] <= 0.7, trained["figures"]


def test_training_fits_its_time_budget(trained):
    # Twice the budget: catches a regression (a slower step, a stalled loader) without turning a
    # busy CI machine red; the measured time is printed with the other figures.
    assert trained["figures"]["train_s"] <= 2 * BUDGET_S, trained["figures"]


def test_heldout_retrieval_beats_chance_and_untrained(trained):
    after, untrained = trained["after"], trained["untrained"]
    assert after.n >= MIN_HELDOUT
    assert after.top1 >= 10 * after.chance, trained["figures"]
    assert after.top1 >= 3 * max(untrained.top1, after.chance / 3), trained["figures"]


def test_run_writes_checkpoint_and_tensorboard(trained):
    run_dir = trained["run_dir"]
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    sidecar = json.loads((run_dir / "checkpoints" / latest / "state.json").read_text())
    assert sidecar["step"] == STEPS
    consumed = sidecar["ranks"][0]["loader"]
    assert consumed["epoch"] >= 0 and sum(consumed["consumed"]) > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/contrastive", "train/reconstruction", "train/lr", "train/samples_per_s"} <= tags
    assert acc.Scalars("train/loss")[-1].step == STEPS - 1


def test_resume_mid_epoch_repeats_the_uninterrupted_losses(served, tmp_path):
    """Kill after step 6 (mid-epoch, 2 DataLoader workers), resume: the next 10 losses equal the uninterrupted run's."""
    url, name, stats = served
    total, stop, batch = 16, 6, 8
    prepare = PrepareBatch(stats)

    def run(run_dir, resume=False, stop_at=None):
        cfg = TrainConfig(steps=total, batch_size=batch, lr=LR, warmup_steps=3, deterministic=True, progress=False)
        trainer = Trainer(_model(), cfg, run_dir, prepare=prepare)
        torch.manual_seed(42)  # the mask RNG's state at the start of a fresh run
        source = StreamSource(url, name, batch, num_workers=2, seed=3)
        losses = trainer.fit(source, resume=resume, stop_at=stop_at)
        trainer.close()
        return losses, source

    full, _ = run(tmp_path / "full")
    part, source = run(tmp_path / "part", stop_at=stop)
    assert len(part) == stop and part == full[:stop]
    state = json.loads((tmp_path / "part" / "checkpoints" / f"step-{stop:09d}" / "state.json").read_text())
    loader_state = state["ranks"][0]["loader"]
    assert loader_state["epoch"] == 0 and 0 < sum(loader_state["consumed"]) < len(source.dataset)  # mid-epoch
    resumed, _ = run(tmp_path / "part", resume=True)
    assert len(resumed) == total - stop
    assert max(abs(a - b) for a, b in zip(resumed[:10], full[stop : stop + 10])) <= 1e-5


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(s, cfg) for s in range(100)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:11]))  # rising during warmup
    assert lrs[10] == pytest.approx(1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))  # then falling
    assert lrs[-1] == pytest.approx(1e-4)


def test_top1_counts_only_strict_own_matches():
    q = torch.eye(4)
    assert top1_from_embeddings(q, q) == 1.0
    assert top1_from_embeddings(q, q.roll(1, 0)) == 0.0
    assert top1_from_embeddings(torch.ones(4, 3), torch.ones(4, 3)) == 0.0  # all ties: no hits


def test_cli_unreachable_server_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["train", "--server", "http://127.0.0.1:9", "--release", "x",
                                      "--config", "tiny", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "127.0.0.1:9" in lines[0]


def test_cli_trains_and_resumes(served, tmp_path):
    url, name, stats = served
    stats_file = tmp_path / "stats.json"
    stats_file.write_text(json.dumps({"modalities": stats}))
    args = ["train", "--server", url, "--release", name, "--config", "tiny", "--batch-size", "4",
            "--out", str(tmp_path / "run"), "--stats", str(stats_file), "--num-workers", "0", "--eval-tiles", "8"]
    first = CliRunner().invoke(cli, [*args, "--steps", "2"])
    assert first.exit_code == 0, first.output
    assert "retrieval top-1" in first.output
    again = CliRunner().invoke(cli, [*args, "--steps", "2"])
    assert again.exit_code == 2 and "--resume" in again.output  # refuses to overwrite a run
    resumed = CliRunner().invoke(cli, [*args, "--steps", "3", "--resume", "--eval-tiles", "0"])
    assert resumed.exit_code == 0, resumed.output
    assert (tmp_path / "run" / "checkpoints" / "step-000000003").is_dir()
    # L_ref follows the served release's zoom (17): one 16 px patch of a 256 px z17 tile at 38 N
    stored = json.loads((tmp_path / "run" / "checkpoints" / "step-000000003" / "state.json").read_text())["model_config"]
    assert stored["ref_zoom"] == 17
    assert stored["l_ref_m"] == pytest.approx(ground_size_at_lat_m(17, 38.0) * 16 / 256)
