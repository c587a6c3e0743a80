"""TFDS datasets of kpflow's data, read without TensorFlow.

Builders (``python -m kpflow.data.prepare`` prepares them in a ``data_dir``):

- ``kpflow_keypoints`` (:mod:`kpflow.data.tfds.keypoints`): a folder of per-clip ``.npz``
  keypoint files, one example per clip, speaker-disjoint ``train`` and ``validation`` splits;
  :func:`load_keypoint_clips` reads one back as a :class:`kpflow.data.ClipSet`.
- ``kpflow_videos`` (:mod:`kpflow.data.tfds.videos`): a FOMM-layout video folder at 64, 128 or 256
  pixels, frames stored one PNG each; :class:`TfdsVideos` reads a split as a
  :class:`kpflow.data.video_pairs.VideoSet` (pairs for FOMM training), decoding only the frames
  asked for.
- TFDS's own ``bair_robot_pushing_small`` (:mod:`kpflow.data.tfds.bair`): :class:`BairVideos`.

Prepared datasets are ArrayRecord files read through ``tfds.data_source``, which needs
tensorflow-datasets but not TensorFlow (TFDS imports TensorFlow only to prepare). This package
imports tensorflow-datasets lazily: ``import kpflow.data.tfds`` works without it, and any use then
raises a one-line ImportError naming the extra to install.
"""

from __future__ import annotations

import importlib
import os
from typing import Any

TFDS_EXTRA_HINT = "pip install -e '.[tfds]'"
BAIR_NAME = "bair_robot_pushing_small"
# FOMM's citation: the keypoints and the video layout both come from it.
FOMM_CITATION = """\
@inproceedings{siarohin2019first,
  author = {Siarohin, Aliaksandr and Lathuili{\\`e}re, St{\\'e}phane and Tulyakov, Sergey and Ricci, Elisa and Sebe, Nicu},
  title = {First Order Motion Model for Image Animation},
  booktitle = {Advances in Neural Information Processing Systems (NeurIPS)},
  year = {2019}
}"""
FOMM_HOMEPAGE = "https://github.com/AliaksandrSiarohin/first-order-model"

# Public name -> the submodule that defines it (imported on first use, so tensorflow-datasets is
# needed only then).
_EXPORTS = {
    "KpflowKeypoints": "keypoints",
    "KpflowKeypointsConfig": "keypoints",
    "keypoints_config": "keypoints",
    "load_keypoint_clips": "keypoints",
    "load_keypoint_splits": "keypoints",
    "KpflowVideos": "videos",
    "KpflowVideosConfig": "videos",
    "videos_config": "videos",
    "TfdsVideos": "videos",
    "BairVideos": "bair",
}

__all__ = [
    "BAIR_NAME",
    "FOMM_CITATION",
    "FOMM_HOMEPAGE",
    "SOURCES_KEY",
    "TFDS_EXTRA_HINT",
    "BairVideos",
    "KpflowKeypoints",
    "KpflowKeypointsConfig",
    "KpflowVideos",
    "KpflowVideosConfig",
    "TfdsVideos",
    "keypoints_config",
    "load_keypoint_clips",
    "load_keypoint_splits",
    "open_prepared",
    "require_tensorflow",
    "require_tfds",
    "source_digest",
    "videos_config",
]


def require_tfds(what: str = "kpflow.data.tfds"):
    """The ``tensorflow_datasets`` module; a one-line ImportError naming the extra when it is not
    installed."""
    try:
        import tensorflow_datasets
    except ImportError:
        raise ImportError(f"{what} needs the tfds extra: {TFDS_EXTRA_HINT}") from None
    return tensorflow_datasets


def require_tensorflow(what: str = "preparing a TFDS dataset") -> None:
    """A one-line ImportError unless TensorFlow is installed (TFDS writes datasets through it)."""
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        raise ImportError(f"{what} needs TensorFlow, part of the tfds extra: {TFDS_EXTRA_HINT}")


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require_tfds()
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


# The dataset metadata key holding {source file (relative to the manual dir): {"bytes", "sha256"}}.
SOURCES_KEY = "sources"
_HASH_CHUNK = 1 << 20


def source_digest(path: str | os.PathLike) -> dict[str, Any]:
    """``{"bytes": n, "sha256": hex}`` of a source file, or of a folder (frame folders): its files in
    sorted order, each hashed as its name then its contents. A prepared dataset keeps one per
    source in its metadata (:data:`SOURCES_KEY`), so it says exactly which inputs it was built from."""
    import hashlib

    digest, size = hashlib.sha256(), 0
    path = os.fspath(path)
    files = [path] if os.path.isfile(path) else sorted(
        os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
    for file in files:
        if file != path:
            digest.update(os.path.relpath(file, path).encode() + b"\0")
        with open(file, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
                size += len(chunk)
    return {"bytes": size, "sha256": digest.hexdigest()}


def _prepared_there(data_dir: str, dataset: str) -> list[str]:
    """``["kpflow_keypoints/default:1.0.0", ...]``: what ``data_dir`` holds of ``dataset``."""
    root = os.path.join(data_dir, dataset)
    found = []
    if not os.path.isdir(root):
        return found
    for config in sorted(os.listdir(root)):
        config_dir = os.path.join(root, config)
        if not os.path.isdir(config_dir):
            continue
        if os.path.isfile(os.path.join(config_dir, "dataset_info.json")):  # a builder without configs
            found.append(f"{dataset}:{config}")
            continue
        for version in sorted(os.listdir(config_dir)):
            if os.path.isfile(os.path.join(config_dir, version, "dataset_info.json")):
                found.append(f"{dataset}/{config}:{version}")
    return found


def open_prepared(name: str, data_dir: str | os.PathLike, prepare_hint: str):
    """The TFDS builder of the dataset ``name`` (``dataset[/config][:version]``) prepared in
    ``data_dir``, ready for ``as_data_source``; nothing is downloaded or generated.

    Raises:
      FileNotFoundError: one line naming ``data_dir``, what it holds of that dataset, and
        ``prepare_hint`` (the command that prepares it), when it is not prepared there.
    """
    tfds = require_tfds()
    data_dir = os.fspath(data_dir)
    dataset = name.split("/", 1)[0].split(":", 1)[0]
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"TFDS data_dir {data_dir!r} does not exist; prepare {name} there: {prepare_hint}")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (tfds.core.registered.DatasetNotFoundError, ValueError, AssertionError):
        builder = None  # an unknown dataset, config or version: said below with what is there
    if builder is None or not builder.is_prepared():
        there = _prepared_there(data_dir, dataset)
        held = f"it holds {', '.join(there)}" if there else f"it holds no {dataset} dataset"
        raise FileNotFoundError(f"{name} is not prepared in {data_dir} ({held}); prepare it: {prepare_hint}")
    return builder

