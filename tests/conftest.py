"""Shared fixtures.

- ``shared_dir``: the real VoxCeleb keypoints, or a skip saying why they are absent;
  ``fomm_fixture``: reference outputs of the PyTorch FOMM, likewise;
- ``tiny_run``, ``tiny_run_scores``: a tiny keypoint folder, a forecaster trained on it, and its
  ``python -m eval.forecast`` scores (once per session, for the tests of the evaluation);
- ``recorded``: a forecaster that records the samples it draws, even inside jitted callers;
- ``video_datasets``: the synthetic videos of :data:`VIDEO_SIZE` etc., written in a format on first use.
"""

import dataclasses
import functools
import json
import os
import pathlib
import sys
from typing import ClassVar

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent


# XLA's CPU backend at its lowest optimisation level compiles the same programs several times faster.
# No test's point is speed (benchmarks measure it), and the programs are tiny, so the slower code
# they produce costs nothing that shows: every compile of the test session, in this process and in
# the commands it starts (they inherit the environment), uses it. Set here, before JAX reads
# XLA_FLAGS when it creates its CPU backend; flags already in XLA_FLAGS are kept.
CHEAP_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
CHEAP_XLA_FLAGS = " ".join(f"--{k}={str(v).lower()}" for k, v in CHEAP_COMPILE.items())
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {CHEAP_XLA_FLAGS}".strip()


def quick_jit(fn=None, **kwargs):
    """``jax.jit`` at :data:`CHEAP_COMPILE`; usable as a decorator."""
    import jax

    if fn is None:
        return lambda f: quick_jit(f, **kwargs)
    return jax.jit(fn, compiler_options=CHEAP_COMPILE, **kwargs)


