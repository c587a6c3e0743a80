"""Bad input at every command line: a non-zero exit status, exactly one line on stderr that starts
with ``error:`` (or ``<prog>: error:``) and names what to fix, and no traceback.

Every case runs in this process through the command's ``main(argv)`` (the absl commands on a fresh
``flags.FLAGS`` each time, as ``app.run`` would parse them), on small generated inputs: missing or
unreadable files, files of the wrong kind, numbers out of range, outputs that are files, and
configs of the other kind. None of them reaches a model: the inputs are checked first.
"""

from __future__ import annotations

import importlib
import json
import pathlib
import sys

import numpy as np
import pytest
from absl import flags
from conftest import fresh_flags

from configs import demo
from configs.fomm_common import fomm_config
from kpflow import checkpoint
from kpflow.cli import parse_absl_flags
from kpflow.data.synthetic_video import make_synthetic_videos
from kpflow.fomm.model import save_config as save_fomm_config

REPO = pathlib.Path(__file__).resolve().parent.parent


# -- the inputs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """Generated files and folders, by name; every case formats its arguments with them."""
    root = tmp_path_factory.mktemp("inputs")
    paths: dict[str, pathlib.Path] = {"missing": root / "no_such_thing"}

    paths["a_file"] = root / "a_file.txt"
    paths["a_file"].write_text("some notes, not data\n")
    paths["folder"] = root / "an_empty_folder"
    paths["folder"].mkdir()

    # A FOMM directory and a forecaster run holding only their config.json: enough for every check
    # that comes before the weights, which is all these cases need.
    paths["fomm_dir"] = root / "fomm"
    save_fomm_config(str(paths["fomm_dir"]), fomm_config("vox", "tiny"))
    paths["forecaster_dir"] = root / "forecaster"
    checkpoint.save_config(str(paths["forecaster_dir"]), demo.get_config("gru"))
    paths["corrupt_dir"] = root / "corrupt_run"
    paths["corrupt_dir"].mkdir()
    (paths["corrupt_dir"] / "config.json").write_text('{"model": {"name": "gr')

    # .npz files that are not: a text file renamed, a truncated archive, one without the keys.
    paths["text_npz"] = root / "notes.npz"
    paths["text_npz"].write_text("value,jacobian\n1,2\n")
    np.savez(root / "whole.npz", **{"generator/first.conv.weight": np.zeros((64, 64), np.float32)})
    data = (root / "whole.npz").read_bytes()
    paths["truncated_npz"] = root / "truncated.npz"
    paths["truncated_npz"].write_bytes(data[: len(data) // 2])
    paths["foreign_npz"] = root / "foreign.npz"
    np.savez(paths["foreign_npz"], weights=np.zeros(3))
    paths["text_npz_dir"] = root / "clips_with_text"
    paths["text_npz_dir"].mkdir()
    (paths["text_npz_dir"] / "spk#clip.npz").write_text("not an archive\n")

    # Videos that cannot be read (a FOMM layout whose train/ and test/ hold only those), and a
    # readable one for the cases that need data to reach their check.
    paths["bad_videos"] = root / "bad_videos"
    for split in ("train", "test"):
        (paths["bad_videos"] / split).mkdir(parents=True)
        (paths["bad_videos"] / split / "id0#a.mp4").write_bytes(np.random.default_rng(0).bytes(2048))
        (paths["bad_videos"] / split / "id0#b.gif").write_text("GIF? no, text\n")
    paths["bad_video"] = paths["bad_videos"] / "test" / "id0#a.mp4"
    paths["videos"] = root / "videos"
    make_synthetic_videos(paths["videos"], num_train=2, num_test=1, num_frames=4, size=32, fmt="png")

    paths["eval_json"] = root / "eval.json"
    paths["eval_json"].write_text(json.dumps({"horizon": "6-6", "units": {"raw": {}}}))
    paths["other_json"] = root / "other.json"
    paths["other_json"].write_text(json.dumps({"hello": 1}))
    return {k: str(v) for k, v in paths.items()}


# -- running a command in this process -------------------------------------------------------------


def absl_main(module: str):
    """``argv -> None`` running an absl command as ``app.run`` does, on a fresh ``flags.FLAGS``
    (the commands define their flags when run, so each call starts clean)."""

    def run(argv: list[str]) -> None:
        cli = importlib.import_module(module)
        fresh = fresh_flags()
        saved = flags.FLAGS
        flags.FLAGS = fresh
        try:
            cli.define_flags()
            cli.main(parse_absl_flags([module, *argv]))
        finally:
            flags.FLAGS = saved

    return run


def argparse_main(module: str):
    return lambda argv: importlib.import_module(module).main(argv)


COMMANDS = {
    "train.forecaster": absl_main("train.forecaster"),
    "train.fomm": absl_main("train.fomm"),
    "kpflow.fomm.convert": absl_main("kpflow.fomm.convert"),
    "eval.forecast": argparse_main("eval.forecast"),
    "eval.video": argparse_main("eval.video"),
    "eval.compare": argparse_main("eval.compare"),
    "eval.extract_keypoints": argparse_main("eval.extract_keypoints"),
    "eval.bench": argparse_main("eval.bench"),
    "kpflow.data.make_synthetic": argparse_main("kpflow.data.make_synthetic"),
    "kpflow.data.prepare": argparse_main("kpflow.data.prepare"),
}


def run_command(command: str, argv: list[str], capsys) -> tuple[int, str]:
    """``(exit status, stderr)`` of ``python -m command ARGV``, run in this process: a SystemExit
    with a message prints it and exits 1, as the interpreter does."""
    capsys.readouterr()
    try:
        status = COMMANDS[command](argv)
        message = ""
    except SystemExit as e:
        status, message = (1, f"{e.code}\n") if isinstance(e.code, str) else (e.code or 0, "")
    return (0 if status is None else status), capsys.readouterr().err + message


# -- the cases: (command, arguments, what the line must say) -------------------------------------------
# Arguments are formatted with the ``inputs`` paths and ``{tmp}``, a fresh folder per case.

FOMM_TINY = "configs/fomm_vox.py:tiny"
EVAL_VIDEO = ["--fomm", "{fomm_dir}", "--videos", "{videos}", "--out", "{tmp}/out", "--horizon", "2-2"]
EXTRACT = ["--fomm", "{fomm_dir}", "--videos", "{videos}", "--out", "{tmp}/kp"]
CONVERT = ["--config", FOMM_TINY, "--checkpoint", "{truncated_npz}", "--out", "{tmp}/fomm"]

CASES = {
    # train.forecaster
    "forecaster/no config": ("train.forecaster", ["--workdir", "{tmp}/run"], "--config"),
    "forecaster/missing config file": ("train.forecaster", ["--config", "configs/nosuch.py", "--workdir", "{tmp}/r"],
                                       "nosuch.py"),
    "forecaster/FOMM config": ("train.forecaster", ["--config", FOMM_TINY, "--workdir", "{tmp}/run"],
                               "a fomm config; this command needs a forecaster config"),
    "forecaster/bad config argument": ("train.forecaster", ["--config", "configs/demo.py:huge", "--workdir", "{tmp}/r"],
                                       "huge"),
    "forecaster/unknown field": ("train.forecaster", ["--config", "configs/demo.py", "--workdir", "{tmp}/r",
                                                      "--config.train.nosuch=1"], "nosuch"),
    "forecaster/not a number": ("train.forecaster", ["--config", "configs/demo.py", "--workdir", "{tmp}/r",
                                                     "--config.train.batch_size=many"], "many"),
    "forecaster/bad list override": ("train.forecaster", ["--config", "configs/demo.py", "--workdir", "{tmp}/r",
                                                          "--config.data.holdout_speakers=[a, b"], "holdout_speakers"),
    "forecaster/text file as a clip": ("train.forecaster", ["--config", "configs/demo.py", "--workdir", "{tmp}/r",
                                                            "--config.data.kind=npz",
                                                            "--config.data.dir={text_npz_dir}"], "spk#clip.npz"),
    "forecaster/corrupt config.json in workdir": ("train.forecaster", ["--config", "configs/demo.py",
                                                                       "--workdir", "{corrupt_dir}"], "config.json"),
    "forecaster/workdir is a file": ("train.forecaster", ["--config", "configs/demo.py", "--workdir", "{a_file}"],
                                     "a_file.txt"),
    # train.fomm
    "fomm/forecaster config": ("train.fomm", ["--config", "configs/demo.py", "--workdir", "{tmp}/run"],
                               "a forecaster config; this command needs a fomm config"),
    "fomm/bad config argument": ("train.fomm", ["--config", "configs/fomm_vox.py:huge", "--workdir", "{tmp}/run"],
                                 "huge"),
    "fomm/missing data dir": ("train.fomm", ["--config", FOMM_TINY, "--workdir", "{tmp}/run",
                                             "--config.data.dir={missing}"], "no_such_thing"),
    "fomm/negative worker count": ("train.fomm", ["--config", FOMM_TINY, "--workdir", "{tmp}/run",
                                                  "--config.data.worker_count=-1"], "config.data.worker_count"),
    "forecaster/negative worker count": ("train.forecaster", ["--config", "configs/demo.py", "--workdir", "{tmp}/r",
                                                              "--config.data.worker_count=-1"],
                                         "config.data.worker_count must be an integer >= 0"),
    "fomm/unknown data kind": ("train.fomm", ["--config", FOMM_TINY, "--workdir", "{tmp}/run",
                                              "--config.data.kind=hdf5"], "config.data.kind must be one of"),
    "fomm/tfds without a data dir": ("train.fomm", ["--config", FOMM_TINY, "--workdir", "{tmp}/run",
                                                    "--config.data.kind=tfds"], "--config.data.tfds_data_dir"),
    "forecaster/tfds not prepared": ("train.forecaster", ["--config", "configs/demo.py", "--workdir", "{tmp}/r",
                                                          "--config.data.kind=tfds",
                                                          "--config.data.tfds_data_dir={tmp}/none"],
                                     "python -m kpflow.data.prepare"),
    # kpflow.data.prepare
    "prepare/missing source": ("kpflow.data.prepare", ["--kind", "keypoints", "--src", "{missing}",
                                                       "--data_dir", "{tmp}/d"], "no_such_thing"),
    "prepare/unknown kind": ("kpflow.data.prepare", ["--kind", "frames", "--src", "{tmp}", "--data_dir", "{tmp}/d"],
                             "frames"),
    "prepare/split flag for videos": ("kpflow.data.prepare", ["--kind", "videos", "--src", "{videos}", "--data_dir",
                                                              "{tmp}/d", "--holdout_speakers", "a"],
                                      "--holdout_speakers does not apply to --kind videos"),
    "prepare/bad fraction": ("kpflow.data.prepare", ["--kind", "keypoints", "--src", "{tmp}", "--data_dir", "{tmp}/d",
                                                     "--val_fraction", "2"], "--val_fraction must be between 0 and 1"),
    "prepare/text file as a clip": ("kpflow.data.prepare", ["--kind", "keypoints", "--src", "{text_npz_dir}",
                                                            "--data_dir", "{tmp}/d"], "spk#clip.npz"),
    "fomm/no readable video": ("train.fomm", ["--config", FOMM_TINY, "--workdir", "{tmp}/run",
                                              "--config.data.dir={bad_videos}"], "none of the 2 videos"),
    "fomm/batch size 0": ("train.fomm", ["--config", FOMM_TINY, "--workdir", "{tmp}/run", "--config.data.dir={videos}",
                                         "--config.train.batch_size=0"], "batch_size"),
    "fomm/VGG19 weights missing": ("train.fomm", ["--config", "configs/fomm_vox.py", "--workdir", "{tmp}/run",
                                                  "--config.data.dir={videos}"], "vgg19_weights"),
    "fomm/corrupt config.json in workdir": ("train.fomm", ["--config", FOMM_TINY, "--workdir", "{corrupt_dir}",
                                                           "--config.data.dir={videos}",
                                                           "--config.data.frame_shape=32,32,3"], "config.json"),
    # kpflow.fomm.convert
    "convert/bad config argument": ("kpflow.fomm.convert", ["--config", "configs/fomm_vox.py:huge",
                                                            *CONVERT[2:]], "huge"),
    "convert/forecaster config": ("kpflow.fomm.convert", ["--config", "configs/demo.py", *CONVERT[2:]],
                                  "needs a fomm config"),
    "convert/no --out": ("kpflow.fomm.convert", CONVERT[:4], "--out"),
    "convert/missing checkpoint": ("kpflow.fomm.convert", [*CONVERT[:2], "--checkpoint", "{missing}.npz",
                                                           *CONVERT[4:]], "no_such_thing.npz"),
    "convert/truncated npz": ("kpflow.fomm.convert", CONVERT, "truncated.npz: truncated"),
    "convert/text file renamed npz": ("kpflow.fomm.convert", [*CONVERT[:2], "--checkpoint", "{text_npz}",
                                                              *CONVERT[4:]], "notes.npz: a text file"),
    "convert/npz of another network": ("kpflow.fomm.convert", [*CONVERT[:2], "--checkpoint", "{foreign_npz}",
                                                               *CONVERT[4:]], "foreign.npz"),
    "convert/out is a file": ("kpflow.fomm.convert", [*CONVERT[:4], "--out", "{a_file}"], "is a file"),
    # eval.forecast
    "forecast/missing workdir": ("eval.forecast", ["--workdir", "{missing}", "--data_dir", "{videos}",
                                                   "--out", "{tmp}/e.json"], "no_such_thing"),
    "forecast/FOMM dir as workdir": ("eval.forecast", ["--workdir", "{fomm_dir}", "--data_dir", "{videos}",
                                                       "--out", "{tmp}/e.json"], "holds a FOMM model, not a forecaster run"),
    "forecast/corrupt config.json": ("eval.forecast", ["--workdir", "{corrupt_dir}", "--data_dir", "{videos}",
                                                       "--out", "{tmp}/e.json"], "config.json is damaged"),
    "forecast/samples 0": ("eval.forecast", ["--workdir", "{forecaster_dir}", "--data_dir", "{videos}",
                                             "--out", "{tmp}/e.json", "--samples", "0"], "--samples"),
    "forecast/out is a folder": ("eval.forecast", ["--workdir", "{forecaster_dir}", "--data_dir", "{videos}",
                                                   "--out", "{folder}"], "is a folder"),
    "forecast/out under a file": ("eval.forecast", ["--workdir", "{forecaster_dir}", "--data_dir", "{videos}",
                                                    "--out", "{a_file}/e.json"], "is a file"),
    "forecast/missing flag": ("eval.forecast", ["--workdir", "{forecaster_dir}"], "--data_dir"),
    # eval.video
    "video/missing FOMM": ("eval.video", ["--fomm", "{missing}", *EVAL_VIDEO[2:]], "no_such_thing"),
    "video/forecaster run as FOMM": ("eval.video", ["--fomm", "{forecaster_dir}", *EVAL_VIDEO[2:]],
                                     "not a FOMM config"),
    "video/corrupt FOMM config": ("eval.video", ["--fomm", "{corrupt_dir}", *EVAL_VIDEO[2:]], "config.json"),
    "video/missing videos": ("eval.video", [*EVAL_VIDEO[:2], "--videos", "{missing}", *EVAL_VIDEO[4:]],
                             "no_such_thing"),
    "video/no readable video": ("eval.video", [*EVAL_VIDEO[:2], "--videos", "{bad_videos}", *EVAL_VIDEO[4:]],
                                "none of the 2 videos"),
    "video/one unreadable video": ("eval.video", [*EVAL_VIDEO[:2], "--videos", "{bad_video}", *EVAL_VIDEO[4:]],
                                   "id0#a.mp4: cannot read video"),
    "video/bad horizon": ("eval.video", [*EVAL_VIDEO[:6], "--horizon", "6x6"], "N-M"),
    "video/samples 0": ("eval.video", [*EVAL_VIDEO, "--samples", "0"], "--samples"),
    "video/out is a file": ("eval.video", [*EVAL_VIDEO[:4], "--out", "{a_file}", *EVAL_VIDEO[6:]], "is a file"),
    # eval.compare
    "compare/missing file": ("eval.compare", ["{missing}.json"], "no_such_thing"),
    "compare/not JSON": ("eval.compare", ["{a_file}"], "a_file.txt"),
    "compare/not an evaluation": ("eval.compare", ["{other_json}"], "not an evaluation JSON"),
    "compare/folder without evaluations": ("eval.compare", ["{folder}"], "holds no evaluation JSON"),
    "compare/units absent": ("eval.compare", ["{eval_json}"], "'minmax'"),
    "compare/out is a folder": ("eval.compare", ["{eval_json}", "--units", "raw", "--out", "{folder}"], "is a folder"),
    "compare/bad units": ("eval.compare", ["{eval_json}", "--units", "furlongs"], "furlongs"),
    # eval.extract_keypoints
    "extract/missing FOMM": ("eval.extract_keypoints", ["--fomm", "{missing}", *EXTRACT[2:]], "no_such_thing"),
    "extract/forecaster run as FOMM": ("eval.extract_keypoints", ["--fomm", "{forecaster_dir}", *EXTRACT[2:]],
                                       "not a FOMM config"),
    "extract/corrupt FOMM config": ("eval.extract_keypoints", ["--fomm", "{corrupt_dir}", *EXTRACT[2:]],
                                    "config.json is damaged"),
    "extract/missing videos": ("eval.extract_keypoints", [*EXTRACT[:2], "--videos", "{missing}", *EXTRACT[4:]],
                               "no_such_thing"),
    "extract/text file as video": ("eval.extract_keypoints", [*EXTRACT[:2], "--videos", "{a_file}", *EXTRACT[4:]],
                                   "is not a video"),
    "extract/no readable video": ("eval.extract_keypoints", [*EXTRACT[:2], "--videos", "{bad_videos}",
                                                             *EXTRACT[4:]], "none of the 4 videos"),
    "extract/batch size 0": ("eval.extract_keypoints", [*EXTRACT, "--batch_size", "0"], "--batch_size"),
    "extract/frame size -1": ("eval.extract_keypoints", [*EXTRACT, "--frame_size", "-1"], "--frame_size"),
    "extract/out is a file": ("eval.extract_keypoints", [*EXTRACT[:4], "--out", "{a_file}"], "is a file"),
    # eval.bench
    "bench/unknown benchmark": ("eval.bench", ["nosuch"], "unknown benchmark"),
    "bench/batch 0": ("eval.bench", ["fomm", "--batch", "0"], "--batch"),
    "bench/samples 0": ("eval.bench", ["forecast", "--samples", "0"], "--samples"),
    "bench/missing forecaster": ("eval.bench", ["forecast", "--forecaster", "{missing}"], "no_such_thing"),
    "bench/FOMM dir as forecaster": ("eval.bench", ["forecast", "--forecaster", "{fomm_dir}"],
                                     "holds a FOMM model, not a forecaster run"),
    "bench/forecaster run as FOMM": ("eval.bench", ["realtime", "--fomm", "{forecaster_dir}"], "not a FOMM config"),
    "bench/unreadable video": ("eval.bench", ["realtime", "--tiny", "--video", "{bad_video}"], "id0#a.mp4"),
    "bench/out is a folder": ("eval.bench", ["fomm", "--out", "{folder}"], "is a folder"),
    # kpflow.data.make_synthetic
    "synthetic/out is a file": ("kpflow.data.make_synthetic", ["--out", "{a_file}"], "is a file"),
    "synthetic/out under a file": ("kpflow.data.make_synthetic", ["--out", "{a_file}/clips"], "is a file"),
    "synthetic/no clips": ("kpflow.data.make_synthetic", ["--out", "{tmp}/c", "--num_clips", "0"], "--num_clips"),
    "synthetic/negative clips": ("kpflow.data.make_synthetic", ["--out", "{tmp}/c", "--num_clips", "-3"],
                                 "--num_clips must be >= 1, got -3"),
    "synthetic/min above max": ("kpflow.data.make_synthetic", ["--out", "{tmp}/c", "--min_frames", "50",
                                                               "--max_frames", "40"], "--max_frames (40)"),
    "synthetic/one-frame clips": ("kpflow.data.make_synthetic", ["--out", "{tmp}/c", "--min_frames", "1"],
                                  "--min_frames"),
    "synthetic/no speakers": ("kpflow.data.make_synthetic", ["--out", "{tmp}/c", "--num_speakers", "0"],
                              "--num_speakers"),
    "synthetic/not a number": ("kpflow.data.make_synthetic", ["--out", "{tmp}/c", "--seed", "x"], "--seed"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_error_line(case, inputs, tmp_path, capsys, monkeypatch):
    command, argv, expected = CASES[case]
    monkeypatch.chdir(REPO)  # the configs are named relative to the repository
    argv = [a.format(tmp=tmp_path, **inputs) for a in argv]
    status, err = run_command(command, argv, capsys)
    lines = err.strip().splitlines()
    assert status != 0, (status, err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("error: ") or line.startswith(f"python -m {command}") and ": error: " in line, line
    assert expected in line, line
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "fomm" / "config.json").exists()


def test_every_command_has_several_cases():
    counts = {command: 0 for command in COMMANDS}
    for command, _, _ in CASES.values():
        counts[command] += 1
    assert min(counts.values()) >= 4, counts


# -- list and tuple fields from the command line ---------------------------------------------------


def parsed_config(argv: list[str]):
    """The forecaster config ``argv`` gives ``python -m train.forecaster`` (flags parsed, nothing run)."""
    import train.forecaster

    fresh = fresh_flags()
    saved = flags.FLAGS
    flags.FLAGS = fresh
    try:
        train.forecaster.define_flags()
        parse_absl_flags(["train.forecaster", "--workdir", "w", *argv])
        return fresh.config
    finally:
        flags.FLAGS = saved


@pytest.mark.parametrize("argv, field, expected", [
    (["--config.data.holdout_speakers=id1,id2"], "holdout_speakers", ["id1", "id2"]),
    (["--config.data.holdout_speakers=['id1', 'id2']"], "holdout_speakers", ["id1", "id2"]),
    (["--config.data.holdout_speakers", "id3"], "holdout_speakers", ["id3"]),
    (["--config.data.holdout_speakers="], "holdout_speakers", []),
    (["--config.data.augment=reflect,reverse"], "augment", ("reflect", "reverse")),
    (["--config.data.augment=reflect", "--config.data.augment=reverse"], "augment", ("reflect", "reverse")),
])
def test_list_and_tuple_fields_can_be_overridden(argv, field, expected, monkeypatch):
    monkeypatch.chdir(REPO)
    config = parsed_config(["--config", "configs/vrnn_vox.py:cpu", *argv, "--config.train.seed=3"])
    value = config.data[field]
    assert value == expected and type(value) is type(expected)
    assert config.train.seed == 3  # the other overrides still go through absl
    assert sys.argv[0] != "train.forecaster"  # the parse left sys.argv as it was



# -- one policy for unreadable videos --------------------------------------------------------------


def video_folder(root: pathlib.Path, good: int, bad: list[str]) -> list[pathlib.Path]:
    """``good`` readable 16x16 frame strips and the ``bad`` names as unreadable files, interleaved
    (a bad one first): the paths in that order."""
    written = {"test": []}
    if good:
        written = make_synthetic_videos(root / "made", num_train=0, num_test=good, num_frames=3, size=16, fmt="png")
    paths = []
    for i, name in enumerate(bad):
        (root / name).write_bytes(b"\x00not a video" * (i + 1))
        paths.append(root / name)
        if i < good:
            paths.append(written["test"][i])
    return paths + written["test"][len(bad):]


@pytest.mark.parametrize("prefetch", [False, True])
def test_unreadable_videos_are_skipped_one_line_each_and_counted_at_the_end(prefetch, tmp_path, capsys):
    from kpflow.data.videos import VideoSkips
    from kpflow.io import read_videos, video_run_status

    paths = video_folder(tmp_path, good=3, bad=["x.mp4", "y.gif"])
    skips = VideoSkips()
    read = [(p.name, frames.shape) for p, frames in read_videos(paths, (16, 16), skips, prefetch=prefetch)]
    assert [name for name, _ in read] == [p.name for p in paths if p.suffix == ".png"]
    assert all(shape == (3, 16, 16, 3) for _, shape in read)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "x.mp4: cannot read video" in lines[0] and "y.gif: cannot read video" in lines[1]
    assert video_run_status(skips, "python -m x") == 1
    assert capsys.readouterr().err.strip() == (
        "python -m x: error: 2 of 5 videos could not be read and were skipped: x.mp4, y.gif "
        "(the results cover the others)")
    assert video_run_status(VideoSkips(), "python -m x") == 0 and not capsys.readouterr().err


def test_no_readable_video_is_one_error_line_before_any_work(tmp_path, capsys):
    from kpflow.cli import UsageError
    from kpflow.data.videos import VideoSkips
    from kpflow.io import read_videos

    paths = video_folder(tmp_path, good=0, bad=["a.mp4", "b.mp4", "c.gif"])
    with pytest.raises(UsageError, match=r"^none of the 3 videos could be read; the first: .*a\.mp4: cannot read"):
        next(read_videos(paths, (16, 16), VideoSkips()))
    assert not capsys.readouterr().err  # the three skips are summed up in the error, not listed


def test_fomm_training_drops_unreadable_videos_and_says_so_before_training(tmp_path, capsys):
    from kpflow.data.video_pairs import PairBatches
    from kpflow.training.fomm import load_data

    root = tmp_path / "data"
    make_synthetic_videos(root, num_train=2, num_test=1, num_frames=4, size=16, fmt="png")
    (root / "train" / "id0009#broken.mp4").write_bytes(b"\x00" * 100)
    config = fomm_config("vox", "tiny")
    config.data.update(dir=str(root), frame_shape=(16, 16, 3))
    train, test, _ = load_data(config)
    captured = capsys.readouterr()
    assert train.num_videos == 2 and test.num_videos == 1
    assert [p.name for p, _ in train.skipped] == ["id0009#broken.mp4"] and not test.skipped
    assert "id0009#broken.mp4: cannot read video" in captured.err
    assert "skipping 1 unreadable videos" in captured.out
    batch = next(PairBatches(train, batch_size=2).epoch(0))  # training meets only readable videos
    assert batch["source"].shape == (2, 16, 16, 3)
