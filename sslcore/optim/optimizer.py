"""Optimizers from ``OPTIMIZER``: SGD, Adam, AdamW, and SGD with LARC, on VISSL's parameter groups.

Names and keys are VISSL's (``OPTIMIZER.name: sgd | adam | adamw``, ``use_larc``,
``larc_config.{clip, eps, trust_coefficient}``, ``betas``, ``regularize_bn``, ``regularize_bias``,
``non_regularized_parameters``, ``head_optimizer_params``).

LARC is ``timm.optim.Lars`` (design.md section 4). How VISSL's apex LARC maps onto it:

=========================== ====================================================================
VISSL (apex ``LARC``)        timm ``Lars``
=========================== ====================================================================
``larc_config.clip``         ``trust_clip``: the local LR ``lr * ratio`` is clipped to ``lr``
                             (LARC); False scales the LR by the trust ratio (LARS)
``larc_config.eps``          ``eps`` (added to the denominator of the trust ratio)
``larc_config.trust_coef..`` ``trust_coeff``: ratio = coeff * |w| / (|g| + wd * |w| + eps)
every parameter adapted      ``always_adapt=True``: apex adapts every parameter, including those
                             in weight_decay = 0 groups (BatchNorm, biases); timm's default
                             (False) would skip them (the SimCLR-paper convention)
=========================== ====================================================================

Zero norms: where |w| = 0 (a BatchNorm bias at init) both keep the plain gradient (ratio 1; under
LARC timm clips it to min(1 / lr, 1), which is 1 for lr <= 1). Where |g| = 0 but |w| > 0, apex
leaves the zero gradient while timm still applies ``wd * w``; that only happens for a parameter
whose gradient exists but is exactly zero.

The LR is set every update from the schedule (:mod:`sslcore.optim.schedulers`), so the optimizer
is built with the schedule's value at ``where = 0``; an optional weight-decay schedule
(``param_schedulers.weight_decay``) is applied the same way to the regularised groups.

Papers:
    - [0] LARS/LARC, You et al. 2017, https://arxiv.org/abs/1708.03888
    - [1] AdamW, Loshchilov and Hutter 2017, https://arxiv.org/abs/1711.05101
    - [2] Adam, Kingma and Ba 2014, https://arxiv.org/abs/1412.6980
    - [3] DINO, Caron et al. 2021, https://arxiv.org/abs/2104.14294 (weight decay 0.04 -> 0.4)
"""

from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

import torch
from torch import nn

from sslcore.config.schema import Key, declare

log = logging.getLogger(__name__)

OPTIMIZER_NAMES = ("sgd", "adam", "adamw")

