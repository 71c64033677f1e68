"""Optimizers from ``OPTIMIZER``: SGD with VISSL's parameter groups (no weight decay on BN/bias).

The LR is set every update from the schedule (:mod:`sslcore.optim.schedulers`), so the optimizer
is built with the schedule's value at ``where = 0``.
"""

from __future__ import annotations

from typing import Any, Dict, List

import torch
from torch import nn

from sslcore.config.schema import Key, declare

declare("OPTIMIZER", {
    "name": Key("sgd", str, "optimizer: 'sgd' (torch.optim.SGD)", choices=("sgd",)),
    "num_epochs": Key(10, int, "training length in epochs (VISSL: phases)"),
    "weight_decay": Key(1e-4, float, "L2 weight decay on regularised parameters"),
    "momentum": Key(0.9, float, "SGD momentum"),
    "nesterov": Key(False, bool, "Nesterov momentum"),
    "regularize_bn": Key(False, bool, "apply weight decay to normalisation-layer parameters"),
    "regularize_bias": Key(True, bool, "apply weight decay to biases"),
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
    },
})

_NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def split_param_groups(model: nn.Module, *, weight_decay: float, regularize_bn: bool,
                       regularize_bias: bool) -> List[Dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group (VISSL's rules).

    Returns:
        Param groups for torch optimizers; empty groups are dropped.
    """
    decay, no_decay = [], []
    for module in model.modules():
        is_norm = isinstance(module, _NORM_TYPES)
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if (is_norm and not regularize_bn) or (name == "bias" and not regularize_bias):
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def build_optimizer(optim_cfg: Any, model: nn.Module, initial_lr: float) -> torch.optim.Optimizer:
    """Build the optimizer from ``cfg.OPTIMIZER``.

    Raises:
        ValueError: if the model has no trainable parameter.
    """
    groups = split_param_groups(
        model, weight_decay=float(optim_cfg.weight_decay),
        regularize_bn=bool(optim_cfg.regularize_bn), regularize_bias=bool(optim_cfg.regularize_bias),
    )
    if not groups:
        raise ValueError("the model has no trainable parameters: check MODEL.FEATURE_EVAL_SETTINGS")
    return torch.optim.SGD(groups, lr=initial_lr, momentum=float(optim_cfg.momentum),
                           nesterov=bool(optim_cfg.nesterov))
