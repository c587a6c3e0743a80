"""Train and evaluate the five forecasters the same way on the shared VoxCeleb keypoints.

    python scripts/compare_models.py --runs runs/compare --results docs/compare \
        [--data_dir ../shared/data/vox_keypoints] [--models gru vae nf vrnn grunf] \
        [--horizons 6-6 12-12] [--seeds 0 1] [--dry_run]
    python -m eval.compare --runs docs/compare --out runs/compare/table

Protocol (docs/results.md, "Five forecasters compared fairly"): every model is its ``:cpu,io=shared``
config, trained on the speakers in TRAIN_SPEAKERS only. Each speaker of SELECTION_SPEAKERS in turn is
the validation split that selects the checkpoint (``--config.data.split_file``), and the other two are
the test speakers: their clips are in a separate folder that neither training nor selection reads,
and ``python -m eval.forecast`` scores the selected checkpoint there, once with ``--eval_samples``
samples per window (``test.json``) and once with one sample (``test_single.json``: the papers'
single-sample MAE is its ``mae_mean``).

Layout of ``--runs ROOT``:

    ROOT/data/sel_<speaker>/train_sel/   links to the training and selection speakers' clips
    ROOT/data/sel_<speaker>/hold.txt     the selection speaker's clip names (the validation split)
    ROOT/data/sel_<speaker>/test/        links to the two test speakers' clips
    ROOT/<model>/<horizon>/sel_<speaker>/seed<k>/   the training workdir, test.json, test_single.json

A run whose ``test.json`` and ``test_single.json`` exist is skipped; any other is (re)started with
the same command: the trainer resumes from the workdir's latest checkpoint, and is not run again once
its ``metrics.jsonl`` reaches the configured epochs. A failed run is reported on one line and the
others go on; the exit status is then 1.

``--results DIR`` (the repository keeps ``docs/compare/``) also copies each finished run's two JSONs
and its ``config.json`` to ``DIR/<model>/<horizon>/sel_<speaker>/seed<k>/``, and counts a run whose
copy there was made with today's recipe (the same ``model`` and ``train`` blocks as the config file
and overrides give now) as finished, even without its workdir: so the runs continue across machines
and checkouts, and a recipe change re-runs exactly the runs it touches (their old workdirs are moved
aside to ``<workdir>.stale``).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:  # run as ``python scripts/compare_models.py`` from anywhere
    sys.path.insert(0, REPO)

from eval.compare import RUN_EVAL_FILE, RUN_SINGLE_FILE
from kpflow.cli import OneLineArgumentParser, UsageError, fail
from kpflow.data.clips import speaker_of
from kpflow.data.windows import parse_horizon

MODELS = ("gru", "vae", "nf", "vrnn", "grunf")
HORIZONS = ("6-6", "12-12")
SEEDS = (0, 1)
TRAIN_SPEAKERS = ("id10283", "id10286")
SELECTION_SPEAKERS = ("id10284", "id10287", "id10289")
DEFAULT_DATA_DIR = os.path.join(REPO, "..", "shared", "data", "vox_keypoints")


@dataclasses.dataclass(frozen=True)
class Rotation:
    """One selection speaker; the other held-out speakers are its test speakers."""

    select: str
    test: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"sel_{self.select}"


@dataclasses.dataclass(frozen=True)
class Run:
    model: str
    horizon: str
    rotation: Rotation
    seed: int
    workdir: str
    train_cmd: tuple[str, ...]
    eval_cmds: tuple[tuple[str, ...], ...]

    @property
    def label(self) -> str:
        return f"{self.model} {self.horizon} {self.rotation.name} seed{self.seed}"


def rotations(selection=SELECTION_SPEAKERS) -> list[Rotation]:
    return [Rotation(s, tuple(t for t in selection if t != s)) for s in selection]


def rotation_dirs(root: str, rotation: Rotation) -> tuple[str, str, str]:
    """``(train_sel folder, hold.txt, test folder)`` of a rotation under ROOT."""
    base = os.path.join(root, "data", rotation.name)
    return os.path.join(base, "train_sel"), os.path.join(base, "hold.txt"), os.path.join(base, "test")


def clip_files(data_dir: str) -> dict[str, list[str]]:
    """``{speaker: [clip file names]}`` of a keypoint folder; UsageError if a protocol speaker is missing."""
    if not os.path.isdir(data_dir):
        raise UsageError(f"--data_dir {data_dir!r} is not a folder of keypoint .npz files")
    by_speaker: dict[str, list[str]] = {}
    for f in sorted(os.listdir(data_dir)):
        if f.endswith(".npz"):
            by_speaker.setdefault(speaker_of(f.removesuffix(".npz")), []).append(f)
    missing = [s for s in TRAIN_SPEAKERS + SELECTION_SPEAKERS if s not in by_speaker]
    if missing:
        raise UsageError(f"--data_dir {data_dir!r} has no clips of speakers {', '.join(missing)}")
    return by_speaker


def build_rotation_data(root: str, data_dir: str) -> None:
    """Write every rotation's folders and split file under ROOT/data (links; existing ones are kept)."""
    by_speaker = clip_files(data_dir)
    source = os.path.abspath(data_dir)
    for rot in rotations():
        sel_dir, hold, test_dir = rotation_dirs(root, rot)
        for folder, speakers in ((sel_dir, TRAIN_SPEAKERS + (rot.select,)), (test_dir, rot.test)):
            os.makedirs(folder, exist_ok=True)
            for s in speakers:
                for f in by_speaker[s]:
                    link = os.path.join(folder, f)
                    if not os.path.lexists(link):
                        os.symlink(os.path.realpath(os.path.join(source, f)), link)
        with open(hold + ".tmp", "w") as fh:
            fh.writelines(f.removesuffix(".npz") + "\n" for f in by_speaker[rot.select])
        os.replace(hold + ".tmp", hold)


