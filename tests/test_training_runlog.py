"""kpflow.training.runlog: metrics.jsonl on resume, curves, sample grids, the same-run check, and
progress bars that write plain lines when the stream is not a terminal."""

import io
import json

import ml_collections
import numpy as np
import pytest

from kpflow.progress import progress
from kpflow.training import runlog

PNG = b"\x89PNG\r\n\x1a\n"


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def test_resumed_log_keeps_records_up_to_the_restored_step(tmp_path):
    _write(tmp_path / runlog.METRICS_FILE, [json.dumps({"step": s, "loss": s / 10}) for s in (1, 2, 3, 4)])
    log = runlog.MetricsLog(str(tmp_path), resumed_step=2)
    assert [r["step"] for r in log.records] == [1, 2]
    log.append({"step": 3, "loss": 0.0})
    assert [json.loads(line)["step"] for line in (tmp_path / runlog.METRICS_FILE).read_text().splitlines()] == [1, 2, 3]
    assert not (tmp_path / (runlog.METRICS_FILE + ".tmp")).exists()


def test_fresh_log_drops_an_old_file(tmp_path):
    _write(tmp_path / runlog.METRICS_FILE, [json.dumps({"step": 0})])
    assert runlog.MetricsLog(str(tmp_path), resumed_step=None).records == []
    assert (tmp_path / runlog.METRICS_FILE).read_text() == ""


def test_torn_last_line_is_dropped_and_a_bad_middle_line_is_one_line_error(tmp_path):
    path = tmp_path / runlog.METRICS_FILE
    _write(path, [json.dumps({"step": 1}), '{"step": 2, "loss": "unterminat'])
    assert runlog.MetricsLog(str(tmp_path), resumed_step=5).records == [{"step": 1}]
    _write(path, [json.dumps({"step": 1}), "{oops", json.dumps({"step": 3})])
    with pytest.raises(ValueError, match="line 2 is not a JSON record") as err:
        runlog.read_records(str(path))
    assert "\n" not in str(err.value)


def test_log_of_another_process_does_not_write(tmp_path):
    log = runlog.MetricsLog(str(tmp_path), resumed_step=None, write=False)
    log.append({"step": 1})
    assert log.records == [{"step": 1}] and not (tmp_path / runlog.METRICS_FILE).exists()


def test_check_finite_raises_training_diverged():
    runlog.check_finite(1.5, "in epoch 1", "lower the learning rate")
    with pytest.raises(runlog.TrainingDiverged, match="training loss became nan in epoch 2; lower the learning rate"):
        runlog.check_finite(float("nan"), "in epoch 2", "lower the learning rate")


def test_check_same_run_names_what_differs():
    saved = ml_collections.ConfigDict({"model": {"name": "vrnn", "hidden": 32, "sizes": [1, 2]}, "horizon": "6-6",
                                       "num_observed": 6, "num_predicted": 6})
    same = ml_collections.ConfigDict(saved.to_dict())
    same.model.sizes = (1, 2)  # a tuple where JSON gave a list: the same run
    same.train = {"num_epochs": 9}  # the loop's settings may change
    horizon = {"horizon": ("num_observed", "num_predicted")}
    runlog.check_same_run(saved, same, "W", also=horizon)
    other = ml_collections.ConfigDict(saved.to_dict())
    other.model.hidden = 16
    with pytest.raises(ValueError, match=r"'W' holds a run with a different model \(hidden: 32 there, 16 now\)"):
        runlog.check_same_run(saved, other, "W", also=horizon)
    other = ml_collections.ConfigDict(saved.to_dict())
    other.horizon, other.num_predicted = "6-12", 12
    with pytest.raises(ValueError, match=r"different horizon \('6-6' there, '6-12' now\)"):
        runlog.check_same_run(saved, other, "W", also=horizon)
    runlog.check_same_run(saved, other, "W")  # the horizon not asked for


def test_plot_panels_and_sample_grid_write_pngs(tmp_path):
    records = [{"step": s, "loss": 1 / s} for s in (1, 2, 3)]
    panels = [
        runlog.Panel("loss", [runlog.Line("loss", *runlog.series(records, "loss"))], log_y=True, vline=(2, "best")),
        runlog.Panel("empty", [], hline=(0.5, "baseline")),
    ]
    runlog.plot_panels(panels, str(tmp_path / "curves.png"))
    assert (tmp_path / "curves.png").read_bytes()[:8] == PNG

    cell = np.zeros((16, 16, 3), np.float32)
    grid = runlog.image_grid([[runlog.draw_keypoints(cell, np.zeros((1, 2))), cell + 1.0]])
    assert grid.dtype == np.uint8 and grid.shape == (128, 256, 3)  # enlarged 8x to SAMPLE_MIN_SIZE
    assert grid[:, :128].max() > 0 and grid[:, 128:].min() == 255
    runlog.save_image(str(tmp_path / "samples" / "step_0000001.png"), grid)
    assert (tmp_path / "samples" / "step_0000001.png").read_bytes()[:8] == PNG


def test_progress_to_a_non_terminal_writes_lines_without_carriage_returns():
    stream = io.StringIO()
    with progress(range(5), file=stream, desc="train", mininterval=0) as bar:
        for _ in bar:
            bar.set_postfix(loss=1.0)
    text = stream.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.endswith("\n") and "5/5" in text.splitlines()[-1]
