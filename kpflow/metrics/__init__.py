"""Forecast and video metrics. Pure functions over arrays (NumPy or JAX), shapes in the names.

Conventions: ``samples [S, W, M, D]`` (S samples of W windows, M future frames, D numbers per
frame), ``target [W, M, D]``. Errors are in whatever units the inputs are in; the evaluation
expresses them in the papers' per-video min-max units and in raw keypoint units.

Every public name is importable from here (``from kpflow import metrics; metrics.energy_score``);
the modules group them:

- :mod:`~kpflow.metrics.errors`: :func:`mae`, mean / median / best-of-S MAE, :func:`energy_score`
  (fair estimator).
- :mod:`~kpflow.metrics.diversity`, the papers' protocol: :func:`apd`, :func:`select_lowest_mae`
  (20 of 100 by MAE), :func:`standardized_apd_mae_ratio`, :func:`standardized_ratio` (per-video
  APD / MAE ratios and their mean and median).
- :mod:`~kpflow.metrics.kernels`, distribution distances (exact unbiased MMD^2):
  :func:`polynomial_mmd` (KID / JEDi kernel), :func:`jedi` (JEDi on video features, extractors in
  :mod:`kpflow.features`), :func:`rbf_mmd` and :func:`motion_mmd` (RBF kernel on trajectory
  increments and speeds: the motion-realism distance).
- :mod:`~kpflow.metrics.forecast`: :func:`window_scores` (all per-window scores) and
  :func:`forecast_scores` (one row of the evaluation table).
- :mod:`~kpflow.metrics.video`, rendered frames (``frames [..., H, W, 3] float32 in [0, 1]``):
  :func:`pixel_mae` and :func:`ssim` (Gaussian-window SSIM, parity with scikit-image) per frame,
  :func:`video_sample_scores` (the diversity protocol on the S rendered futures of one window).
"""

from kpflow.metrics.diversity import (
    RATIO_SCALINGS,
    apd,
    apd_mae_ratio_by_video,
    lowest_mae_diversity,
    select_lowest_mae,
    standardized_apd_mae_ratio,
    standardized_ratio,
)
from kpflow.metrics.errors import (
    best_of_s_mae,
    energy_score,
    mae,
    sample_mean_mae,
    sample_median_mae,
)
from kpflow.metrics.forecast import SCORE_KEYS, forecast_scores, window_scores
from kpflow.metrics.kernels import (
    JEDI_KERNEL,
    JEDI_SCALE,
    jedi,
    median_heuristic_bandwidth,
    motion_features,
    motion_mmd,
    motion_mmd_from_features,
    motion_subset,
    polynomial_mmd,
    rbf_mmd,
)
from kpflow.metrics.video import pixel_mae, ssim, video_sample_scores

__all__ = [
    "JEDI_KERNEL",
    "JEDI_SCALE",
    "RATIO_SCALINGS",
    "SCORE_KEYS",
    "apd",
    "apd_mae_ratio_by_video",
    "best_of_s_mae",
    "energy_score",
    "forecast_scores",
    "jedi",
    "lowest_mae_diversity",
    "mae",
    "median_heuristic_bandwidth",
    "motion_features",
    "motion_mmd",
    "motion_mmd_from_features",
    "motion_subset",
    "pixel_mae",
    "polynomial_mmd",
    "rbf_mmd",
    "sample_mean_mae",
    "sample_median_mae",
    "select_lowest_mae",
    "ssim",
    "standardized_apd_mae_ratio",
    "standardized_ratio",
    "video_sample_scores",
    "window_scores",
]
