"""Two JAX processes on localhost form one job (jax.distributed over gloo) and train together."""

import json
import math
import os
import pathlib
import socket
import subprocess
import sys

import pytest
from conftest import CHEAP_XLA_FLAGS

REPO = pathlib.Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two_processes(tmp_path, workdir, epochs: int, tag: str) -> list[str]:
    """Start the trainer as a two-process job on localhost; returns each process's output."""
    port = _free_port()
    cmd = [sys.executable, "-m", "train.forecaster", "--config", "configs/demo.py:vrnn", "--workdir", str(workdir),
           f"--config.train.num_epochs={epochs}", "--config.train.steps_per_epoch=3", "--config.train.batch_size=8"]
    procs, logs = [], []
    for i in range(2):
        # XLA's CPU backend at its lowest optimisation level: the same programs, compiled several
        # times faster (compiling is most of the run).
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(i), XLA_FLAGS=CHEAP_XLA_FLAGS,
                   # The resumed run reuses the first one's compiled programs through JAX's persistent cache.
                   JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
        # Output goes to files, not pipes: a process blocked on a full pipe that nobody reads yet
        # never reaches the job's barriers, and its peer times out.
        logs.append(open(tmp_path / f"{tag}_process{i}.log", "w+"))  # noqa: SIM115 - closed below
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=logs[i], stderr=subprocess.STDOUT, text=True))
    try:
        for p in procs:
            p.wait(timeout=300)
    except subprocess.TimeoutExpired:
        for q in procs:
            q.kill()
        pytest.fail(f"the two-process run ({tag}) did not finish in 5 minutes")
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    for i, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"{tag}: process {i} failed:\n{out[-2000:]}"
    return outputs


@pytest.mark.slow
def test_two_processes_train_a_few_steps_and_resume(tmp_path):
    workdir = tmp_path / "run"
    outputs = _run_two_processes(tmp_path, workdir, epochs=1, tag="first")
    # gloo connected the two ranks: one job, not two independent runs
    assert "Rank 0 is connected to 1 peer ranks" in outputs[0] and "Rank 1 is connected to 1 peer ranks" in outputs[1]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 3 and all(math.isfinite(v) for v in records[-1].values() if isinstance(v, float))
    assert (workdir / "checkpoints" / "3").is_dir() and (workdir / "best").is_dir()
    assert "best checkpoint" in outputs[0]  # process 0 reports; both trained the same global batch
    # Both processes restore the orbax checkpoint they wrote together and train on from step 3.
    _run_two_processes(tmp_path, workdir, epochs=2, tag="resumed")
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [3, 6]
    assert (workdir / "checkpoints" / "6").is_dir()
