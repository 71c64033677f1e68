"""Learning-rate schedules from ``OPTIMIZER.param_schedulers.lr`` (VISSL's format, fvcore's schedulers).

A schedule is a function of ``where`` in [0, 1): the fraction of training done. VISSL's recipe
format is kept, e.g. a linear warm-up then cosine decay::

    lr:
      name: composite
      schedulers:
        - {name: linear, start_value: 0.6, end_value: 4.8}
        - {name: cosine, start_value: 4.8, end_value: 0.0}
      interval_scaling: [rescaled, fixed]
      lengths: [0.1, 0.9]
      update_interval: step

Auto LR scaling (Goyal et al. 2017, "Accurate, Large Minibatch SGD", https://arxiv.org/abs/1706.02677)
is applied to this tree by :func:`scale_lr_schedule` during config inference.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping

from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    ConstantParamScheduler,
    CosineParamScheduler,
    LinearParamScheduler,
    MultiStepParamScheduler,
    ParamScheduler,
    StepWithFixedGammaParamScheduler,
)

from sslcore.registry import Registry, close_matches

SCHEDULERS: Registry[Callable[[Mapping[str, Any], int], ParamScheduler]] = Registry("lr scheduler")

_COMMON = {"name", "update_interval", "auto_lr_scaling"}


def _take(params: Mapping[str, Any], required: tuple, optional: tuple = ()) -> Dict[str, Any]:
    name = params.get("name")
    allowed = set(required) | set(optional) | _COMMON
    for key in params:
        if key not in allowed:
            hint = close_matches(key, sorted(allowed))
            raise ValueError(
                f"lr scheduler '{name}': unknown parameter '{key}'"
                + (f"; did you mean {', '.join(hint)}?" if hint else "")
                + f" Valid: {', '.join(sorted(allowed - _COMMON))}"
            )
    missing = [k for k in required if k not in params]
    if missing:
        raise ValueError(f"lr scheduler '{name}' needs {', '.join(missing)}")
    return {k: params[k] for k in list(required) + list(optional) if k in params}


@SCHEDULERS.register("constant")
def _constant(params: Mapping[str, Any], num_epochs: int) -> ParamScheduler:
    return ConstantParamScheduler(float(_take(params, ("value",))["value"]))


@SCHEDULERS.register("linear")
def _linear(params: Mapping[str, Any], num_epochs: int) -> ParamScheduler:
    p = _take(params, ("start_value", "end_value"))
    return LinearParamScheduler(float(p["start_value"]), float(p["end_value"]))


@SCHEDULERS.register("cosine")
def _cosine(params: Mapping[str, Any], num_epochs: int) -> ParamScheduler:
    p = _take(params, ("start_value", "end_value"))
    return CosineParamScheduler(float(p["start_value"]), float(p["end_value"]))


@SCHEDULERS.register("multistep")
def _multistep(params: Mapping[str, Any], num_epochs: int) -> ParamScheduler:
    p = _take(params, ("values", "milestones"), ("num_epochs",))
    return MultiStepParamScheduler(
        values=[float(v) for v in p["values"]],
        num_updates=int(p.get("num_epochs", num_epochs)),
        milestones=[int(m) for m in p["milestones"]],
    )


@SCHEDULERS.register("step_with_fixed_gamma")
def _step_fixed_gamma(params: Mapping[str, Any], num_epochs: int) -> ParamScheduler:
    p = _take(params, ("base_value", "gamma", "num_decays"), ("num_epochs",))
    return StepWithFixedGammaParamScheduler(
        base_value=float(p["base_value"]), num_decays=int(p["num_decays"]),
        gamma=float(p["gamma"]), num_updates=int(p.get("num_epochs", num_epochs)),
    )


@SCHEDULERS.register("composite")
def _composite(params: Mapping[str, Any], num_epochs: int) -> ParamScheduler:
    p = _take(params, ("schedulers", "lengths"), ("interval_scaling",))
    subs = [build_param_scheduler(s, num_epochs) for s in p["schedulers"]]
    lengths = [float(x) for x in p["lengths"]]
    if len(lengths) != len(subs) or not math.isclose(sum(lengths), 1.0, abs_tol=1e-6):
        raise ValueError(
            f"composite lr scheduler: 'lengths' {lengths} must have one entry per scheduler "
            f"({len(subs)}) and sum to 1.0"
        )
    scaling = list(p.get("interval_scaling", ["rescaled"] * len(subs)))
    return CompositeParamScheduler(subs, lengths=lengths, interval_scaling=scaling)


def build_param_scheduler(params: Mapping[str, Any], num_epochs: int) -> ParamScheduler:
    """Build an fvcore ParamScheduler from one VISSL scheduler mapping.

    Args:
        params: e.g. ``{"name": "cosine", "start_value": 0.3, "end_value": 0.0}``.
        num_epochs: OPTIMIZER.num_epochs, for epoch-based schedules (multistep).

    Returns:
        A callable ``where -> value`` for ``where`` in [0, 1).

    Raises:
        KeyError: unknown scheduler name (lists close names).
        ValueError: missing or unknown parameters.
    """
    if "name" not in params:
        raise ValueError(f"lr scheduler {dict(params)} has no 'name'; one of {SCHEDULERS.names()}")
    return SCHEDULERS.get(str(params["name"]))(params, num_epochs)


def _scale_tree(params: Dict[str, Any], scaled_lr: float, factor: float) -> Dict[str, Any]:
    """VISSL's rules: warm-up ends at, and decay starts from, the scaled LR."""
    name = params.get("name")
    out = dict(params)
    if name == "composite":
        out["schedulers"] = [_scale_tree(dict(s), scaled_lr, factor) for s in params["schedulers"]]
    elif name == "linear":
        out["end_value"] = scaled_lr
    elif name == "cosine":
        out["start_value"] = scaled_lr
    elif name == "constant":
        out["value"] = scaled_lr
    elif name == "multistep":
        out["values"] = [float(v) * factor for v in params["values"]]
    elif name == "step_with_fixed_gamma":
        out["base_value"] = scaled_lr
    return out


def scale_lr_schedule(lr_params: Mapping[str, Any], global_batch_size: int) -> Dict[str, Any]:
    """Apply ``auto_lr_scaling`` to an lr schedule tree (pure; returns a new mapping).

    The scaled LR is ``base_value * global_batch_size / base_lr_batch_size`` (``scaling_type:
    linear``) or its square-root variant (``sqrt``); linear warm-ups end at it, cosine and constant
    schedules start at it, multistep values are multiplied by the same factor.

    Raises:
        ValueError: unknown scaling_type or non-positive base_lr_batch_size.
    """
    params = dict(lr_params)
    auto = dict(params.get("auto_lr_scaling") or {})
    if not auto.get("auto_scale", False):
        return params
    base_bs = int(auto.get("base_lr_batch_size", 256))
    if base_bs <= 0:
        raise ValueError("OPTIMIZER.param_schedulers.lr.auto_lr_scaling.base_lr_batch_size must be > 0")
    ratio = global_batch_size / base_bs
    kind = auto.get("scaling_type", "linear")
    if kind not in ("linear", "sqrt"):
        raise ValueError(f"auto_lr_scaling.scaling_type must be 'linear' or 'sqrt', got {kind!r}")
    factor = ratio if kind == "linear" else math.sqrt(ratio)
    scaled = float(auto.get("base_value", 0.1)) * factor
    return _scale_tree(params, scaled, factor)
