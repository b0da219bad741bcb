"""Shared pytest fixtures. Each block is owned by the module named in its comment; add yours below."""

from __future__ import annotations

import pytest


# -- synthetic world (scale_alibi/devworld) ----------------------------------------------------------
@pytest.fixture(scope="session")
def world_dir():
    """The default synthetic world, rendered once and cached between runs ($SCALE_ALIBI_CACHE)."""
    from scale_alibi.devworld import DEFAULT_WORLD, build_world, default_world_dir

    return build_world(default_world_dir(DEFAULT_WORLD), DEFAULT_WORLD)


@pytest.fixture(scope="session")
def world(world_dir):
    """The default world served: STAC API (rustac) + Range file server on free loopback ports."""
    from scale_alibi.devworld import start_world

    w = start_world(world_dir)
    try:
        yield w
    finally:
        w.stop()


@pytest.fixture(autouse=True)
def _world_faults_cleared(request):
    """After each test that used `world`: drop its leftover faults, delays and signature mode."""
    yield
    callspec = getattr(request.node, "callspec", None)
    parametrized = callspec is not None and "world" in callspec.params  # a parameter, not the fixture
    if "world" in request.fixturenames and not parametrized:
        request.getfixturevalue("world").files.clear_faults()
        from scale_alibi.curate.reader import clear_http_cache

        clear_http_cache()  # GDAL remembers a 403 per URL in-process: don't let it outlive the test


# -- curate build (scale_alibi/curate/pipeline/) -----------------------------------------------------------
@pytest.fixture(scope="session")
def built_release_info(world, tmp_path_factory):
    """A z17 build of the whole default world (local Dask cluster, 2 workers), with the bytes and
    requests it fetched: {"root", "name", "result", "requests", "bytes"}."""
    from shapely.geometry import box

    from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request

    root = tmp_path_factory.mktemp("built-release")
    world.files.reset_stats()
    result = build_release(root, resolve_request(zoom=17, region=box(*world.bbox), release="world-z17",
                                                 catalog=world.stac_url),
                           RunOptions(signer="none", workers=2, progress=False, echo=lambda m: None))
    stats = world.files.stats()
    return {"root": root, "name": "world-z17", "result": result, **stats}


@pytest.fixture(scope="session")
def z16(world, tmp_path_factory):
    """A z16 build of the whole world with 2x2-tile metatiles, in this process (many metatiles: the
    kill test's reference), and the bytes and requests it fetched: (Release, stats)."""
    from shapely.geometry import box

    from scale_alibi.contract.release import Release
    from scale_alibi.curate.pipeline import RunOptions, build_release, resolve_request

    root = tmp_path_factory.mktemp("z16")
    world.files.reset_stats()
    build_release(root, resolve_request(zoom=16, region=box(*world.bbox), release="w16", catalog=world.stac_url,
                                        metatile_levels=1),
                  RunOptions(scheduler="synchronous", signer="none", progress=False, echo=lambda m: None))
    return Release(root, "w16"), world.files.stats()


@pytest.fixture(scope="session")
def built_release(built_release_info):
    """(data_root, release_name) of a finished z17 release of the whole default world (~240 triplets)."""
    return built_release_info["root"], built_release_info["name"]


# -- training (scale_alibi/model/train/trainer.py): one tiny run shared by tests/model/test_train.py and tests/model/test_eval.py
# Trainer-side hyper-parameters for the CPU acceptance run (tiny config unchanged): 3,200 samples
# in 200 small steps rather than 100 large ones, since a model trained from scratch is short of updates.
STEPS = 200
BATCH = 16
LR = 3e-3
WARMUP = 10
MIN_HELDOUT = 64
BUDGET_S = 180.0  # the "at most 3 minutes on 2 cores" for the training itself


def tiny_model(ref_zoom: int = 17):
    """The tiny model, seeded, with L_ref at the release's zoom (as `curate train` sets it)."""
    import torch

    from scale_alibi.model.nn.config import get_config
    from scale_alibi.model.nn.scale_alibi import ScaleAlibiModel

    torch.manual_seed(0)
    return ScaleAlibiModel(get_config("tiny", ref_zoom=ref_zoom))


@pytest.fixture(scope="session")
def served(built_release):
    """(url, release name, stats) of the synthetic world's release behind a real server process."""
    import json
    from pathlib import Path

    from scale_alibi.contract.reader import StoredRelease
    from scale_alibi.model.data.stats import compute_stats
    from scale_alibi.serve.process import ServerProcess

    data_root, name = built_release
    stats_file = Path(data_root) / name / "stats.json"
    stats = json.loads(stats_file.read_text()) if stats_file.is_file() else compute_stats(StoredRelease(data_root, name), limit=64)
    with ServerProcess(data_root) as server:
        yield server.url, name, stats["modalities"]


@pytest.fixture(scope="session")
def heldout(served):
    from scale_alibi.model.train.data import collect_split

    url, name, stats = served
    data = collect_split(url, name, "heldout")
    assert len(data["z"]) >= MIN_HELDOUT, "the release needs at least 64 held-out tiles for the retrieval check"
    return data


@pytest.fixture(scope="session")
def trained(served, heldout, tmp_path_factory):
    """Train tiny for STEPS steps from the server; measure retrieval before and after."""
    import json
    import time

    from scale_alibi.model.eval.retrieval import retrieval_top1
    from scale_alibi.model.train.data import PrepareBatch, StreamSource
    from scale_alibi.model.train.optim import TrainConfig
    from scale_alibi.model.train.trainer import Trainer

    url, name, stats = served
    prepare = PrepareBatch(stats)
    model = tiny_model()
    untrained = retrieval_top1(model, heldout, prepare=prepare)
    run_dir = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(steps=STEPS, batch_size=BATCH, lr=LR, warmup_steps=WARMUP, progress=False, log_every=5)
    trainer = Trainer(model, cfg, run_dir, model_config=model.cfg.resolved().to_dict(), prepare=prepare)
    source = StreamSource(url, name, BATCH, num_workers=2, seed=0)
    t0 = time.perf_counter()
    losses = trainer.fit(source)
    seconds = time.perf_counter() - t0
    trainer.close()
    after = retrieval_top1(model, heldout, prepare=prepare)
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    figures = {"loss_first20": first, "loss_last20": last, "ratio": last / first, "top1": after.top1,
               "top1_untrained": untrained.top1, "chance": after.chance, "n_heldout": after.n,
               "samples_per_s": STEPS * BATCH / seconds, "train_s": seconds}
    print("\ntraining figures:", json.dumps(figures))
    return {"losses": losses, "untrained": untrained, "after": after, "run_dir": run_dir, "figures": figures,
            "source": source, "model": model}


# -- object storage (scale_alibi/contract/storage.py) -----------------------------------------------------
@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-protocol server (moto_server, in-memory) on loopback, for the whole session."""
    from tests.object_store import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch) -> str:
    """`s3://<a new empty bucket>`, with this process's AWS environment pointing at the test server."""
    from tests.object_store import apply_environment, new_bucket

    apply_environment(s3_endpoint, monkeypatch.setenv)
    return f"s3://{new_bucket(s3_endpoint)}"