def adam_train_step(forecaster, opt):
    """A cheaply compiled training step of ``forecaster`` with the optax optimizer ``opt``:
    ``(variables, opt_state, batch, rng) -> (variables, opt_state, loss, grads)``."""
    import jax
    import optax

    @quick_jit
    def train_step(v, opt_state, batch, rng):
        def loss_fn(params):
            return forecaster.loss_and_state({**v, "params": params}, batch, rng, train=True)

        (loss, (_, new_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(v["params"])
        updates, opt_state = opt.update(grads, opt_state)
        return {**v, **new_state, "params": optax.apply_updates(v["params"], updates)}, opt_state, loss, grads

    return train_step


def fresh_flags():
    """A fresh absl ``FlagValues`` for running an absl command in this process: absl's
    ``verbosity`` and grain's own flags (which grain reads through ``flags.FLAGS``) carried over."""
    import grain  # noqa: F401 - defines its flags on absl's global FlagValues
    from absl import flags

    fresh = flags.FlagValues()
    for name in flags.FLAGS:
        if name == "verbosity" or name.startswith("grain_"):
            fresh[name] = flags.FLAGS[name]
    return fresh


def tiny_fomm_command(workdir, data) -> list[str]:
    """``python -m train.fomm`` of the :tiny FOMM at 32x32 on ``data``, a checkpoint every step, an
    evaluation every 2 (tests add ``--config.train.max_steps`` and the like)."""
    return [
        sys.executable, "-m", "train.fomm", "--config", "configs/fomm_vox.py:tiny", f"--workdir={workdir}",
        f"--config.data.dir={data}", "--config.data.frame_shape=32", "--config.data.frame_shape=32",
        "--config.data.frame_shape=3", "--config.train.scales=1", "--config.train.scales=0.5",
        "--config.train.batch_size=2", "--config.train.num_repeats=2", "--config.train.eval_every=2",
        "--config.train.checkpoint_freq=1", "--config.train.log_every=1", "--config.train.eval_frames=4",
    ]
# The synthetic video dataset of the video tests: frame size, frames per clip, train and test clips.
VIDEO_SIZE, VIDEO_FRAMES, VIDEO_TRAIN, VIDEO_TEST = 32, 12, 4, 2


@pytest.fixture(scope="module")
def video_datasets(tmp_path_factory):
    """The synthetic dataset written in a format on first use: ``video_datasets[fmt] = (root, {split: [paths]})``."""
    from kpflow.data.synthetic_video import make_synthetic_videos

    class Written(dict):
        def __missing__(self, fmt):
            root = tmp_path_factory.mktemp(f"videos_{fmt}")
            written = make_synthetic_videos(root, num_train=VIDEO_TRAIN, num_test=VIDEO_TEST,
                                            num_frames=VIDEO_FRAMES, size=VIDEO_SIZE, seed=3, fmt=fmt)
            self[fmt] = (root, written)
            return self[fmt]

    return Written()
VOX_KEYPOINTS = pathlib.Path("data") / "vox_keypoints"


def shared_root() -> pathlib.Path:
    """``$KPFLOW_SHARED`` if set, else ``../shared`` beside the repository."""
    env = os.environ.get("KPFLOW_SHARED")
    return pathlib.Path(env).expanduser() if env else REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> pathlib.Path:
    """Path of ``shared/data/vox_keypoints`` (30 real clips); skips the test when it is not there."""
    path = shared_root() / VOX_KEYPOINTS
    if not path.is_dir() or not any(path.glob("*.npz")):
        where = f"KPFLOW_SHARED={os.environ['KPFLOW_SHARED']}" if os.environ.get("KPFLOW_SHARED") else "beside the repo"
        pytest.skip(f"../shared/data/vox_keypoints not found: looked for {path} ({where}); set KPFLOW_SHARED to the shared/ folder")
    return path


FOMM_FIXTURE_FILES = ("cpk.pth.tar", "state.npz", "reference.npz", "model_params.yaml")


@pytest.fixture(scope="session")
def fomm_fixture():
    """``fomm_fixture(name)`` -> ``shared/fixtures/fomm/<name>_tiny`` (reference outputs of the PyTorch
    FOMM), or a skip saying what is missing."""

    def get(name: str) -> pathlib.Path:
        path = shared_root() / "fixtures" / "fomm" / f"{name}_tiny"
        missing = [f for f in FOMM_FIXTURE_FILES if not (path / f).is_file()]
        if missing:
            pytest.skip(f"FOMM reference fixture {path} is absent or incomplete (missing {', '.join(missing)}); "
                        "set KPFLOW_SHARED to the shared/ folder")
        return path

    return get


# -- a tiny trained forecaster run, for the command-line evaluations -------------------------------


@dataclasses.dataclass(frozen=True)
class TinyRun:
    """A folder of three short keypoint clips and a forecaster workdir trained on it for two steps.

    The model is a deterministic GRU (every sample is the same point forecast), so a test can
    recompute its forecast from the workdir alone. ``clips``: ``{name: [T, 6K] float32}`` as written.
    """

    data_dir: pathlib.Path
    workdir: pathlib.Path
    num_observed: int
    horizon: int
    clips: dict
    samples: int = 3  # per window, in :meth:`evaluate`

    @staticmethod
    def write(folder: pathlib.Path, clips: dict) -> pathlib.Path:
        """Write ``{name: [T, 6K]}`` as a keypoint folder (one ``value``/``jacobian`` .npz per clip)."""
        from kpflow.data.clips import save_clip
        from kpflow.keypoints import vector_to_keypoints

        folder.mkdir(parents=True, exist_ok=True)
        for name, series in clips.items():
            save_clip(str(folder / f"{name}.npz"), *vector_to_keypoints(series))
        return folder

    def evaluate(self, data_dir: pathlib.Path, out: pathlib.Path) -> dict:
        """``python -m eval.forecast`` (in-process) of the workdir on ``data_dir`` with ``samples`` per
        window, batches of 4 windows (so the last one is padded) and no plot; returns its JSON."""
        import eval.forecast

        eval.forecast.main(["--workdir", str(self.workdir), "--data_dir", str(data_dir), "--out", str(out),
                            "--samples", str(self.samples), "--batch_size", "4", "--plot_windows", "0"])
        return json.loads(out.read_text())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> TinyRun:
    """Three synthetic clips (2 keypoints) and a deterministic GRU trained on them for two steps at 4-3."""
    from configs import demo
    from kpflow.data import synthetic_clips
    from kpflow.training.forecaster import train_and_evaluate

    n, m = 4, 3
    root = tmp_path_factory.mktemp("tiny_run")
    # 22-33 frames: three or four 7-frame windows per clip and a few frames left over.
    clips = synthetic_clips(num_clips=3, num_speakers=3, min_frames=22, max_frames=33, num_keypoints=2, seed=0)
    data_dir = TinyRun.write(root / "clips", clips)
    config = demo.get_config(f"gru,horizon={n}-{m}")
    config.data.kind, config.data.dir = "npz", str(data_dir)
    config.model.update(hidden=8, deterministic=True)
    config.train.update(batch_size=4, num_epochs=1, steps_per_epoch=2, warmup_steps=1, val_samples=2)
    train_and_evaluate(config, str(root / "run"))
    return TinyRun(data_dir, root / "run", n, m, dict(clips))


@pytest.fixture(scope="session")
def tiny_run_scores(tiny_run) -> dict:
    """The JSON of :meth:`TinyRun.evaluate` on the run's own folder (computed once per session)."""
    return tiny_run.evaluate(tiny_run.data_dir, tiny_run.workdir / "eval.json")


# -- recording the samples a forecaster draws, inside jitted callers -------------------------------


@functools.cache
def _recorded_class():
    """The :class:`kpflow.forecast.Forecaster` subclass behind ``recorded`` (built once, so a jitted
    caller compiles once per model however many tests record it)."""
    import jax

    from kpflow.forecast import Forecaster

    @dataclasses.dataclass(frozen=True)
    class Recorded(Forecaster):
        """Draws what the wrapped forecaster draws, and copies every batch of samples onto ``tape``."""

        tape: ClassVar[list] = []  # not a field: forecasters are hashed as static arguments

        def sample(self, variables, context, horizon, rng, num_samples=1):
            out = super().sample(variables, context, horizon, rng, num_samples)
            jax.debug.callback(lambda x: Recorded.tape.append(np.asarray(x)), out)
            return out

    return Recorded


@pytest.fixture
def recorded():
    """``recorded(forecaster) -> (same model, tape)``: the returned forecaster samples exactly as
    ``forecaster`` does and appends each ``[S, B, M, D]`` batch of closed-loop samples it draws,
    even inside jitted code, to the list ``tape`` (emptied for each test). Read the tape after
    ``jax.effects_barrier()``."""
    cls = _recorded_class()
    cls.tape.clear()
    yield lambda f: (cls(f.name, f.module), cls.tape)
    cls.tape.clear()