def plan(root: str, models, horizons, seeds, overrides=(), eval_samples: int = 100) -> list[Run]:
    """Every run in order (model, horizon, rotation, seed), with its commands."""
    py = sys.executable
    runs = []
    for model in models:
        config = os.path.join(REPO, "configs", f"{model}_vox.py")
        for horizon in horizons:
            for rot in rotations():
                sel_dir, hold, test_dir = rotation_dirs(root, rot)
                for seed in seeds:
                    wd = os.path.join(root, model, horizon, rot.name, f"seed{seed}")
                    train = (py, "-m", "train.forecaster", "--config", f"{config}:cpu,io=shared,horizon={horizon}",
                             "--workdir", wd, f"--config.data.dir={sel_dir}", f"--config.data.split_file={hold}",
                             f"--config.train.seed={seed}", *overrides)
                    ev = (py, "-m", "eval.forecast", "--workdir", wd, "--data_dir", test_dir, "--seed", str(seed))
                    evals = ((*ev, "--samples", str(eval_samples), "--out", os.path.join(wd, RUN_EVAL_FILE)),
                             (*ev, "--samples", "1", "--plot_windows", "0", "--out", os.path.join(wd, RUN_SINGLE_FILE)))
                    runs.append(Run(model, horizon, rot, seed, wd, train, evals))
    return runs


def training_finished(workdir: str) -> bool:
    """True when the workdir's metrics.jsonl reaches the epochs of its config.json."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            epochs = int(json.load(f)["train"]["num_epochs"])
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            done = [json.loads(line).get("epoch", 0) for line in f if line.strip()]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return bool(done) and max(done) >= epochs


RESULT_FILES = (RUN_EVAL_FILE, RUN_SINGLE_FILE, "config.json")
# The config blocks that make a run's recipe (data.* differs by machine and rotation only).
RECIPE_BLOCKS = ("model", "train")


def run_finished(run: Run) -> bool:
    return all(os.path.isfile(os.path.join(run.workdir, f)) for f in (RUN_EVAL_FILE, RUN_SINGLE_FILE))


def result_dir(results: str, run: Run) -> str:
    return os.path.join(results, run.model, run.horizon, run.rotation.name, f"seed{run.seed}")


def expected_recipe(run: Run) -> dict:
    """The ``model`` and ``train`` blocks the run's config file and flags give now (as config.json holds them)."""
    spec = run.train_cmd[run.train_cmd.index("--config") + 1]
    path, arg = spec.split(":", 1)
    module = importlib.import_module(f"configs.{os.path.basename(path).removesuffix('.py')}")
    config = module.get_config(arg)
    for flag in run.train_cmd:
        if not flag.startswith("--config."):
            continue
        dotted, value = flag[len("--config."):].split("=", 1)
        if dotted.split(".")[0] not in RECIPE_BLOCKS:
            continue
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass  # a plain string
        *parents, leaf = dotted.split(".")
        node = config
        for name in parents:
            node = node[name]
        node[leaf] = value
    full = json.loads(config.to_json())
    return {k: full[k] for k in RECIPE_BLOCKS}


def recipe_of(config_file: str) -> dict | None:
    try:
        with open(config_file) as f:
            full = json.load(f)
        return {k: full[k] for k in RECIPE_BLOCKS}
    except (OSError, ValueError, KeyError):
        return None


def result_current(results: str, run: Run) -> bool:
    """True when ``results`` holds the run's files, made with today's recipe."""
    d = result_dir(results, run)
    return (all(os.path.isfile(os.path.join(d, f)) for f in RESULT_FILES)
            and recipe_of(os.path.join(d, "config.json")) == expected_recipe(run))


def set_aside_if_stale(run: Run) -> None:
    """Move a workdir trained with another recipe to ``<workdir>.stale`` (the trainer would refuse it)."""
    recipe = recipe_of(os.path.join(run.workdir, "config.json"))
    if recipe is not None and recipe != expected_recipe(run):
        shutil.rmtree(run.workdir + ".stale", ignore_errors=True)
        os.replace(run.workdir, run.workdir + ".stale")
        print(f"{run.label}: its workdir was trained with another recipe; moved to {run.workdir}.stale", flush=True)


