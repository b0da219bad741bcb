"""The streaming loader against the real server over a socket, with real DataLoader workers."""

from __future__ import annotations

import functools
import hashlib
import json
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import imagecodecs
import numpy as np
import pyarrow as pa
import pytest
import torch

from scale_alibi.contract.errors import UserError
from scale_alibi.contract.release import HIRES_NAMES, MODALITIES, Release, content_hash, write_manifest
from scale_alibi.model.data.decode import decode_triplet
from scale_alibi.model.data.loader import StreamProgress, TripletStream, make_loader
from scale_alibi.model.data.order import ShardPlan, buffer_order
from scale_alibi.model.data.tar import StreamBroken, iter_samples, iter_tar
from scale_alibi.model.data.transforms import Normalize, load_stats

N_TRIPLETS = 40  # 32 train + 8 heldout


def _png(rng: np.random.Generator) -> bytes:
    # incompressible pixels: ~200 KB a tile, so a shard stream is far larger than the socket
    # buffers and a server restart really cuts streams in the middle
    return imagecodecs.png_encode(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8), level=1)


def make_release(root: Path, name: str = "loadertest", n: int = N_TRIPLETS, z: int = 14) -> Release:
    """A finished release of n triplets with distinct random pixels; every 5th is heldout."""
    rng = np.random.default_rng(7)
    rel = Release(root, name)
    rows = []
    for i in range(n):
        x, y = 4600 + i % 8, 6200 + i // 8
        hashes = {}
        for member, path in rel.triplet_paths(z, x, y).items():
            data = _png(rng)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            hashes[member] = content_hash(data)
        rows.append({"z": z, "x": x, "y": y, "split": "heldout" if i % 5 == 4 else "train",
                     "hash_s1": hashes["s1"], "hash_s2": hashes["s2"], "hash_naip": hashes["naip"],
                     "hash_naip_hires": [hashes[h] for h in HIRES_NAMES]})
    schema = pa.schema([("z", pa.int32()), ("x", pa.int64()), ("y", pa.int64()), ("split", pa.string()),
                        ("hash_s1", pa.string()), ("hash_s2", pa.string()), ("hash_naip", pa.string()),
                        ("hash_naip_hires", pa.list_(pa.string()))])
    write_manifest(pa.Table.from_pylist(rows, schema=schema), rel.manifest_path, {"release": name})
    return rel


