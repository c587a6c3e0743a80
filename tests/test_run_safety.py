"""Runs that survive preemption and concurrency: the workdir lock, resuming after a kill, and
checkpoints checked against their digests when loaded.

Real processes where they are the point (a second training on a busy workdir, a lock left by a
``kill -9``, a FOMM run killed mid-training); everything else in this process, through the
trainers' ``train_and_evaluate`` / CLI ``main`` and ``kpflow.runs``. The forecaster runs use the
tiny stand-in model of test_train_cli.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from test_train_cli import TESTS, TINY, TINY_ENTRY, run_main, tiny_config

from kpflow import forecast, runs
from kpflow.cli import UsageError
from kpflow.run_store import MANIFEST_FILE, CorruptCheckpoint
from kpflow.training import forecaster as train_lib
from kpflow.training import runlog
from kpflow.workdir import LOCK_FILE, RunWarning, WorkdirInUse, WorkdirLock

REPO = Path(__file__).resolve().parent.parent
# The trained fixture: 3 epochs of 2 steps, two checkpoints kept.
EPOCHS, STEPS = 3, 2
LAST = EPOCHS * STEPS


@pytest.fixture
def tiny_model(monkeypatch):
    monkeypatch.setitem(forecast.REGISTRY, TINY, TINY_ENTRY)


def fixture_config():
    config = tiny_config(epochs=EPOCHS, steps=STEPS)
    # The case needs best/ to hold the last step: at this learning rate every epoch of the
    # stand-in improves on the one before (asserted in `trained`).
    config.train.update(learning_rate=0.01, warmup_steps=0)
    return config


def get_config(arg=None):
    """:func:`fixture_config` for a trainer's ``--config`` (see :data:`CONFIG_FILE`); registers the
    stand-in model in the training process."""
    forecast.REGISTRY[TINY] = TINY_ENTRY
    return fixture_config()


# A config file for the CLI, in this process or another one.
CONFIG_FILE = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from test_run_safety import get_config  # noqa: E402,F401
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny_run_config.py"
    path.write_text(CONFIG_FILE)
    return path


def cli_args(config_file: Path, workdir: Path) -> list[str]:
    return ["--config", str(config_file), "--workdir", str(workdir)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny forecaster run whose last epoch is also its best."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(forecast.REGISTRY, TINY, TINY_ENTRY)
        workdir = tmp_path_factory.mktemp("trained") / "run"
        best = train_lib.train_and_evaluate(fixture_config(), str(workdir))
    assert best["step"] == LAST, f"precondition: the last epoch should be the best, got {best}"
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == [str(LAST - STEPS), str(LAST)]
    assert not (workdir / LOCK_FILE).exists()  # released at the end of the run
    return workdir


def copy_run(trained: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(trained, tmp_path / "run"))


def one_line(message: str, *parts: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    for part in parts:
        assert part in message, message
    return message


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / runlog.METRICS_FILE).read_text().splitlines()]


def assert_no_duplicates(recs: list[dict]) -> None:
    keys = [(r.get("kind"), r["step"]) for r in recs]
    assert len(keys) == len(set(keys)), keys
    for kind in {k for k, _ in keys}:
        steps = [s for k, s in keys if k == kind]
        assert steps == sorted(steps), (kind, steps)


# -- the lock ----------------------------------------------------------------------------------------


def test_second_lock_is_refused_naming_the_owner(tmp_path):
    workdir = tmp_path / "run"
    with WorkdirLock(str(workdir)) as lock:
        owner = json.loads((workdir / LOCK_FILE).read_text())
        assert owner["pid"] == os.getpid() and owner["host"] and owner["started"]
        with pytest.raises(WorkdirInUse) as refused:
            WorkdirLock(str(workdir)).acquire()  # flock conflicts between two opens in one process too
        one_line(str(refused.value), f"pid {os.getpid()} on {owner['host']}", owner["started"], "pass another --workdir")
        assert lock.held
    assert not (workdir / LOCK_FILE).exists()
    assert not workdir.exists()  # created by the lock, nothing written: removed again
    with WorkdirLock(str(workdir)):  # free again
        pass


def test_lock_left_by_a_killed_process_is_taken_over(tmp_path):
    workdir = tmp_path / "run"
    hold = ("import sys, time; from kpflow.workdir import WorkdirLock; "
            "WorkdirLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(workdir)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirInUse, match=f"pid {holder.pid} "):
            WorkdirLock(str(workdir)).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == holder.pid  # the file stays behind
    with pytest.warns(RunWarning, match=f"took over the lock left by pid {holder.pid} "), WorkdirLock(str(workdir)):
        assert json.loads((workdir / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_two_trainings_on_one_workdir(trained, config_file, tmp_path, tiny_model, monkeypatch):
    """A real second process starts on the workdir while a training (this process) holds it: the
    second is refused in one line naming the first, and the first completes as if alone."""
    workdir = tmp_path / "run"
    second = []
    prepare = train_lib.prepare

    def prepare_while_another_starts(config, path):  # called with the lock held
        env = dict(os.environ, JAX_PLATFORMS="cpu")
        second.append(subprocess.run([sys.executable, "-m", "train.forecaster", *cli_args(config_file, workdir)],
                                     cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False))
        return prepare(config, path)

    monkeypatch.setattr(train_lib, "prepare", prepare_while_another_starts)
    best = train_lib.train_and_evaluate(fixture_config(), str(workdir))
    assert second[0].returncode == 1
    lines = second[0].stderr.strip().splitlines()
    assert len(lines) == 1, second[0].stderr[-3000:]
    one_line(lines[0], f"error: --workdir {str(workdir)!r} is in use by another run", f"pid {os.getpid()} on ",
             "wait for it to finish or stop it, or pass another --workdir")
    assert best["step"] == LAST
    assert records(workdir) == [{**r, "seconds": s["seconds"]} for r, s in zip(records(trained), records(workdir), strict=True)]
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == [str(LAST - STEPS), str(LAST)]
    assert not (workdir / LOCK_FILE).exists()


def test_fomm_trainer_takes_the_lock(tmp_path):
    from configs.fomm_common import fomm_config
    from kpflow.training import fomm as train_fomm

    workdir = tmp_path / "run"
    with WorkdirLock(str(workdir)), pytest.raises(WorkdirInUse) as refused:
        train_fomm.train_and_evaluate(fomm_config("vox", "tiny"), str(workdir))
    one_line(str(refused.value), "is in use by another run", f"pid {os.getpid()}")


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_workdir_that_is_a_file_is_one_line(where, config_file, tmp_path, tiny_model, monkeypatch):
    from configs.fomm_common import fomm_config
    from kpflow.training import fomm as train_fomm

    (tmp_path / "f").write_text("not a folder")
    workdir = tmp_path / "f" if where == "file" else tmp_path / "f" / "run"
    expected = "is a file, not a folder" if where == "file" else f"lies under the file {str(tmp_path / 'f')!r}"
    for train in (train_lib.train_and_evaluate, train_fomm.train_and_evaluate):
        with pytest.raises(NotADirectoryError) as e:
            train(tiny_config() if train is train_lib.train_and_evaluate else fomm_config("vox", "tiny"), str(workdir))
        one_line(str(e.value), f"--workdir {str(workdir)!r}", expected)
    with pytest.raises(SystemExit) as e:  # the CLI: one line, before any work
        run_main(cli_args(config_file, workdir), monkeypatch)
    one_line(str(e.value), "error: --workdir", expected)


# -- resuming after a kill ---------------------------------------------------------------------------


def test_resume_after_losing_the_newest_checkpoint(trained, config_file, tmp_path, monkeypatch, tiny_model):
    """The issue's reproduction through the CLI: best/ holds the last step, checkpoints/ lost it
    (rm -rf W/checkpoints/<last>); training again used to die with StepAlreadyExistsError."""
    workdir = copy_run(trained, tmp_path)
    assert os.listdir(workdir / "best") == [str(LAST)]
    shutil.rmtree(workdir / "checkpoints" / str(LAST))
    run_main(cli_args(config_file, workdir), monkeypatch)
    assert sorted(os.listdir(workdir / "checkpoints"), key=int) == [str(LAST - STEPS), str(LAST)]
    assert os.listdir(workdir / "best") == [str(LAST)]
    assert [r["step"] for r in records(workdir)] == [STEPS, 2 * STEPS, LAST]
    runs.load_forecaster(str(workdir), which="best")  # every step is sealed and verifies


def test_torn_and_duplicated_metrics_are_repaired_on_resume(tmp_path):
    """The state a killed FOMM run leaves, written precisely (a real kill: the slow test below):
    metrics past the restored checkpoint, lines an older kpflow appended twice, a torn last line."""
    def line(kind, step):
        return json.dumps({"kind": kind, "step": step, "epoch": step / 3})

    written = [line("eval", 0), line("train", 1), line("train", 2), line("eval", 2), line("train", 1),
               line("train", 2), line("eval", 2), line("train", 3), line("train", 4)]
    (tmp_path / runlog.METRICS_FILE).write_text("\n".join(written) + '\n{"kind": "train", "step": 5, "los')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        log = runlog.MetricsLog(str(tmp_path), resumed_step=2)
    messages = [str(w.message) for w in caught if issubclass(w.category, RunWarning)]
    assert any("torn by a kill" in m for m in messages) and any("dropped 3 duplicate" in m for m in messages), messages
    log.append({"kind": "train", "step": 3, "epoch": 1.0})
    log.append({"kind": "eval", "step": 2, "epoch": 0.7})  # a step evaluated again replaces its record
    assert [(r["kind"], r["step"]) for r in records(tmp_path)] == [("eval", 0), ("train", 1), ("train", 2),
                                                                 ("train", 3), ("eval", 2)]
    assert records(tmp_path)[-1]["epoch"] == 0.7


@pytest.mark.slow  # a real FOMM training (minutes on 2 shared cores), killed and resumed
@pytest.mark.skipif(not os.environ.get("KPFLOW_LONG_TESTS"),
                    reason="a real kill -9 of FOMM training takes about 4 minutes here; KPFLOW_LONG_TESTS=1 runs it "
                           "(make test covers the same state with test_torn_and_duplicated_metrics_are_repaired_on_resume)")
def test_killed_fomm_run_resumes_without_duplicate_lines(tmp_path):
    from kpflow.data.synthetic_video import make_synthetic_videos

    data = tmp_path / "videos"
    make_synthetic_videos(data, num_train=3, num_test=1, num_frames=8, size=32, fmt="png")
    workdir = tmp_path / "run"
    from tests.conftest import tiny_fomm_command

    command = [*tiny_fomm_command(workdir, data), "--config.train.max_steps=8"]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    with open(tmp_path / "killed.log", "w+") as log:
        run = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            # Kill once a training line newer than the last sealed checkpoint is logged: the
            # resumed run must drop it and log that step again, once.
            deadline = time.time() + 900
            while True:
                assert run.poll() is None and time.time() < deadline, (log.seek(0), log.read())[1][-3000:]
                sealed = [int(p.parent.name) for p in (workdir / "checkpoints").glob(f"*/{MANIFEST_FILE}")]
                steps = [r["step"] for r in records(workdir) if r["kind"] == "train"] if sealed else []
                if sealed and steps and max(steps) > max(sealed):
                    break
                time.sleep(0.05)
        finally:
            run.kill()
            run.wait(timeout=60)
    killed_at = max(steps)
    assert (workdir / LOCK_FILE).exists()  # left by the killed run; flock went with the process
    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout and "took over the lock" in resumed.stderr
    recs = records(workdir)
    assert_no_duplicates(recs)
    assert [r["step"] for r in recs if r["kind"] == "train"] == list(range(1, 9)), killed_at
    assert not (workdir / LOCK_FILE).exists()


# -- damaged checkpoints -----------------------------------------------------------------------------


def largest_parameter_file(step_dir: Path) -> Path:
    return max((p for p in (step_dir / "variables").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def flip_one_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {"flipped_byte": (flip_one_byte, "sha256 mismatch"), "truncated": (truncate, "(truncated)")}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_checkpoint_is_one_line_when_evaluating(damage, trained, tmp_path, tiny_model):
    workdir = copy_run(trained, tmp_path)
    step_dir = workdir / "best" / str(LAST)
    damage_fn, detail = DAMAGE[damage]
    damage_fn(largest_parameter_file(step_dir))
    with pytest.raises(UsageError) as e:
        runs.load_forecaster(str(workdir), which="best")
    one_line(str(e.value), f"cannot load the forecaster in {str(workdir)!r}", f"checkpoint {str(step_dir)!r} is damaged",
             detail, "load the 'latest' checkpoint instead")
    assert runs.load_forecaster(str(workdir), which="latest").step == LAST  # the other copy is intact


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_checkpoint_is_one_line_when_resuming(damage, trained, config_file, tmp_path, tiny_model, monkeypatch):
    workdir = copy_run(trained, tmp_path)
    step_dir = workdir / "checkpoints" / str(LAST)
    damage_fn, detail = DAMAGE[damage]
    damage_fn(largest_parameter_file(step_dir))
    with pytest.raises(CorruptCheckpoint) as e:
        train_lib.train_and_evaluate(fixture_config(), str(workdir))
    one_line(str(e.value), f"checkpoint {str(step_dir)!r} is damaged", detail, "delete that folder to resume from the checkpoint before it")
    assert not (workdir / LOCK_FILE).exists()  # released on the error
    with pytest.raises(SystemExit) as e:  # the CLI
        run_main(cli_args(config_file, workdir), monkeypatch)
    one_line(str(e.value), "error: checkpoint", detail)
    # Doing what it says resumes from the step before.
    shutil.rmtree(step_dir)
    run_main(cli_args(config_file, workdir), monkeypatch)
    assert [r["step"] for r in records(workdir)] == [STEPS, 2 * STEPS, LAST]


def test_checkpoint_without_manifest_loads_with_one_warning(trained, tmp_path, tiny_model):
    """Checkpoints saved before kpflow wrote manifests load unverified, saying so once; when one of
    them is truncated, the storage library's error is still one line."""
    workdir = copy_run(trained, tmp_path)
    for manifest in workdir.rglob(MANIFEST_FILE):
        manifest.unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs.load_forecaster(str(workdir), which="best")
        runs.load_forecaster(str(workdir), which="best")
    unverified = [str(w.message) for w in caught if issubclass(w.category, RunWarning)]
    assert len(unverified) == 1 and f"has no {MANIFEST_FILE}" in unverified[0], unverified
    step_dir = workdir / "best" / str(LAST)
    for path in (p for p in (step_dir / "variables").rglob("*") if p.is_file() and p.parent.name == "d"):
        truncate(path)
    with pytest.raises(UsageError) as e:
        runs.load_forecaster(str(workdir), which="best")
    one_line(str(e.value), "cannot load the forecaster", str(step_dir))
