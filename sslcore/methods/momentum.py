"""Momentum (EMA) encoders: the key encoder of MoCo, the target network of BYOL, DINO's teacher.

One mechanism for every method that keeps a slowly moving copy of the model:

    teacher = MomentumEncoder(model)            # frozen deep copy, same device
    ...after each optimizer step:
    teacher.update(model, momentum)             # t <- m * t + (1 - m) * s, buffers copied

- [0] MoCo, He et al. 2020, https://arxiv.org/abs/1911.05722 (momentum 0.999, constant)
- [1] BYOL, Grill et al. 2020, https://arxiv.org/abs/2006.07733 (cosine schedule 0.996 -> 1)
- [2] DINO, Caron et al. 2021, https://arxiv.org/abs/2104.14294 (same cosine schedule)
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, List

import torch
from torch import nn

from sslcore.engine.checkpoint import unwrap


def cosine_momentum(base: float, where: float, final: float = 1.0) -> float:
    """BYOL's momentum schedule: ``final - (final - base) * (cos(pi * where) + 1) / 2``.

    Args:
        base: momentum at the start of training (e.g. 0.996).
        where: fraction of training done, in [0, 1].
        final: momentum at the end (1.0 in BYOL and DINO).

    Raises:
        ValueError: if ``where`` is outside [0, 1] or ``base`` outside [0, 1].
    """
    if not 0.0 <= where <= 1.0:
        raise ValueError(f"where must be in [0, 1], got {where}")
    if not 0.0 <= base <= 1.0:
        raise ValueError(f"momentum base must be in [0, 1], got {base}")
    return final - (final - base) * (math.cos(math.pi * where) + 1.0) / 2.0


class MomentumEncoder(nn.Module):
    """A frozen copy of a model whose weights follow the model by exponential moving average.

    The copy never receives gradients and is never wrapped in DDP: every rank applies the same
    update to the same (already all-reduced) weights, so the copies stay identical across ranks.
    Buffers (BatchNorm running statistics) are copied, not averaged, as in MoCo's code.

    Args:
        model: the online model (DDP-wrapped or not); it is deep-copied once at construction.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder = copy.deepcopy(unwrap(model))
        for p in self.encoder.parameters():
            p.requires_grad_(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the momentum encoder without building a graph."""
        with torch.no_grad():
            return self.encoder(*args, **kwargs)

    @torch.no_grad()
    def update(self, model: nn.Module, momentum: float) -> None:
        """``t <- momentum * t + (1 - momentum) * s`` for every parameter; buffers are copied.

        Args:
            model: the online model (same architecture as at construction).
            momentum: EMA coefficient in [0, 1]; 1 keeps the encoder unchanged.

        Raises:
            ValueError: if ``momentum`` is outside [0, 1] or the architectures differ.
        """
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        src = unwrap(model)
        t_params: List[torch.Tensor] = list(self.encoder.parameters())
        s_params: List[torch.Tensor] = list(src.parameters())
        if len(t_params) != len(s_params):
            raise ValueError("momentum encoder and model have different parameters")
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, [p.detach() for p in s_params], alpha=1.0 - momentum)
        for t_buf, s_buf in zip(self.encoder.buffers(), src.buffers()):
            t_buf.copy_(s_buf)

    def state_dict_for_checkpoint(self) -> Dict[str, torch.Tensor]:
        """The encoder's weights, for the method's checkpoint state."""
        return self.encoder.state_dict()

    def load_from_checkpoint(self, state: Dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict_for_checkpoint` returned (strict)."""
        self.encoder.load_state_dict(state)
