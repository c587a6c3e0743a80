"""The two trainers as libraries: importable from a notebook or a test, no flags.

- :mod:`kpflow.training.forecaster`: keypoint forecasters (``python -m train.forecaster``);
- :mod:`kpflow.training.fomm`: stage-1 FOMM (``python -m train.fomm``);
- :mod:`kpflow.training.runlog`: the run log both write (metrics, curves, samples, errors).
- :mod:`kpflow.training.checks`: what both check: config fields in range, divergence.

Each exposes ``train_and_evaluate(config, workdir)``; checkpoints go through
:class:`kpflow.run_store.CheckpointStore`.
"""