def pixel_hash(images: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for m in MODALITIES:
        t = images[m].contiguous()
        h.update(m.encode() + str(tuple(t.shape)).encode() + t.numpy().tobytes())
    return h.hexdigest()


def batch_hashes(batch: dict) -> list[str]:
    return [pixel_hash({m: batch[m][i] for m in MODALITIES}) for i in range(batch["z"].shape[0])]


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Release:
    return make_release(tmp_path_factory.mktemp("loader-data"))


@pytest.fixture(scope="module")
def disk_hashes(release) -> dict[tuple[int, int, int], str]:
    """Pixel hash of every train triplet decoded straight from the PNGs on disk."""
    rows = release.read_manifest().to_pylist()
    out = {}
    for r in rows:
        if r["split"] == "train":
            members = {k: p.read_bytes() for k, p in release.triplet_paths(r["z"], r["x"], r["y"]).items()}
            out[(r["z"], r["x"], r["y"])] = pixel_hash(decode_triplet(members))
    return out


@pytest.fixture(scope="module")
def server(release):
    from scale_alibi.serve.process import ServerProcess

    with ServerProcess(release.root) as proc:
        yield proc


CFG = dict(shard_size=6, seed=3, shuffle_buffer=4, prefetch=2)  # 32 train -> 6 shards, the last short


def run(ds: TripletStream, batch_size: int = 3, stop_after: int | None = None, progress: StreamProgress | None = None, on_batch=None):
    """Iterate a DataLoader(num_workers=2) over ds; (worker, [(z,x,y)], [pixel hash]) per batch."""
    loader = make_loader(ds, batch_size=batch_size, num_workers=2, prefetch_factor=1)
    out = []
    for i, batch in enumerate(loader):
        out.append((batch["worker"], list(zip(batch["z"].tolist(), batch["x"].tolist(), batch["y"].tolist())), batch_hashes(batch)))
        if progress is not None:
            progress.update(batch)
        if on_batch is not None:
            on_batch(i)
        if stop_after is not None and i + 1 == stop_after:
            break
    return out


@pytest.fixture(scope="module")
def reference(server):
    """The uninterrupted epoch-0 batch sequence of one rank with 2 workers."""
    return run(TripletStream(server.url, "loadertest", **CFG))


# ---------------------------------------------------------------------------- over the socket

def test_two_ranks_two_workers_see_every_triplet_once_by_pixels(server, disk_hashes):
    seen: list[tuple] = []
    per_rank = []
    for rank in range(2):
        ds = TripletStream(server.url, "loadertest", rank=rank, world_size=2, **CFG)
        batches = run(ds)
        rank_seen = [(k, h) for _, keys, hashes in batches for k, h in zip(keys, hashes)]
        assert len(rank_seen) == len(ds)
        per_rank.append(len(rank_seen))
        seen += rank_seen
    assert Counter(h for _, h in seen) == Counter(disk_hashes.values())  # every triplet exactly once
    assert all(disk_hashes[k] == h for k, h in seen)  # and each one's pixels under its own address
    assert sum(per_rank) == len(disk_hashes) and min(per_rank) > 0


def test_order_is_deterministic_per_seed_and_epoch(server, reference):
    again = run(TripletStream(server.url, "loadertest", **CFG))
    assert [b[1] for b in again] == [b[1] for b in reference]
    next_epoch = run(TripletStream(server.url, "loadertest", epoch=1, **CFG))
    assert sorted(k for b in next_epoch for k in b[1]) == sorted(k for b in reference for k in b[1])
    assert [b[1] for b in next_epoch] != [b[1] for b in reference]


@pytest.mark.parametrize("stop_after", [3, 4])  # next batch from worker 1, then from worker 0
def test_resume_from_state_continues_in_exactly_the_same_order(server, reference, stop_after):
    ds = TripletStream(server.url, "loadertest", **CFG)
    progress = StreamProgress(2, seed=ds.seed)
    first = run(ds, stop_after=stop_after, progress=progress)
    state = json.loads(json.dumps(progress.state_dict()))  # survives a JSON checkpoint
    assert state["consumed"] == [sum(len(b[1]) for b in first if b[0] == w) for w in range(2)]

    resumed_ds = TripletStream(server.url, "loadertest", **CFG)
    resumed_ds.load_state_dict(state)
    rest = run(resumed_ds)
    assert first + rest == reference


def _record(path: str, message: str) -> None:
    with open(path, "a") as f:
        f.write(message + "\n")


def test_server_kill_and_restart_mid_epoch_loses_and_repeats_nothing(server, tmp_path):
    # one 16-triplet shard per worker: ~26 MB streams, far more than loopback socket buffers hold
    cfg = {**CFG, "shard_size": 16}
    reference = run(TripletStream(server.url, "loadertest", **cfg))
    log = tmp_path / "retries.log"
    ds = TripletStream(server.url, "loadertest", on_retry=functools.partial(_record, str(log)), **cfg)

    def kill_restart(i: int) -> None:
        if i == 0:  # workers are blocked mid-stream on a full queue: the kill cuts their sockets
            server.restart(hard=True)  # SIGKILL: a crash, not a graceful drain

    got = run(ds, on_batch=kill_restart)
    assert got == reference  # same triplets, same pixels, same order: nothing lost or repeated
    if not (log.exists() and "from sample" in log.read_text()):
        # On an idle machine the whole shard can reach the client before the kill lands; the cut
        # and reconnect path is then covered deterministically by the flaky-proxy test below.
        pytest.skip("the server had sent every byte before it was killed: no stream was cut this run")


class FlakyProxy:
    """A loopback HTTP proxy to the server that answers the 1st shard request 503 and cuts the 2nd after `cut` bytes."""

    def __init__(self, upstream: str, cut: int):
        import http.server
        import urllib.request

        proxy = self
        self.shard_requests = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                with urllib.request.urlopen(upstream + self.path) as r:
                    body, ctype = r.read(), r.headers["content-type"]
                n = 0
                if self.path.startswith("/shards/"):
                    proxy.shard_requests += 1
                    n = proxy.shard_requests
                if n == 1:
                    self.send_response(503)
                    self.send_header("Content-Length", "2")
                    self.end_headers()
                    self.wfile.write(b"{}")
                    return
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body[:cut] if n == 2 else body)
                if n == 2:
                    self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_5xx_and_truncated_streams_are_retried_from_the_right_sample(server, disk_hashes):
    direct = TripletStream(server.url, "loadertest", **CFG)
    want = [(s["z"], s["x"], s["y"]) for s in direct]  # in-process: one worker, same plan
    proxy = FlakyProxy(server.url, cut=3 * 1024 * 1024 + 1000)  # mid-member of the 2nd or 3rd sample
    try:
        ds = TripletStream(proxy.url, "loadertest", **CFG)
        got = [((s["z"], s["x"], s["y"]), pixel_hash(s)) for s in ds]
    finally:
        proxy.close()
    assert [k for k, _ in got] == want
    assert all(disk_hashes[k] == h for k, h in got)
    assert ds.client.reconnects == 2 and proxy.shard_requests == len(range(0, 32, 6)) + 2


