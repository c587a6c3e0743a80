"""What both trainers check before and while they train: hyper-parameters in range, and divergence.

- **Config fields.** Each trainer declares a table ``{"train.learning_rate": POSITIVE, ...}`` of
  dotted field paths and :class:`Rule` values; :func:`check_fields` runs it on the config the
  trainer received (command-line overrides applied) and raises one ValueError line naming the
  field, the allowed range and the value: ``config.train.learning_rate must be a number > 0, got
  -1.0; set --config.train.learning_rate``. A wrong type is the same line (``an integer >= 1, got
  3.5``).
- **Divergence.** A loss that is finite can still have run away: :func:`check_loss_ratio` stops a
  run whose training loss exceeds :data:`LOSS_DIVERGENCE_FACTOR` times its first logged value,
  :func:`check_val_mae` one whose validation MAE exceeds :data:`VAL_MAE_DIVERGENCE_FACTOR` times
  the hold-last baseline's. Both raise :class:`kpflow.training.runlog.TrainingDiverged` (one line;
  the CLIs print it as ``error: ...``). The trainers call them before saving, so the checkpoints
  written before the divergence stay and nothing diverged becomes ``best/``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from kpflow.training.runlog import TrainingDiverged

# A training loss above this many times the magnitude of the run's first logged loss (taken as at
# least 1, since negative-log-likelihood losses can start near or below zero) means the run
# diverged. Healthy runs here end below their first logged value; a learning rate far too large
# sends the loss up by orders of magnitude within a few steps.
LOSS_DIVERGENCE_FACTOR = 100.0
# A validation MAE (sample mean) above this many times hold-last's means the model lost the data:
# an untrained residual forecaster scores about 1x hold-last and a trained one 0.9-1.05x.
VAL_MAE_DIVERGENCE_FACTOR = 10.0

# Forms of a field's value (Rule.form).
ONE, LIST, ONE_OR_LIST = "one", "list", "one or list"


@dataclasses.dataclass(frozen=True)
class Rule:
    """The allowed values of one config field.

    ``kind``: ``int``, ``float`` (an int is accepted, a bool is not) or ``bool``. ``low`` / ``high``:
    bounds (None: none), closed unless ``low_open`` / ``high_open``; numbers must be finite.
    ``form``: :data:`ONE` value, a :data:`LIST` of values (each checked; ``may_be_empty`` allows
    ``()``), or :data:`ONE_OR_LIST`.
    """

    kind: type = float
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    form: str = ONE
    may_be_empty: bool = False

    def describe(self) -> str:
        """The allowed values in words: ``an integer >= 1``, ``a non-empty list of numbers in (0, 1]``."""
        noun = {int: "integer", float: "number", bool: "boolean"}[self.kind]
        if self.low is not None and self.high is not None:
            span = f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            span = f" {'>' if self.low_open else '>='} {self.low:g}"
        elif self.high is not None:
            span = f" {'<' if self.high_open else '<='} {self.high:g}"
        else:
            span = ""
        if self.form == LIST:
            return f"a {'' if self.may_be_empty else 'non-empty '}list of {noun}s{span}"
        finite = "finite " if not span and self.kind is float else ""
        one = f"{'an' if (finite or noun)[0] in 'aeiou' else 'a'} {finite}{noun}{span}"
        return one if self.form == ONE else f"{one}, or a non-empty list of such"

    def accepts(self, value: Any) -> bool:
        if self.form == ONE:
            return self._accepts_one(value)
        if isinstance(value, (list, tuple)):
            return (bool(value) or self.may_be_empty) and all(self._accepts_one(v) for v in value)
        return self.form == ONE_OR_LIST and self._accepts_one(value)

    def _accepts_one(self, value: Any) -> bool:
        if self.kind is bool:
            return isinstance(value, bool)
        kinds = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))


# The usual rules.
COUNT = Rule(int, 1)  # sizes, counts: an integer >= 1
COUNT_OR_ZERO = Rule(int, 0)  # an integer >= 0 (0 often means "off" or "automatic")
POSITIVE = Rule(float, 0, low_open=True)  # learning rates, temperatures
NON_NEGATIVE = Rule(float, 0)  # weights, decays, sigmas
PROBABILITY = Rule(float, 0, 1)
FINITE = Rule(float)
FLAG = Rule(bool)
SCALE = Rule(float, 0, 1, low_open=True)  # a resolution factor in (0, 1]


def lookup(config: Any, path: str) -> tuple[bool, Any]:
    """``(True, value)`` of the dotted ``path`` in ``config`` (a ConfigDict or a dict), or
    ``(False, None)`` when absent."""
    node: Any = config
    for key in path.split("."):
        # A ConfigDict is not a collections.abc.Mapping, but has keys() and [].
        if not hasattr(node, "keys") or key not in node:
            return False, None
        node = node[key]
    return True, node


def check_fields(config: Any, table: Mapping[str, Rule], prefix: str = "", required: bool = True) -> None:
    """Raise a one-line ValueError for the first field of ``table`` (dotted paths below ``config``,
    shown after ``config.`` + ``prefix``) whose value ``table[path]`` does not accept.

    ``required``: a field absent from ``config`` is an error too (else it is skipped, as the
    fields of one model among many are).
    """
    for path, rule in table.items():
        name = f"{prefix}{path}"
        found, value = lookup(config, path)
        if not found:
            if required:
                raise ValueError(f"config.{name} is missing; it must be {rule.describe()} (set --config.{name})")
            continue
        if not rule.accepts(value):
            raise ValueError(f"config.{name} must be {rule.describe()}, got {value!r}; set --config.{name}")


def check_loss_ratio(loss: float, first: float, where: str, hint: str) -> None:
    """Raise :class:`TrainingDiverged` if the training ``loss`` (logged ``where``, e.g. "in epoch 3")
    is above :data:`LOSS_DIVERGENCE_FACTOR` times ``max(|first|, 1)``, ``first`` being the run's
    first logged loss; ``hint`` says what to change."""
    limit = LOSS_DIVERGENCE_FACTOR * max(abs(first), 1.0)
    if loss > limit:
        raise TrainingDiverged(
            f"training diverged {where}: loss {loss:.4g} is above {LOSS_DIVERGENCE_FACTOR:g}x the first logged "
            f"loss {first:.4g}; {hint}"
        )


def check_val_mae(mae: float, hold_last: float, where: str, hint: str) -> None:
    """Raise :class:`TrainingDiverged` if the validation ``mae`` is not finite or above
    :data:`VAL_MAE_DIVERGENCE_FACTOR` times hold-last's ``hold_last`` (no check unless that is
    finite and positive: frozen or broken data, not the model, would be at fault)."""
    if math.isfinite(hold_last) and hold_last > 0 and not mae <= VAL_MAE_DIVERGENCE_FACTOR * hold_last:
        raise TrainingDiverged(
            f"training diverged {where}: validation MAE {mae:.4g} is above {VAL_MAE_DIVERGENCE_FACTOR:g}x "
            f"hold-last's {hold_last:.4g}; {hint}"
        )


# Fields of the input pipeline both trainers share (kpflow.data.loaders), checked when present
# (configs written before the pipeline existed lack them).
DATA_PIPELINE_FIELDS = {"data.worker_count": COUNT_OR_ZERO}