declare("OPTIMIZER", {
    "name": Key("sgd", str, "optimizer: 'sgd' (torch.optim.SGD; timm.optim.Lars with use_larc), "
                "'adam' (torch.optim.Adam, L2 weight decay), 'adamw' (torch.optim.AdamW, "
                "decoupled weight decay)", choices=OPTIMIZER_NAMES),
    "num_epochs": Key(10, int, "training length in epochs (VISSL: phases)"),
    "weight_decay": Key(1e-4, float, "L2 weight decay on regularised parameters (AdamW: "
                        "decoupled decay coefficient)"),
    "momentum": Key(0.9, float, "SGD momentum"),
    "nesterov": Key(False, bool, "Nesterov momentum (SGD)"),
    "betas": Key([0.9, 0.999], list, "Adam/AdamW coefficients (beta1, beta2) of the running "
                 "averages of the gradient and its square"),
    "use_larc": Key(False, bool, "LARC / LARS layer-wise adaptive LR (sgd only), implemented by "
                    "timm.optim.Lars; see larc_config"),
    "larc_config": {
        "clip": Key(False, bool, "True: LARC (local LR clipped to the global LR); False: LARS "
                    "(global LR scaled by the trust ratio)"),
        "eps": Key(1e-8, float, "added to the trust ratio's denominator"),
        "trust_coefficient": Key(0.001, float, "trust coefficient eta: ratio = eta * |w| / "
                                 "(|g| + weight_decay * |w| + eps)"),
    },
    "regularize_bn": Key(False, bool, "apply weight decay to normalisation-layer parameters"),
    "regularize_bias": Key(True, bool, "apply weight decay to biases"),
    "non_regularized_parameters": Key([], list, "parameter-name substrings never decayed, e.g. "
                                      "[pos_embed, cls_token] for a vision transformer"),
    "head_optimizer_params": {
        "use_different_lr": Key(False, bool, "give the heads (modules under heads.) their own "
                                "param groups whose LR follows param_schedulers.lr_head; the "
                                "trunk keeps param_schedulers.lr (fine-tuning recipes)"),
        "use_different_wd": Key(False, bool, "give the heads' regularised parameters their own "
                                "weight decay, head_optimizer_params.weight_decay"),
        "weight_decay": Key(1e-4, float, "weight decay of the heads when use_different_wd"),
    },
    "param_schedulers": {
        "lr": Key(
            {"name": "cosine", "start_value": 0.1, "end_value": 0.0, "update_interval": "step",
             "auto_lr_scaling": {"auto_scale": False, "base_value": 0.1, "base_lr_batch_size": 256,
                                 "scaling_type": "linear"}},
            dict,
            "LR schedule in VISSL's format (name: constant|linear|cosine|multistep|"
            "step_with_fixed_gamma|composite; update_interval: step|epoch; auto_lr_scaling: "
            "{auto_scale, base_value, base_lr_batch_size, scaling_type: linear|sqrt})",
        ),
        "lr_head": Key(
            {}, dict,
            "LR schedule of the heads, required with head_optimizer_params.use_different_lr: "
            "same format as param_schedulers.lr, auto_lr_scaling included (applied with lr's "
            "when the config is resolved). {} = not set",
        ),
        "weight_decay": Key(
            {}, dict,
            "weight-decay schedule of the regularised parameters, e.g. DINO's {name: cosine, "
            "start_value: 0.04, end_value: 0.4, update_interval: epoch}: same format as "
            "param_schedulers.lr without auto_lr_scaling; heads with "
            "head_optimizer_params.use_different_wd keep their own constant decay. "
            "{} = constant OPTIMIZER.weight_decay",
        ),
    },
})

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _is_head(module_name: str) -> bool:
    """Whether a module of the model (possibly DDP-wrapped: ``module.`` prefix) is in the heads."""
    parts = module_name.split(".")
    if parts and parts[0] == "module":
        parts = parts[1:]
    return bool(parts) and parts[0] == "heads"


def split_param_groups(model: nn.Module, *, weight_decay: float, regularize_bn: bool,
                       regularize_bias: bool, non_regularized: Sequence[str] = (),
                       head_weight_decay: Optional[float] = None) -> List[Dict[str, Any]]:
    """Split trainable parameters into decayed and non-decayed groups (VISSL's rules).

    Not decayed: parameters of BatchNorm/GroupNorm/LayerNorm modules unless ``regularize_bn``,
    parameters named ``bias`` unless ``regularize_bias``, and any parameter whose full name
    contains one of ``non_regularized``. Everything else is decayed.

    Args:
        model: the model (DDP-wrapped or not).
        weight_decay: decay of the regularised parameters (>= 0).
        regularize_bn: decay normalisation parameters.
        regularize_bias: decay biases.
        non_regularized: parameter-name substrings that are never decayed.
        head_weight_decay: None puts trunk and heads together (two groups); a value splits the
            heads (modules under ``heads.``) into their own groups with this decay.

    Returns:
        Param groups for torch optimizers, in the order [decay, no decay] (then [head decay,
        head no decay] when split); empty groups are dropped. Each group carries ``"head"``
        (bool): whether it holds head parameters (only True when split).

    Raises:
        ValueError: if a weight decay is negative.
    """
    if weight_decay < 0 or (head_weight_decay is not None and head_weight_decay < 0):
        raise ValueError(f"OPTIMIZER.weight_decay must be >= 0, got {weight_decay} "
                         f"(head: {head_weight_decay})")
    buckets: Dict[str, List[nn.Parameter]] = {"decay": [], "no_decay": [], "head_decay": [],
                                              "head_no_decay": []}
    for module_name, module in model.named_modules():
        is_norm = isinstance(module, _NORM_TYPES)
        split_head = head_weight_decay is not None and _is_head(module_name)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{name}" if module_name else name
            excluded = any(s in full for s in non_regularized)
            no_decay = ((is_norm and not regularize_bn) or (name == "bias" and not regularize_bias)
                        or excluded)
            key = ("head_" if split_head else "") + ("no_decay" if no_decay else "decay")
            buckets[key].append(param)
    decays = {"decay": weight_decay, "no_decay": 0.0, "head_decay": head_weight_decay,
              "head_no_decay": 0.0}
    return [{"params": params, "weight_decay": float(decays[key]), "head": key.startswith("head_"),
             "regularized": not key.endswith("no_decay")}
            for key, params in buckets.items() if params]


