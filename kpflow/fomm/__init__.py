"""First Order Motion Model (Siarohin et al. 2019) in Flax, NHWC.

- :func:`load` a FOMM directory (converted from an official checkpoint with
  ``python -m kpflow.fomm.convert``, or trained with ``python -m train.fomm``) as a :class:`FOMM`
  with jitted ``detect`` and ``generate``.
- Networks: :class:`KPDetector`, :class:`DenseMotionNetwork`, :class:`OcclusionAwareGenerator`,
  :class:`MultiScaleDiscriminator`; :func:`build_networks` makes them from ``config.model``.
"""

from kpflow.fomm.dense_motion import DenseMotionNetwork
from kpflow.fomm.discriminator import MultiScaleDiscriminator
from kpflow.fomm.generator import OcclusionAwareGenerator
from kpflow.fomm.keypoint_detector import KPDetector
from kpflow.fomm.model import FOMM, Networks, build_networks, init_variables, load, save_model

__all__ = [
    "FOMM",
    "DenseMotionNetwork",
    "KPDetector",
    "MultiScaleDiscriminator",
    "Networks",
    "OcclusionAwareGenerator",
    "build_networks",
    "init_variables",
    "load",
    "save_model",
]
