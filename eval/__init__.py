"""Evaluation command lines, each a thin argparse main over ``kpflow`` (run with ``python -m``):

- ``eval.extract_keypoints``: FOMM keypoints of a folder of videos, as per-clip ``.npz`` files;
- ``eval.forecast``: a trained forecaster against the baselines on keypoint clips; ``eval.compare``
  puts several such evaluations in one table;
- ``eval.video``: the whole system (FOMM + forecasters) on videos, in the streaming schedule;
- ``eval.codec``: rate-distortion of keypoint transmission;
- ``eval.bench``: timings.

What they share (errors, loading runs, reading videos, progress bars) lives in ``kpflow.cli``,
``kpflow.runs``, ``kpflow.io`` and ``kpflow.progress``; no command line imports another.
"""
