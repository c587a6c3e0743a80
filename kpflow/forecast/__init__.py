"""Keypoint forecasters behind one interface (:class:`Forecaster`), and the single model registry.

    from kpflow import forecast
    f = forecast.create("vrnn", dim=60, num_observed=6, horizon=6, hidden=64, latent=16)
    variables = f.init(rng, batch, scaler)
    loss, metrics = f.loss(variables, batch, rng)
    samples = f.sample(variables, context, 6, rng, num_samples=100)   # [S, B, M, D]
"""

from __future__ import annotations

import dataclasses
import importlib

from kpflow.forecast.base import Forecaster, ForecastModule
from kpflow.forecast.io import IOForecastModule, IOLayer, fold_legacy_fields

# name -> "module:Class". The only place that maps model names to code.
REGISTRY: dict[str, str] = {
    "gru": "kpflow.forecast.gru:GRUForecaster",
    "vae": "kpflow.forecast.vae:VAEForecaster",
    "nf": "kpflow.forecast.nf:NFForecaster",
    "vrnn": "kpflow.forecast.vrnn:VRNNForecaster",
    "grunf": "kpflow.forecast.grunf:GRUNFForecaster",
    "hold_last": "kpflow.forecast.baselines:HoldLast",
    "linear": "kpflow.forecast.baselines:Linear",
    "random_walk": "kpflow.forecast.baselines:RandomWalk",
}
MODELS = ("gru", "vae", "nf", "vrnn", "grunf")
BASELINES = ("hold_last", "linear", "random_walk")


def module_class(name: str) -> type[ForecastModule]:
    if name not in REGISTRY:
        raise ValueError(f"unknown forecaster {name!r}; choose one of: {', '.join(REGISTRY)}")
    mod, cls = REGISTRY[name].split(":")
    return getattr(importlib.import_module(mod), cls)


def create(name: str, *, dim: int = 60, num_observed: int = 6, horizon: int = 6, **hparams) -> Forecaster:
    """Build the forecaster ``name`` with hyper-parameters ``hparams`` (the config's ``model`` block).

    ``io`` configures the shared input/output layer (:mod:`kpflow.forecast.io`): an ``IOLayer``, a
    preset name ("shared", "plain") or a block of its fields. The flat fields of configs written
    before it (``residual``, ``adaptive_scale``, ``momentum``, ``sign_invariant``) are read as ``io``'s.
    Raises ValueError naming an unknown model or an unknown hyper-parameter.
    """
    cls = module_class(name)
    if issubclass(cls, IOForecastModule):
        hparams = fold_legacy_fields(hparams, cls.legacy_io)
    fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name"}
    unknown = sorted(set(hparams) - fields)
    if unknown:
        raise ValueError(
            f"{name}: unknown hyper-parameter(s) {unknown}; it takes: {sorted(fields - {'dim', 'num_observed', 'horizon'})}"
        )
    if dim <= 0 or dim % 6:
        raise ValueError(f"dim must be 6K (6 numbers per keypoint), got {dim}")
    return Forecaster(name=name, module=cls(dim=dim, num_observed=num_observed, horizon=horizon, **hparams))


__all__ = ["BASELINES", "MODELS", "REGISTRY", "ForecastModule", "Forecaster", "IOLayer", "create", "module_class"]
