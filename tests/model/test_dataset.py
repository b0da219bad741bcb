"""The map-style Dataset (scale_alibi.model.data.dataset) against the HTTP stream: for the same split,
shard size, seed and epoch, item shard * shard_size + offset is the sample the stream yields at
(shard, offset), tensor for tensor, read from a directory or from a bucket; and `curate train --data`
trains from a release in a bucket with no server."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from scale_alibi.cli.main import main
from scale_alibi.contract.errors import UserError
from scale_alibi.contract.names import MODALITIES
from scale_alibi.contract.storage import remote_filesystem
from scale_alibi.model.data.dataset import ReleaseDataset
from scale_alibi.model.data.loader import TripletStream
from scale_alibi.serve.process import ServerProcess
from tests.cli_errors import one_error_line
from tests.release_factory import make_release

CONFIG = {"split": "train", "shard_size": 4, "seed": 3}


def _upload(local_root, url: str) -> None:
    fs, root = remote_filesystem(url)
    for p in sorted(local_root.rglob("*")):
        if p.is_file():
            fs.pipe_file(f"{root}/{p.relative_to(local_root).as_posix()}", p.read_bytes())


def test_the_dataset_gives_the_streams_samples_tensor_for_tensor_from_a_directory_and_a_bucket(tmp_path, s3_bucket):
    release = make_release(tmp_path / "data", "r", nx=4, ny=4)
    _upload(tmp_path / "data", f"{s3_bucket}/releases")
    rows = release.read_manifest().to_pylist()
    train = {(r["z"], r["x"], r["y"]) for r in rows if r["split"] == "train"}  # oracle: the manifest's split
    with ServerProcess(tmp_path / "data") as server:
        for epoch in (0, 2):
            stream = TripletStream(server.url, "r", epoch=epoch, shuffle_buffer=8, **CONFIG)
            streamed = list(stream)
            from_dir = ReleaseDataset(tmp_path / "data", "r", epoch=epoch, **CONFIG)
            from_bucket = ReleaseDataset(f"{s3_bucket}/releases", "r", epoch=epoch, **CONFIG)
            assert len(from_dir) == len(from_bucket) == len(streamed) == len(train) == 12
            assert {(s["z"], s["x"], s["y"]) for s in streamed} == train
            for s in streamed:
                index = s["shard"] * CONFIG["shard_size"] + s["offset"]
                for item in (from_dir[index], from_bucket[index]):
                    assert set(item) == set(s)
                    for key in ("z", "x", "y", "tile_size_m", "shard", "offset", "epoch"):
                        assert item[key] == s[key], key
                    for m in MODALITIES:
                        assert item[m].dtype == s[m].dtype == torch.uint8 and torch.equal(item[m], s[m]), m


def test_the_dataset_refuses_a_tile_whose_bytes_are_not_the_manifests(tmp_path):
    release = make_release(tmp_path / "data", "r", nx=2, ny=2, heldout_every=0)
    ds = ReleaseDataset(tmp_path / "data", "r", split="all", shard_size=2)
    row = ds.rows[ds.row_of(0)]
    path = release.tile_path("s2", row["z"], row["x"], row["y"])
    path.write_bytes(release.tile_path("s1", row["z"], row["x"], row["y"]).read_bytes())
    with pytest.raises(UserError, match="does not match the manifest's sha256.*--repair"):
        ds[0]


def test_train_reads_a_release_in_a_bucket_without_a_server(tmp_path, s3_bucket):
    make_release(tmp_path / "data", "r", nx=3, ny=3)
    _upload(tmp_path / "data", f"{s3_bucket}/releases")
    run = tmp_path / "run"
    result = CliRunner().invoke(main, [
        "train", "--data", f"{s3_bucket}/releases", "--release", "r", "--config", "tiny", "--steps", "2",
        "--batch-size", "2", "--num-workers", "0", "--out", str(run), "--checkpoint-every", "0", "--eval-tiles", "2"])
    assert result.exit_code == 0, result.output
    assert "steps 2:" in result.output and "retrieval top-1" in result.output
    assert (run / "checkpoints" / "latest").is_file()


def test_train_takes_exactly_one_of_server_and_data(tmp_path):
    one_error_line(CliRunner().invoke(main, ["train", "--release", "r", "--out", str(tmp_path / "a")]),
                   "exactly one of --server")
    one_error_line(CliRunner().invoke(main, ["train", "--release", "r", "--out", str(tmp_path / "b"), "--data",
                                             str(tmp_path), "--server", "http://127.0.0.1:9"]), "exactly one of --server")


def test_the_dataset_source_resumes_at_the_batch_after_the_last_consumed_one(tmp_path):
    from scale_alibi.model.train.data import DatasetSource

    make_release(tmp_path / "data", "r", nx=4, ny=4)  # 12 train triplets: 6 batches of 2 per epoch

    def run(n: int, state: dict | None = None) -> tuple[list[dict], dict]:
        source = DatasetSource(str(tmp_path / "data"), "r", 2, num_workers=0, seed=7, shard_size=4)
        if state is not None:
            source.load_state_dict(state)
        got = []
        for batch in source.batches():
            got.append(batch)
            source.consumed(batch)
            if len(got) == n:
                return got, source.state_dict()
        raise AssertionError("batches() ended")

    whole, _ = run(9)  # across the end of epoch 0
    first, state = run(4)
    rest, _ = run(5, state)
    assert state["epoch"] == 0 and state["consumed"] == 8
    for a, b in zip(whole, first + rest):
        assert a["epoch"] == b["epoch"] and torch.equal(a["z"], b["z"]) and torch.equal(a["x"], b["x"])
        assert torch.equal(a["y"], b["y"]) and torch.equal(a["s2"], b["s2"])
    epoch0 = {(int(z), int(x), int(y)) for b in whole[:6] for z, x, y in zip(b["z"], b["x"], b["y"])}
    assert len(epoch0) == 12 and whole[6]["epoch"] == 1  # every triplet once, then the next epoch