def _check(optim_cfg: Any) -> None:
    name = str(optim_cfg.name)
    if name not in OPTIMIZER_NAMES:
        raise ValueError(f"config.OPTIMIZER.name={name!r} is not supported; use one of "
                         f"{', '.join(OPTIMIZER_NAMES)}")
    if bool(optim_cfg.use_larc) and name != "sgd":
        raise ValueError(f"config.OPTIMIZER.use_larc=True needs OPTIMIZER.name=sgd (LARC wraps SGD, "
                         f"as in VISSL), got {name!r}; set use_larc=False or name=sgd")
    if bool(optim_cfg.head_optimizer_params.use_different_lr) and not optim_cfg.param_schedulers.lr_head:
        raise ValueError("config.OPTIMIZER.head_optimizer_params.use_different_lr=True needs the "
                         "heads' schedule: set config.OPTIMIZER.param_schedulers.lr_head (same "
                         "format as param_schedulers.lr), or set use_different_lr=False")
    betas = list(optim_cfg.betas)
    if len(betas) != 2 or not all(0.0 <= float(b) < 1.0 for b in betas):
        raise ValueError(f"config.OPTIMIZER.betas must be two numbers in [0, 1), got {betas}")


def build_optimizer(optim_cfg: Any, model: nn.Module, initial_lr: float,
                    head_initial_lr: Optional[float] = None) -> torch.optim.Optimizer:
    """Build the optimizer from ``cfg.OPTIMIZER``.

    ``sgd`` is ``torch.optim.SGD`` (momentum, nesterov), or with ``use_larc`` ``timm.optim.Lars``
    (``trust_clip=larc_config.clip``, ``trust_coeff=larc_config.trust_coefficient``,
    ``eps=larc_config.eps``, ``always_adapt=True``: see the module docstring); ``adam`` is
    ``torch.optim.Adam`` (L2 decay added to the gradient); ``adamw`` is ``torch.optim.AdamW``
    (decoupled decay). All use :func:`split_param_groups`.

    With ``head_optimizer_params.use_different_lr`` (VISSL's fine-tuning option) the heads get
    their own groups (decayed by ``head_optimizer_params.weight_decay`` when ``use_different_wd``,
    else by ``weight_decay``) starting at ``head_initial_lr``; :func:`set_learning_rates` then
    drives trunk and head groups from their two schedules. Otherwise one LR drives every group.

    Args:
        optim_cfg: the ``OPTIMIZER`` section.
        model: the model to optimise (DDP-wrapped or not).
        initial_lr: the LR at the start (the train loop sets it every update).
        head_initial_lr: the heads' LR at the start with ``use_different_lr``; None: initial_lr.

    Returns:
        The optimizer.

    Raises:
        ValueError: if the model has no trainable parameter, ``name`` is unknown, LARC is asked
            for with Adam/AdamW, ``betas`` are invalid, or ``use_different_lr`` is set without
            ``param_schedulers.lr_head``.

    Example:
        >>> from sslcore.config import compose_config
        >>> cfg = compose_config(["config.OPTIMIZER.name=adamw", "config.OPTIMIZER.weight_decay=0.05"])
        >>> opt = build_optimizer(cfg.OPTIMIZER, nn.Linear(4, 2), initial_lr=1e-3)
    """
    _check(optim_cfg)
    head = optim_cfg.head_optimizer_params
    groups = split_param_groups(
        model, weight_decay=float(optim_cfg.weight_decay),
        regularize_bn=bool(optim_cfg.regularize_bn), regularize_bias=bool(optim_cfg.regularize_bias),
        non_regularized=[str(s) for s in optim_cfg.non_regularized_parameters],
        head_weight_decay=_head_weight_decay(optim_cfg),
    )
    if not groups:
        raise ValueError("the model has no trainable parameters: check MODEL.FEATURE_EVAL_SETTINGS")
    for group in groups:
        if group["head"] and head_initial_lr is not None:
            group["lr"] = float(head_initial_lr)
    name = str(optim_cfg.name)
    if name == "adam" or name == "adamw":
        betas = tuple(float(b) for b in optim_cfg.betas)
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(groups, lr=initial_lr, betas=betas)
    if bool(optim_cfg.use_larc):
        from timm.optim import Lars

        larc = optim_cfg.larc_config
        return Lars(groups, lr=initial_lr, momentum=float(optim_cfg.momentum),
                    nesterov=bool(optim_cfg.nesterov), trust_coeff=float(larc.trust_coefficient),
                    eps=float(larc.eps), trust_clip=bool(larc.clip), always_adapt=True)
    return torch.optim.SGD(groups, lr=initial_lr, momentum=float(optim_cfg.momentum),
                           nesterov=bool(optim_cfg.nesterov))


