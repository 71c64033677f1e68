"""VISSL's ``MODEL.TEMP_FROZEN_PARAMS_ITER_MAP``: keep some parameters fixed for the first iterations.

The engine applies it to every method, as VISSL's train step does: after the backward pass (and
the ``on_backward`` hooks) the gradients of the listed parameters are dropped while the iteration
is below their threshold, so neither the gradient, the momentum nor the weight decay moves them.
SwAV and DINO freeze their prototypes this way during the first epoch (313 iterations of ImageNet
at batch 4096).

- [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882 (App. A: "freeze the prototypes
  during the first epoch")
- [1] DINO, Caron et al. 2021, https://arxiv.org/abs/2104.14294 (the last layer is frozen
  during the first epoch)
"""

from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from sslcore.config.schema import Key, declare
from sslcore.engine.checkpoint import unwrap
from sslcore.registry import close_matches

declare("MODEL", {
    "TEMP_FROZEN_PARAMS_ITER_MAP": Key([], list, "parameters kept fixed for the first iterations: "
                                       "a list of [parameter name, N]; the parameter's gradient is "
                                       "dropped while iteration < N (names as in the model's "
                                       "state dict, a leading 'module.' is ignored)"),
})


def _strip(name: str) -> str:
    return name[len("module."):] if name.startswith("module.") else name


class TempFrozenParams:
    """Drop the gradients of named parameters while ``iteration`` is below their threshold.

    Args:
        iter_map: ``[(parameter name, iterations), ...]``; names may carry DDP's ``module.``.
        model: the (possibly DDP-wrapped) model whose names are checked.

    Raises:
        ValueError: an entry that is not [name, int >= 0], or a name the model does not have
            (the message lists the closest names).

    Example:
        >>> frozen = TempFrozenParams([("heads.0.prototypes0.weight", 313)], model)
        >>> frozen.apply(model, iteration=0)   # prototypes get no update at step 0
    """

    def __init__(self, iter_map: Sequence[Tuple[str, int]], model: nn.Module) -> None:
        names = dict(unwrap(model).named_parameters())
        self.entries: List[Tuple[str, int]] = []
        for i, entry in enumerate(iter_map):
            where = f"config.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP[{i}]"
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and entry[1] >= 0):
                raise ValueError(f"{where} = {entry!r}: write [parameter name, iterations], e.g. "
                                 "['heads.0.prototypes0.weight', 313]")
            name = _strip(entry[0])
            if name not in names:
                hint = close_matches(name, list(names), n=3)
                raise ValueError(f"{where}: the model has no parameter '{entry[0]}'"
                                 + (f"; did you mean {', '.join(hint)}?" if hint else ""))
            self.entries.append((name, int(entry[1])))

    @classmethod
    def from_config(cls, iter_map: Any, model: nn.Module) -> "TempFrozenParams":
        """Build from ``MODEL.TEMP_FROZEN_PARAMS_ITER_MAP`` (OmegaConf list accepted)."""
        if isinstance(iter_map, (ListConfig, DictConfig)):
            iter_map = OmegaConf.to_container(iter_map, resolve=True)
        return cls([tuple(e) if isinstance(e, list) else e for e in (iter_map or [])], model)

    def frozen_at(self, iteration: int) -> List[str]:
        """Names of the parameters frozen at ``iteration``."""
        return [name for name, until in self.entries if iteration < until]

    def apply(self, model: nn.Module, iteration: int) -> None:
        """Set ``grad = None`` on the parameters frozen at ``iteration`` (call after backward).

        Every rank applies the same rule, so DDP replicas stay identical.
        """
        frozen = self.frozen_at(iteration)
        if not frozen:
            return
        params: Dict[str, nn.Parameter] = dict(unwrap(model).named_parameters())
        for name in frozen:
            params[name].grad = None
