"""The training command lines: thin absl mains over :mod:`kpflow.training` (``python -m train.forecaster``, ``python -m train.fomm``)."""