def save_result(results: str, root: str, run: Run) -> None:
    """Copy the run's RESULT_FILES to ``results``, this machine's runs folder written as ``<runs>``."""
    d = result_dir(results, run)
    os.makedirs(d, exist_ok=True)
    for f in RESULT_FILES:
        with open(os.path.join(run.workdir, f)) as fh:
            text = fh.read().replace(json.dumps(root)[1:-1], "<runs>")
        with open(os.path.join(d, f) + ".tmp", "w") as fh:
            fh.write(text)
        os.replace(os.path.join(d, f) + ".tmp", os.path.join(d, f))


def execute(run: Run, log) -> str | None:
    """Train (unless finished) and evaluate one run; its output goes to ``log``. None, or why it failed."""
    steps = ([] if training_finished(run.workdir) else [run.train_cmd]) + list(run.eval_cmds)
    for cmd in steps:
        log.write("$ " + shlex.join(cmd) + "\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        if rc:
            return f"{cmd[2]} exited with status {rc}"
    return None


def parse_args(argv=None) -> argparse.Namespace:
    p = OneLineArgumentParser(prog="scripts/compare_models.py",
                              description="Train and evaluate the five forecasters on the speaker rotations.")
    p.add_argument("--runs", required=True, help="root folder of the runs (ROOT)")
    p.add_argument("--data_dir", default=DEFAULT_DATA_DIR, help="the shared VoxCeleb keypoint folder")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    p.add_argument("--horizons", nargs="+", default=list(HORIZONS))
    p.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    p.add_argument("--results", default="", help="also keep each finished run's JSONs and config here "
                   "(e.g. docs/compare); runs kept there with today's recipe count as finished")
    p.add_argument("--eval_samples", type=int, default=100, help="samples per test window (default 100)")
    p.add_argument("--max_runs", type=int, default=0, help="stop after this many runs were started (0: all)")
    p.add_argument("--override", action="append", default=[],
                   help="extra trainer flag for every run, e.g. --override=--config.train.num_epochs=1 (repeatable)")
    p.add_argument("--dry_run", action="store_true", help="print the commands of the runs not finished; run nothing")
    a = p.parse_args(argv)
    for h in a.horizons:
        try:
            parse_horizon(h)
        except ValueError:
            p.error(f"--horizons: {h!r} is not N-M (e.g. 6-6)")
    if a.eval_samples < 1:
        p.error(f"--eval_samples must be at least 1, got {a.eval_samples}")
    if a.max_runs < 0:
        p.error(f"--max_runs must be >= 0, got {a.max_runs}")
    if len(set(a.seeds)) != len(a.seeds) or min(a.seeds) < 0:
        p.error(f"--seeds must be distinct non-negative integers, got {a.seeds}")
    bad = [o for o in a.override if not o.startswith("--config.")]
    if bad:
        p.error(f"--override takes trainer flags --config.FIELD=VALUE, got {bad[0]!r}")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    root = os.path.abspath(a.runs)
    try:
        if os.path.exists(root) and not os.path.isdir(root):
            raise UsageError(f"--runs {a.runs!r} is a file; give a folder")
        if not a.dry_run:
            build_rotation_data(root, a.data_dir)
        else:
            clip_files(a.data_dir)
    except UsageError as e:
        raise fail(e) from None
    runs = plan(root, a.models, a.horizons, a.seeds, tuple(a.override), a.eval_samples)
    if a.results:
        results = os.path.abspath(a.results)
        if os.path.exists(results) and not os.path.isdir(results):
            raise fail(UsageError(f"--results {a.results!r} is a file; give a folder"))
        todo = [r for r in runs if not result_current(results, r)]
    else:
        todo = [r for r in runs if not run_finished(r)]
    print(f"{len(runs)} runs, {len(runs) - len(todo)} finished, {len(todo)} to do", flush=True)
    if a.dry_run:
        for r in todo:
            print(f"# {r.label}")
            if not training_finished(r.workdir):
                print(shlex.join(r.train_cmd))
            for cmd in r.eval_cmds:
                print(shlex.join(cmd))
        return 0
    start, failed, started = time.time(), [], 0
    for i, r in enumerate(runs, 1):
        if r not in todo:
            continue
        if a.max_runs and started >= a.max_runs:
            print(f"stopping after {started} runs (--max_runs); run again to continue", flush=True)
            break
        started += 1
        t0 = time.time()
        if a.results:
            set_aside_if_stale(r)
        os.makedirs(r.workdir, exist_ok=True)
        with open(os.path.join(r.workdir, "compare_models.log"), "a") as log:
            error = None if run_finished(r) else execute(r, log)  # finished: only its copy was missing
        if a.results and not error:
            save_result(results, root, r)
        status = f"FAILED: {error} (see {os.path.join(r.workdir, 'compare_models.log')})" if error else "done"
        print(f"[{i}/{len(runs)}] {r.label}: {status} in {time.time() - t0:.0f} s "
              f"(elapsed {(time.time() - start) / 60:.1f} min)", flush=True)
        if error:
            failed.append(r.label)
    if failed:
        print(f"{len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