def test_shard_streams_read_from_chunks_keep_their_connection(server, disk_hashes):
    """Shards parsed straight from the body's chunks end cleanly: every shard of the epoch comes over
    one kept-alive connection, and every sample has its own pixels."""
    ds = TripletStream(server.url, "loadertest", **CFG)
    got = {(s["z"], s["x"], s["y"]): pixel_hash(s) for s in ds}  # in-process: one client, every shard
    assert got == disk_hashes
    pool = ds.client.pool.connection_from_url(server.url)
    assert pool.num_requests == 1 + len(range(0, 32, 6)) and pool.num_connections == 1


def test_unreachable_server_at_start_is_a_clear_error():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t = time.perf_counter()
    with pytest.raises(UserError, match=rf"cannot reach the tile server at http://127.0.0.1:{port}"):
        TripletStream(f"http://127.0.0.1:{port}", "loadertest")
    assert time.perf_counter() - t < 10


def test_unknown_release_is_a_clear_error(server):
    with pytest.raises(UserError, match="refused"):
        TripletStream(server.url, "no-such-release")


def test_stats_and_normalisation(server, release, disk_hashes):
    from click.testing import CliRunner

    from scale_alibi.cli.main import main

    result = CliRunner().invoke(main, ["stats", "--data", str(release.root), "--release", release.name])
    assert result.exit_code == 0, result.output
    stats = load_stats(release.path / "stats.json")
    # the mean/std of the train triplets' decoded channels, computed independently
    rows = [r for r in release.read_manifest().to_pylist() if r["split"] == "train"]
    s1 = np.stack([imagecodecs.png_decode(release.tile_path("s1", r["z"], r["x"], r["y"]).read_bytes())[:, :, 1:3] for r in rows])
    assert np.allclose(stats["s1"]["mean"], s1.reshape(-1, 2).mean(0), atol=1e-3)
    assert np.allclose(stats["s1"]["std"], s1.reshape(-1, 2).std(0), atol=1e-3)
    assert [len(stats[m]["mean"]) for m in MODALITIES] == [2, 3, 3, 3]

    ds = TripletStream(server.url, "loadertest", **CFG)
    raw = next(iter(make_loader(ds, batch_size=16, num_workers=0)))
    assert raw["s2"].dtype == torch.uint8  # workers ship bytes; normalising happens on the device
    batch = Normalize(stats)(raw)
    # the trainer's view: the release's stats where given, fixed constants for a modality without
    from scale_alibi.model.train.data import FALLBACK_MEAN, FALLBACK_STD, PrepareBatch

    mixed = PrepareBatch({"s2": stats["s2"]})(raw)
    assert torch.equal(mixed["s2"], batch["s2"])
    assert torch.allclose(mixed["s1"], (raw["s1"].float() - FALLBACK_MEAN) / FALLBACK_STD)
    assert batch["s2"].dtype == torch.float32 and batch["naip_hires"].shape[1:] == (3, 512, 512)
    assert abs(float(batch["s2"].mean())) < 0.1 and abs(float(batch["s2"].std()) - 1) < 0.1


def test_batch_layout_and_tags(server, release):
    ds = TripletStream(server.url, "loadertest", **CFG)
    batch = next(iter(make_loader(ds, batch_size=4, num_workers=0)))
    shapes = {m: tuple(batch[m].shape) for m in MODALITIES}
    assert shapes == {"s1": (4, 2, 256, 256), "s2": (4, 3, 256, 256), "naip": (4, 3, 256, 256), "naip_hires": (4, 3, 512, 512)}
    assert all(batch[m].dtype == torch.uint8 for m in MODALITIES)
    only = next(iter(make_loader(TripletStream(server.url, "loadertest", modalities=("s1", "naip_hires"), **CFG),
                                 batch_size=4, num_workers=0)))
    assert not {"s2", "naip"} & set(only) and torch.equal(only["naip_hires"], batch["naip_hires"])
    with pytest.raises(UserError, match="unknown modalities"):
        TripletStream(server.url, "loadertest", modalities=("s3",), **CFG)
    z, x, y = (int(batch[k][0]) for k in "zxy")
    assert batch["tile_size_m"][0] == pytest.approx(2 * np.pi * 6378137 * np.cos(np.arctan(np.sinh(np.pi * (1 - 2 * (y + 0.5) / 2**z)))) / 2**z, rel=1e-4)
    # hires quadrants are the z+1 children in row-major order; VV, VH are the PNG's G, B
    child = imagecodecs.png_decode(release.tile_path("naip", z + 1, 2 * x + 1, 2 * y).read_bytes())
    assert torch.equal(batch["naip_hires"][0, :, :256, 256:], torch.from_numpy(child).permute(2, 0, 1))
    s1 = imagecodecs.png_decode(release.tile_path("s1", z, x, y).read_bytes())
    assert torch.equal(batch["s1"][0], torch.from_numpy(s1[:, :, 1:3]).permute(2, 0, 1))


