"""The grain input pipelines (kpflow.data.loaders): the same batches as the in-process iterators for a
seed, whatever the worker count; per-process rows that tile the global batch (in one process and in
a real two-process jax.distributed job); a resumed loader and a resumed training run continue with
the exact next batch."""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from test_train_cli import TINY, TINY_ENTRY, tiny_config

from kpflow import forecast, parallel
from kpflow.data import loaders
from kpflow.data.synthetic_video import make_synthetic_videos
from kpflow.data.video_augment import Augmentation
from kpflow.data.video_pairs import PairBatches, VideoFolder
from kpflow.data.windows import epoch_batches
from kpflow.training import forecaster as train_lib

REPO = pathlib.Path(__file__).resolve().parent.parent
KINDS = ("reflect", "reverse")
FULL_AUGMENTATION = {
    "flip_param": {"horizontal_flip": True, "time_flip": True},
    "resize_param": {"ratio": [0.9, 1.1]},
    "crop_param": {"size": [22, 22]},
    "jitter_param": {"brightness": 0.1, "contrast": 0.1, "saturation": 0.1, "hue": 0.1},
}


def _windows(count=37, length=12, dim=6, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, length, dim)).astype(np.float32)


def _reference(windows, batch_size, seed, steps, epochs, kinds=KINDS) -> list[np.ndarray]:
    """The folder pipeline's batches: epoch_batches, epochs 1..epochs, ``steps`` each."""
    out = []
    for epoch in range(1, epochs + 1):
        out += list(itertools.islice(epoch_batches(windows, batch_size, seed, epoch, kinds), steps))
    return out


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    return np.array_equal(a, b)


# steps within one permutation; a set no larger than one batch; more steps than one permutation holds
@pytest.mark.parametrize("steps,batch_size", [(4, 8), (3, 50), (9, 8)])
def test_window_batches_equal_the_folder_pipelines_for_the_seed(steps, batch_size):
    windows = _windows()
    ref = _reference(windows, batch_size, 7, steps, 3)
    got = list(loaders.Loader(loaders.WindowBatchSource(windows, batch_size, 7, steps, 3, KINDS)))
    assert len(got) == len(ref) == 3 * steps
    assert all(_equal(a, b) for a, b in zip(got, ref))
    other_seed = list(loaders.Loader(loaders.WindowBatchSource(windows, batch_size, 8, steps, 3, KINDS)))
    assert not all(_equal(a, b) for a, b in zip(other_seed, ref))


def test_worker_processes_give_the_same_batches_in_order():
    windows = _windows()
    ref = _reference(windows, 8, 3, 4, 2)
    got = list(loaders.Loader(loaders.WindowBatchSource(windows, 8, 3, 4, 2, KINDS), worker_count=2))
    assert len(got) == len(ref) and all(_equal(a, b) for a, b in zip(got, ref))


def test_process_rows_tile_each_global_batch():
    windows = _windows()
    ref = _reference(windows, 8, 1, 4, 2)
    parts = [loaders.WindowBatchSource(windows, 8, 1, 4, 2, KINDS, process_index=p, process_count=2) for p in (0, 1)]
    for s, batch in enumerate(ref):
        assert all(len(part[s]) == 4 for part in parts)
        assert _equal(np.concatenate([part[s] for part in parts]), batch)


def test_a_resumed_loader_continues_with_the_exact_next_batch():
    source = loaders.WindowBatchSource(_windows(), 8, 5, 4, 3, KINDS)
    loader = loaders.Loader(source)
    first = [next(loader) for _ in range(5)]
    state = json.loads(json.dumps(loader.state()))  # what a checkpoint's JSON meta keeps
    rest = list(loader)
    assert len(first) + len(rest) == 12 and state["next_batch"] == 5
    for workers in (0, 1):  # grain's own state, then a new worker count (restarted at the batch)
        resumed = list(loaders.Loader.resume(source, state, worker_count=workers))
        assert len(resumed) == len(rest) and all(_equal(a, b) for a, b in zip(resumed, rest))
    with pytest.raises(ValueError, match="input-pipeline state is malformed"):
        loaders.Loader.resume(source, {"grain": "x"})
    with pytest.raises(ValueError, match="outside the run's 12 batches"):
        loaders.Loader(source, start=13)


@pytest.fixture(scope="module")
def video_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    make_synthetic_videos(root, num_train=5, num_test=1, num_frames=9, size=24, fmt="png")
    return root


@pytest.mark.parametrize("id_sampling", [False, True])
def test_pair_batches_through_grain_equal_pair_batches(video_root, id_sampling):
    folder = VideoFolder(video_root, "train", frame_shape=(24, 24), id_sampling=id_sampling)
    folder.drop_unreadable()
    batches = PairBatches(folder, 4, num_repeats=6, seed=5, augment=Augmentation(FULL_AUGMENTATION))
    steps = 2 * batches.steps_per_epoch + 1
    ref = list(itertools.islice(batches, steps))
    workers = 1 if id_sampling else 0  # decoded in a worker process (the cache is not pickled)
    got = list(loaders.Loader(loaders.PairBatchSource(batches, steps), worker_count=workers))
    assert len(got) == steps and all(_equal(a, b) for a, b in zip(got, ref))
    assert got[0]["source"].shape == (4, 22, 22, 3)
    halves = [loaders.PairBatchSource(batches, steps, process_index=p, process_count=2) for p in (0, 1)]
    assert _equal(np.concatenate([h[3]["driving"] for h in halves]), ref[3]["driving"])
    loader = loaders.Loader(loaders.PairBatchSource(batches, steps))
    [next(loader) for _ in range(4)]
    resumed = list(loaders.Loader.resume(loaders.PairBatchSource(batches, steps), loader.state()))
    assert all(_equal(a, b) for a, b in zip(resumed, ref[4:])) and len(resumed) == steps - 4


