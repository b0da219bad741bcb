"""`curate eval`'s inputs: checkpoints record the normalisation they trained with and eval uses it
by default; a --stats file of the wrong shape (GEO-Bench's own band_stats.json), invalid JSON or a
non-object is refused; checkpoints are checked before any task data is read; a truncated HDF5
sample or a task missing band_stats.json / default_partition.json is one error line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from scale_alibi.cli.main import main
from scale_alibi.contract.release import CHANNELS, MODALITIES
from scale_alibi.model.eval.embeddings import eval_stats
from scale_alibi.model.nn.config import get_config
from scale_alibi.model.train.checkpoint import NORMALIZATION_KEY, STATE_FILE
from scale_alibi.model.train.data import FALLBACK_MEAN, FALLBACK_STD, IMAGE_KEYS, PrepareBatch
from scale_alibi.model.train.optim import TrainConfig
from scale_alibi.model.train.trainer import Trainer
from tests.conftest import tiny_model
from tests.geobench_factory import write_task

TASK = "m-pv4ger"
# Stats as `curate stats` writes them for a release: distinct per channel, so a mix-up shows.
STATS = {m: {"mean": [40.0 + 10 * c + i for c in range(CHANNELS[m])],
             "std": [20.0 + 5 * c + i for c in range(CHANNELS[m])]} for i, m in enumerate(MODALITIES)}


def save_run(run_dir: Path, stats: dict | None) -> Path:
    """A checkpoint written by the trainer, as `curate train` configures it (step 0, no batches)."""
    prepare = PrepareBatch(stats)
    trainer = Trainer(tiny_model(), TrainConfig(steps=1, batch_size=2, progress=False), run_dir,
                      model_config=get_config("tiny", ref_zoom=17).resolved().to_dict(), prepare=prepare,
                      normalization=prepare.record())
    try:
        path = trainer.save(None)
    finally:
        trainer.close()
    assert path is not None
    return path


def curate(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_error_line(result, *mentions: str) -> str:
    lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
    assert result.exit_code == 2 and lines and lines[-1].startswith("error: "), (result.exit_code, result.output[-3000:])
    assert sum(ln.startswith("error: ") for ln in lines) == 1 and "Traceback" not in result.output
    for m in mentions:
        assert m in lines[-1], lines[-1]
    return lines[-1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {"with-stats": save_run(root / "a", STATS), "fixed": save_run(root / "b", None)}


@pytest.fixture
def geobench(tmp_path) -> Path:
    root = tmp_path / "geobench"
    write_task(root, TASK, "rgb")
    return root


def task_dir(root: Path) -> Path:
    return root / "classification_v1.0" / TASK


def test_a_checkpoint_records_the_stats_it_trained_with_and_eval_uses_them(runs):
    state = json.loads((runs["with-stats"] / STATE_FILE).read_text())
    # Every modality the model reads (the 256 px naip is not one), as given.
    assert state[NORMALIZATION_KEY] == {"modalities": {m: STATS[m] for m in IMAGE_KEYS}, "fixed_constants": []}
    said: list[str] = []
    assert eval_stats(runs["with-stats"], None, ["naip_hires", "s2"], said.append) == \
        {m: STATS[m] for m in ("naip_hires", "s2")}
    assert said == []
    # An explicit --stats wins, and eval says that it differs from what the checkpoint trained with.
    other = {m: {"mean": [1.0] * CHANNELS[m], "std": [2.0] * CHANNELS[m]} for m in ("naip_hires", "s2")}
    assert eval_stats(runs["with-stats"], other, ["naip_hires", "s2"], said.append) == other
    assert len(said) == 1 and "trained with other normalisation stats" in said[0]


def test_a_checkpoint_trained_with_the_fixed_constants_says_so_and_evaluates_with_them(runs):
    state = json.loads((runs["fixed"] / STATE_FILE).read_text())
    assert state[NORMALIZATION_KEY]["fixed_constants"] == list(IMAGE_KEYS)
    said: list[str] = []
    got = eval_stats(runs["fixed"], None, ["s2"], said.append)
    assert got == {"s2": {"mean": [FALLBACK_MEAN] * 3, "std": [FALLBACK_STD] * 3}}
    assert len(said) == 1 and "fixed normalisation constants for s2" in said[0]


def test_a_checkpoint_without_a_record_is_refused_unless_stats_are_given(runs, geobench, tmp_path):
    old = tmp_path / "old-run"
    shutil.copytree(runs["with-stats"].parent.parent, old)
    ckpt = next((old / "checkpoints").glob("step-*"))
    state = json.loads((ckpt / STATE_FILE).read_text())
    del state[NORMALIZATION_KEY]
    (ckpt / STATE_FILE).write_text(json.dumps(state))
    result = curate("eval", "--checkpoint", old, "--tasks", TASK, "--geobench-dir", geobench, "--out", tmp_path / "out")
    one_error_line(result, "does not record the normalisation stats", "--stats")
    assert not (tmp_path / "out").exists()


def test_stats_files_of_the_wrong_shape_are_refused_before_any_task_data(runs, geobench, tmp_path):
    band_stats = task_dir(geobench) / "band_stats.json"  # GEO-Bench's own: per band, not per modality
    not_json = tmp_path / "not.json"
    not_json.write_text("{mean: 1")
    a_list = tmp_path / "list.json"
    a_list.write_text("[1, 2, 3]")
    two_channels = tmp_path / "two.json"
    two_channels.write_text(json.dumps({"modalities": {**STATS, "s2": {"mean": [1, 2], "std": [1, 1]}}}))
    nan_std = tmp_path / "nan.json"
    nan_std.write_text(json.dumps({"modalities": {**STATS, "naip_hires": {"mean": [1, 2, 3], "std": [1, 0, 1]}}}))
    cases = {band_stats: "has no naip_hires mean and std of 3 channels", not_json: "not JSON",
             a_list: "is not a JSON object", two_channels: "has no s2 mean and std of 3 channels",
             nan_std: "has no naip_hires mean and std of 3 channels (std > 0)"}
    for path, mentions in cases.items():
        result = curate("eval", "--checkpoint", runs["with-stats"], "--tasks", TASK, "--geobench-dir", geobench,
                        "--stats", path, "--out", tmp_path / "out")
        assert str(path) in one_error_line(result, mentions)
    assert not (tmp_path / "out").exists()


def test_a_bad_checkpoint_is_reported_before_task_data_is_read(runs, geobench, tmp_path):
    (task_dir(geobench) / "band_stats.json").unlink()  # reading the task would fail: it must not be read
    broken = tmp_path / "broken"
    shutil.copytree(runs["with-stats"], broken)
    model = broken / "model.safetensors"
    model.write_bytes(model.read_bytes()[:1000])
    garbage = tmp_path / "garbage"
    shutil.copytree(runs["with-stats"], garbage)
    (garbage / STATE_FILE).write_text("{not json")
    for ckpt, mentions in ((broken, "cannot be loaded"), (garbage, "is not a checkpoint's JSON state")):
        result = curate("eval", "--checkpoint", ckpt, "--tasks", TASK, "--geobench-dir", geobench, "--out", tmp_path / "o")
        assert str(ckpt) in one_error_line(result, mentions)


@pytest.mark.parametrize("damage", ["truncated sample", "no band_stats.json", "no default_partition.json"])
def test_damaged_task_data_is_one_error_line(runs, geobench, tmp_path, damage):
    d = task_dir(geobench)
    if damage == "truncated sample":
        sample = sorted(d.glob("train_*.hdf5"))[0]
        sample.write_bytes(sample.read_bytes()[: sample.stat().st_size // 2])
        mentions = f"sample {sample.stem}"
    else:
        name = damage.removeprefix("no ")
        (d / name).unlink()
        mentions = f"has no {name}"
    result = curate("eval", "--checkpoint", runs["with-stats"], "--tasks", TASK, "--geobench-dir", geobench,
                    "--out", tmp_path / "out")
    one_error_line(result, f"GEO-Bench task {TASK}", mentions, "geobench-download")
