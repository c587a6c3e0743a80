"""``kpflow_keypoints``: a folder of per-clip ``.npz`` keypoint files as a TFDS dataset.

One example per clip: ``value [T, K, 2]`` and ``jacobian [T, K, 2, 2]`` float32 (zlib-compressed
tensors, stored bit for bit), the clip's name and its speaker. The ``train`` and ``validation``
splits are speaker-disjoint, made by kpflow's own split functions with the precedence of
:func:`kpflow.data.config.load_splits` (a list file, else held-out speakers, else a fraction of
speakers). Examples keep the sorted clip order.

Prepare with ``python -m kpflow.data.prepare --kind keypoints --src DIR --data_dir OUT`` (or
``tfds build`` with ``--manual_dir DIR``); read with :func:`load_keypoint_clips`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import ClassVar

import numpy as np

from kpflow.data.clips import (
    ClipSet,
    load_clip,
    speaker_of,
    split_by_fraction,
    split_by_list,
    split_by_speaker,
)
from kpflow.data.tfds import (
    FOMM_CITATION,
    FOMM_HOMEPAGE,
    SOURCES_KEY,
    open_prepared,
    require_tfds,
    source_digest,
)
from kpflow.keypoints import check_series, keypoints_to_vector, vector_to_keypoints
from kpflow.progress import progress

tfds = require_tfds()

NAME = "kpflow_keypoints"
SPLITS = ("train", "validation")
MANUAL_DOWNLOAD_INSTRUCTIONS = """\
A folder of per-clip .npz keypoint files named <speaker>#...npz, each with float32 arrays
value [T, K, 2] and jacobian [T, K, 2, 2] (FOMM's keypoints and their Jacobians), as written by
`python -m eval.extract_keypoints --out DIR` or `python -m kpflow.data.make_synthetic --out DIR`.
Pass it as the manual dir: `python -m kpflow.data.prepare --kind keypoints --src DIR --data_dir OUT`.
"""
WHAT_TO_PUT = ("put per-clip .npz keypoint files there (value [T,K,2], jacobian [T,K,2,2]), as "
               "`python -m eval.extract_keypoints` or `python -m kpflow.data.make_synthetic --out DIR` write")
DEFAULT_VAL_FRACTION = 0.2
# A config name holds speaker names up to this length; longer lists are named by a hash.
MAX_NAME_CHARS = 60


def prepare_command(name: str = NAME, data_dir: str = "OUT") -> str:
    """The command that prepares ``name`` (a note for the messages)."""
    config = name.split("/", 1)[1].split(":", 1)[0] if "/" in name else "default"
    how = "" if config == "default" else " (with the split flags that made it)"
    return f"`python -m kpflow.data.prepare --kind keypoints --src DIR --data_dir {data_dir}`{how}"


@dataclasses.dataclass(eq=False)
class KpflowKeypointsConfig(tfds.core.BuilderConfig):
    """How the clips are split into ``train`` and ``validation`` (the precedence of
    :func:`kpflow.data.config.load_splits`): the clips listed in ``split_file`` (one name per line);
    else every clip of ``holdout_speakers``; else a ``val_fraction`` of the speakers drawn with
    ``seed``."""

    split_file: str | None = None
    holdout_speakers: tuple[str, ...] = ()
    val_fraction: float = DEFAULT_VAL_FRACTION
    seed: int = 0

    def split(self, clips: ClipSet) -> tuple[ClipSet, ClipSet]:
        """``(train, validation)`` of ``clips`` by this config's rule."""
        if self.split_file:
            return split_by_list(clips, self.split_file)
        if self.holdout_speakers:
            return split_by_speaker(clips, list(self.holdout_speakers))
        return split_by_fraction(clips, float(self.val_fraction), int(self.seed))


def _name_part(text: str) -> str:
    """``text`` with every character a TFDS config name refuses replaced by ``_``."""
    return re.sub(r"[^\w+\-.]", "_", text)


def keypoints_config(split_file: str | None = None, holdout_speakers=(), val_fraction: float | None = None,
                     seed: int | None = None) -> KpflowKeypointsConfig:
    """The config of a split rule, named after it: ``default`` (a fifth of the speakers, seed 0),
    ``list-<file stem>``, ``holdout-<speakers>`` or ``fraction<f>-seed<s>``.

    Raises a one-line ValueError for rules that contradict each other or a fraction outside (0, 1).
    """
    holdout_speakers = tuple(str(s) for s in holdout_speakers or ())
    if split_file and holdout_speakers:
        raise ValueError("give either a split file or held-out speakers, not both")
    if (split_file or holdout_speakers) and (val_fraction is not None or seed is not None):
        raise ValueError("val_fraction and seed apply only without a split file or held-out speakers")
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
    seed = 0 if seed is None else int(seed)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1, got {fraction:g}")
    if split_file:
        stem = os.path.splitext(os.path.basename(split_file))[0]
        name, rule = f"list-{_name_part(stem)}", f"the clips listed in {split_file}"
    elif holdout_speakers:
        joined = "-".join(_name_part(s) for s in holdout_speakers)
        if len(joined) > MAX_NAME_CHARS:
            digest = hashlib.sha1(",".join(holdout_speakers).encode()).hexdigest()[:8]
            joined = f"{len(holdout_speakers)}speakers-{digest}"
        name, rule = f"holdout-{joined}", f"every clip of speakers {', '.join(holdout_speakers)}"
    else:
        default = (fraction, seed) == (DEFAULT_VAL_FRACTION, 0)
        name = "default" if default else f"fraction{fraction:g}-seed{seed}"
        rule = f"a fraction {fraction:g} of the speakers drawn with seed {seed}"
    return KpflowKeypointsConfig(
        name=name, description=f"validation: {rule}", split_file=split_file or None,
        holdout_speakers=holdout_speakers, val_fraction=fraction, seed=seed)


def manual_folder(dl_manager, hint: str) -> str:
    """The manual dir of ``dl_manager``; a one-line FileNotFoundError naming it and saying what to
    put there (``hint``) when it is missing or empty."""
    try:
        return os.fspath(dl_manager.manual_dir)
    except AssertionError:  # TFDS's own message spans lines: say it in one, naming the folder
        folder = os.fspath(getattr(dl_manager, "_manual_dir", None) or "")
    if not folder:
        raise FileNotFoundError(f"no manual dir given; {hint}")
    what = "is empty" if os.path.isdir(folder) else "does not exist"
    raise FileNotFoundError(f"{folder} {what}; {hint}")


class KpflowKeypoints(tfds.core.GeneratorBasedBuilder):
    """Per-clip FOMM keypoints (``value``, ``jacobian``) with speaker-disjoint splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        "1.0.0": "First release: one example per clip, train and validation splits."}
    BUILDER_CONFIGS: ClassVar[list] = [keypoints_config()]
    DEFAULT_CONFIG_NAME = "default"
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    # TFDS finds a builder's file through the importlib_resources backport, absent on Python >= 3.9
    # unless something else installs it; say where it is.
    code_path = tfds.core.Path(__file__)

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "FOMM keypoint series of video clips (K keypoints per frame, each a position in [-1, 1] "
                "and a 2x2 Jacobian), one example per clip, in kpflow's per-clip .npz format. "
                "The train and validation splits share no speaker."),
            features=tfds.features.FeaturesDict({
                "value": tfds.features.Tensor(shape=(None, None, 2), dtype=np.float32, encoding="zlib",
                                              doc="keypoint positions [T, K, 2]"),
                "jacobian": tfds.features.Tensor(shape=(None, None, 2, 2), dtype=np.float32,
                                                 encoding="zlib", doc="keypoint Jacobians [T, K, 2, 2]"),
                "clip": tfds.features.Text(doc="clip name, the .npz file's stem"),
                "speaker": tfds.features.Text(doc="the clip name's prefix before the first #"),
            }),
            disable_shuffling=True,  # records in sorted clip order
            metadata=tfds.core.MetadataDict(),  # SOURCES_KEY: each source file's size and SHA-256
            homepage=FOMM_HOMEPAGE,
            citation=FOMM_CITATION,
        )

    def _split_generators(self, dl_manager):
        folder = manual_folder(dl_manager, WHAT_TO_PUT)
        files = sorted(f for f in os.listdir(folder) if f.endswith(".npz"))
        if not files:
            raise FileNotFoundError(f"{folder} has no .npz files; {WHAT_TO_PUT}")
        # load_folder's reading: every file checked, a bad one is a one-line error naming it.
        clips = ClipSet({f[: -len(".npz")]: load_clip(os.path.join(folder, f))
                         for f in progress(files, desc="reading clips", unit="clip", delay=1)}, source=folder)
        self.info.metadata[SOURCES_KEY] = {f: source_digest(os.path.join(folder, f)) for f in files}
        train, validation = self.builder_config.split(clips)
        return {"train": self._generate_examples(train, "train"),
                "validation": self._generate_examples(validation, "validation")}

    def _generate_examples(self, clips: ClipSet, split: str):
        items = progress(clips.clips.items(), total=len(clips), desc=f"writing {split}", unit="clip", delay=1)
        for index, (name, series) in enumerate(items):
            value, jacobian = vector_to_keypoints(series)
            # Integer keys: with disable_shuffling, records are written in key order.
            yield index, {"value": np.asarray(value, np.float32), "jacobian": np.asarray(jacobian, np.float32),
                          "clip": name, "speaker": speaker_of(name)}


def _read_split(source, description: str) -> dict[str, np.ndarray]:
    """``{clip: [T, 6K] float32}`` of one split's data source."""
    clips = {}
    for example in source.__getitems__(range(len(source))):
        name = example["clip"].decode("utf-8")
        clips[name] = check_series(keypoints_to_vector(example["value"], example["jacobian"]),
                                   name=f"{description}: {name}")
    return clips


def load_keypoint_splits(name: str, data_dir: str | os.PathLike) -> dict[str, ClipSet]:
    """``{split: ClipSet}`` of the ``kpflow_keypoints`` dataset ``name`` (``kpflow_keypoints``,
    ``kpflow_keypoints/<config>``, optionally ``:<version>``) prepared in ``data_dir``: each clip
    ``[T, 6K]`` float32, exactly as :func:`kpflow.data.clips.load_clip` reads its ``.npz``.

    Raises:
      FileNotFoundError: one line naming ``data_dir`` and the command that prepares the dataset.
    """
    data_dir = os.fspath(data_dir)
    builder = open_prepared(name, data_dir, prepare_command(name, data_dir))
    source = f"tfds:{name} in {data_dir}"
    return {str(split): ClipSet(_read_split(data, source), source=f"{source} [{split}]")
            for split, data in sorted(builder.as_data_source().items())}


def load_keypoint_clips(name: str, data_dir: str | os.PathLike) -> ClipSet:
    """Every clip of every split of the prepared dataset ``name`` in ``data_dir`` (see
    :func:`load_keypoint_splits`), as one ClipSet whose source is ``tfds:<name> in <data_dir>``:
    the same clips :func:`kpflow.data.clips.load_folder` reads from the folder it was prepared from.
    """
    clips = {}
    for split in load_keypoint_splits(name, data_dir).values():
        clips.update(split.clips)
    return ClipSet(clips, source=f"tfds:{name} in {os.fspath(data_dir)}")