def _head_weight_decay(optim_cfg: Any) -> Optional[float]:
    """The heads' decay when they get their own groups (different LR or WD), else None."""
    head = optim_cfg.head_optimizer_params
    if bool(head.use_different_wd):
        return float(head.weight_decay)
    if bool(head.use_different_lr):
        return float(optim_cfg.weight_decay)
    return None


def build_head_lr_schedule(optim_cfg: Any) -> Optional[Any]:
    """The heads' LR schedule (``param_schedulers.lr_head``) when ``use_different_lr``, else None.

    Like ``param_schedulers.lr``, the schedule is taken as it stands in a resolved config:
    :func:`sslcore.config.infer.infer_config` has already applied its ``auto_lr_scaling`` for the
    global batch (scaling again would multiply a multistep schedule's values twice).

    Args:
        optim_cfg: the ``OPTIMIZER`` section of a resolved config.

    Returns:
        A callable ``where -> lr`` for ``where`` in [0, 1), or None.

    Raises:
        ValueError, KeyError: an invalid ``lr_head`` schedule (names the problem).
    """
    from omegaconf import OmegaConf

    from sslcore.optim.schedulers import build_param_scheduler

    if not bool(optim_cfg.head_optimizer_params.use_different_lr):
        return None
    params = OmegaConf.to_container(optim_cfg.param_schedulers.lr_head, resolve=True)
    return build_param_scheduler(params, int(optim_cfg.num_epochs))


def build_weight_decay_schedule(optim_cfg: Any) -> Optional[Any]:
    """The weight-decay schedule (``param_schedulers.weight_decay``), or None when it is ``{}``.

    VISSL's key; DINO [3] raises the decay from 0.04 to 0.4 along a cosine over training.

    Args:
        optim_cfg: the ``OPTIMIZER`` section.

    Returns:
        A callable ``where -> weight decay`` for ``where`` in [0, 1), or None.

    Raises:
        ValueError: ``auto_lr_scaling`` in it (learning rates only), or a negative decay anywhere
            on the schedule; KeyError/ValueError from an invalid schedule (names the problem).
    """
    from omegaconf import OmegaConf

    from sslcore.optim.schedulers import build_param_scheduler

    params = OmegaConf.to_container(optim_cfg.param_schedulers.weight_decay, resolve=True)
    if not params:
        return None
    if params.get("auto_lr_scaling"):
        raise ValueError("OPTIMIZER.param_schedulers.weight_decay has auto_lr_scaling, which scales "
                         "learning rates only: remove it")
    schedule = build_param_scheduler(params, int(optim_cfg.num_epochs))
    lowest = min(float(schedule(i / 1000)) for i in range(1000))
    if lowest < 0:
        raise ValueError(f"OPTIMIZER.param_schedulers.weight_decay reaches {lowest:g}; a weight "
                         "decay must stay >= 0")
    return schedule


def set_weight_decay(optimizer: torch.optim.Optimizer, weight_decay: float, *,
                     heads_too: bool = True) -> None:
    """Set the decay of every regularised group (BatchNorm/bias groups without decay stay at 0).

    Args:
        optimizer: built by :func:`build_optimizer` (groups carry ``"regularized"``, ``"head"``).
        weight_decay: the new decay (>= 0).
        heads_too: False leaves the head groups alone (``head_optimizer_params.use_different_wd``).
    """
    for group in optimizer.param_groups:
        if group.get("regularized") and (heads_too or not group.get("head")):
            group["weight_decay"] = float(weight_decay)


def set_learning_rates(optimizer: torch.optim.Optimizer, lr: float,
                       head_lr: Optional[float] = None) -> None:
    """Set every group's LR: ``head_lr`` for head groups (when given), ``lr`` for the others.

    Args:
        optimizer: built by :func:`build_optimizer` (groups carry ``"head"``).
        lr: the trunk's (or everyone's) learning rate.
        head_lr: the heads' learning rate; None gives the heads ``lr`` too.
    """
    for group in optimizer.param_groups:
        group["lr"] = float(head_lr if head_lr is not None and group.get("head") else lr)