def test_a_workers_batch_arrives_as_one_shared_buffer(server, disk_hashes):
    """Every tensor of a batch is a view of one shared-memory buffer (one file descriptor to pass per
    batch, not one per tensor), and each view holds its own values."""
    loader = make_loader(TripletStream(server.url, "loadertest", **CFG), batch_size=4, num_workers=2)
    for batch in loader:
        tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
        assert len(tensors) == 10 and all(t.is_shared() for t in tensors)
        assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
        keys = list(zip(batch["z"].tolist(), batch["x"].tolist(), batch["y"].tolist()))
        assert [disk_hashes[k] for k in keys] == batch_hashes(batch)
        sizes = [2 * np.pi * 6378137 * np.cos(np.arctan(np.sinh(np.pi * (1 - 2 * (y + 0.5) / 2**z)))) / 2**z for z, _, y in keys]
        assert batch["tile_size_m"].dtype == torch.float32 and np.allclose(batch["tile_size_m"].numpy(), sizes, rtol=1e-5)
        assert batch["shard"].dtype == batch["offset"].dtype == torch.int64


# ---------------------------------------------------------------------------- pure functions

@pytest.mark.parametrize("n,shard_size,world_size,workers", [(32, 6, 2, 2), (7, 3, 3, 2), (50, 4, 2, 3), (5, 8, 2, 2)])
def test_plan_partitions_every_position_once(n, shard_size, world_size, workers):
    world = world_size
    plan = ShardPlan(n, shard_size, seed=1, epoch=2, world_size=world, num_workers=workers, shuffle_buffer=5)
    got = [p for r in range(world) for w in range(workers) for p in plan.worker_order(r, w)]
    want = [(s, o) for s in range(plan.num_shards) for o in range(min(shard_size, n - s * shard_size))]
    assert sorted(got) == want and len(got) == n
    # a rank's share does not depend on how many workers read it
    other = ShardPlan(n, shard_size, 1, 2, world, workers + 1, 5)
    assert [sum(plan.worker_samples(r)) for r in range(world)] == [sum(other.worker_samples(r)) for r in range(world)]


def test_the_first_sample_of_an_epoch_is_known_without_walking_the_epoch():
    import time

    # 10^7 samples per worker: walking them all first took seconds (and a list of every position).
    plan = ShardPlan(2 * 10**7, 64, seed=1, epoch=0, world_size=1, num_workers=2, shuffle_buffer=256)
    t0 = time.perf_counter()
    order = plan.worker_order(0, 1)
    head = [next(order) for _ in range(1000)]
    assert time.perf_counter() - t0 < 0.5
    small = ShardPlan(2 * 64 * 40, 64, seed=1, epoch=0, world_size=1, num_workers=2, shuffle_buffer=256)
    # the same prefix as a plan small enough to walk whole: the order does not depend on the epoch's length
    assert head == list(small.worker_order(0, 1))[:1000]


def test_buffer_order_is_a_bounded_shuffle():
    positions = [(0, i) for i in range(100)]
    order = list(buffer_order(positions, 10, np.random.default_rng(0)))
    assert sorted(order) == positions and order != positions
    # a shuffle buffer of 10 never emits an item more than 9 places before it arrives
    assert all(order.index(p) >= p[1] - 9 for p in positions)


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def pieces(data: bytes, sizes: list[int]) -> list[bytes]:
    """`data` cut into consecutive pieces of `sizes` (cycled), as a chunked HTTP body arrives."""
    out, i, k = [], 0, 0
    while i < len(data):
        out.append(data[i : i + sizes[k % len(sizes)]])
        i += sizes[k % len(sizes)]
        k += 1
    return out


@pytest.mark.parametrize("sizes", [[1 << 20], [1], [511, 513, 7], [512], [700, 5000, 3]])
def test_tar_reader_groups_samples_and_detects_truncation(sizes):
    long_key = "k" * 120  # forces a PAX long-name header
    data = _tar([("1_2_3.s1.png", b"a" * 700), ("1_2_3.json", b"{}"), (f"{long_key}.s2.png", b"b")])
    samples = list(iter_samples(iter_tar(pieces(data, sizes))))  # members inside and across pieces
    assert samples == [("1_2_3", {"s1": b"a" * 700, "json": b"{}"}), (long_key, {"s2": b"b"})]
    for cut in (100, 512 + 300, 1536 + 10, 1536 + 700):  # in a header, in a member, in its padding
        with pytest.raises(StreamBroken):
            list(iter_tar(pieces(data[:cut], sizes)))