def test_bad_sources_are_refused_in_one_line():
    with pytest.raises(ValueError, match="unknown augmentation 'mirror'"):
        loaders.WindowBatchSource(_windows(), 8, 0, 2, 1, ("mirror",))[0]
    with pytest.raises(ValueError, match="process_index 2 is outside 0..1"):
        loaders.WindowBatchSource(_windows(), 8, 0, 2, 1, process_index=2, process_count=2)
    with pytest.raises(IndexError, match="batch 2 out of range"):
        loaders.WindowBatchSource(_windows(), 8, 0, 2, 1)[2]


# -- a real two-process job ------------------------------------------------------------------------

_SHARD_SCRIPT = """
import json, sys
import numpy as np
from kpflow import parallel
parallel.initialize_distributed()
import jax
from kpflow.data import loaders
windows = np.arange(40, dtype=np.float32)[:, None, None] * np.ones((1, 6, 2), np.float32)
source = loaders.WindowBatchSource(windows, 8, 3, 5, 1, ("reflect",),
                                   process_index=jax.process_index(), process_count=jax.process_count())
# reflection keeps a window's first frame, its id here
rows = [batch[:, 0, 0].astype(int).tolist() for batch in loaders.Loader(source)]
print("ROWS", jax.process_index(), jax.process_count(), json.dumps(rows), flush=True)
parallel.finish_distributed()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_see_disjoint_rows_that_cover_the_epoch(tmp_path):
    port = _free_port()
    procs = []
    for i in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i), XLA_FLAGS="")
        log = open(tmp_path / f"p{i}.log", "w+")  # noqa: SIM115 - read and closed below
        procs.append((subprocess.Popen([sys.executable, "-c", _SHARD_SCRIPT], cwd=REPO, env=env, stdout=log,
                                       stderr=subprocess.STDOUT, text=True), log))
    rows = {}
    for i, (p, log) in enumerate(procs):
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            for q, _ in procs:
                q.kill()
            pytest.fail("the two-process job did not finish in 2 minutes")
        log.seek(0)
        out = log.read()
        log.close()
        assert p.returncode == 0, out[-2000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("ROWS"))
        _, index, count, payload = line.split(" ", 3)
        assert int(count) == 2
        rows[int(index)] = json.loads(payload)
    assert len(rows[0]) == len(rows[1]) == 5  # every process sees every global batch, 4 rows of each
    for a, b in zip(rows[0], rows[1]):
        assert len(a) == len(b) == 4 and not set(a) & set(b)
    seen = sorted(w for part in (rows[0], rows[1]) for batch in part for w in batch)
    assert seen == list(range(40))  # 5 batches of 8 cover the 40 windows once


# -- training resumes with the exact next batch ----------------------------------------------------


def _recorded_training(workdir, monkeypatch, stop_after_epoch=None) -> list[np.ndarray]:
    """Train the stand-in model; returns every host batch the trainer put on the devices."""
    seen = []
    shard = parallel.shard_batch

    def recording(batch, mesh, trim=False):
        if trim:  # the training step's batches (evaluation pads instead)
            seen.append(np.asarray(batch).copy())
        return shard(batch, mesh, trim)

    monkeypatch.setattr(parallel, "shard_batch", recording)
    config = tiny_config(epochs=3, steps=3)
    config.data.augment = KINDS
    train_lib.train_and_evaluate(config, str(workdir), stop_after_epoch=stop_after_epoch)
    monkeypatch.setattr(parallel, "shard_batch", shard)
    return seen


def test_a_resumed_run_trains_on_the_batches_an_uninterrupted_one_does(tmp_path, monkeypatch):
    monkeypatch.setitem(forecast.REGISTRY, TINY, TINY_ENTRY)
    whole = _recorded_training(tmp_path / "whole", monkeypatch)
    first = _recorded_training(tmp_path / "split", monkeypatch, stop_after_epoch=1)
    meta = json.loads((tmp_path / "split" / "checkpoints" / "3" / "meta" / "metadata").read_text())
    saved = meta[loaders.STATE_KEY]  # the pipeline's position, in the orbax checkpoint
    assert saved["next_batch"] == 3 and json.loads(saved["grain"])["last_seen_indices"] == {"0": 2}
    rest = _recorded_training(tmp_path / "split", monkeypatch)
    assert len(whole) == 9 and len(first) == 3 and len(rest) == 6
    assert all(_equal(a, b) for a, b in zip(first + rest, whole))
    metrics = [json.loads(ln) for ln in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(ln) for ln in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [m["train/loss"] for m in metrics] == [m["train/loss"] for m in resumed]
