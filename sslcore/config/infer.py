"""The one inference step: values derived from the user config and the launch environment.

:func:`infer_config` is pure: it takes the composed config and facts about the launch (world
size, processes per node, whether CUDA exists), returns a new config and the list of changes.
The engine logs that list and saves the resulting config next to the run, so the effective config
is always on disk and every derived value can be traced to its rule.
"""

from __future__ import annotations

import copy
from typing import Any, Dict, List, Tuple

from omegaconf import DictConfig, OmegaConf

from sslcore.optim.schedulers import scale_lr_schedule


def _get(tree: Dict[str, Any], path: str) -> Any:
    node: Any = tree
    for part in path.split("."):
        node = node[part]
    return node


def _set(tree: Dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value


def infer_config(cfg: DictConfig, *, world_size: int, local_world_size: int,
                 cuda_available: bool, engine_name: str = "train") -> Tuple[DictConfig, List[str]]:
    """Fill in derived values.

    Rules, in order:
      1. MACHINE.DEVICE falls back to "cpu" without CUDA; DISTRIBUTED.BACKEND is gloo on CPU.
      2. DISTRIBUTED.NUM_NODES / NUM_PROC_PER_NODE describe the processes actually launched
         (torchrun's WORLD_SIZE and LOCAL_WORLD_SIZE).
      3. The LR schedules (``lr`` and, when set, ``lr_head``) are scaled for the global batch
         size (``auto_lr_scaling``), so the saved config holds the LRs the run uses.
      4. For training only: the method's own rules (e.g. the SimCLR loss's effective batch size).

    Args:
        cfg: the composed config (not modified).
        world_size: number of processes in the run.
        local_world_size: processes on this node.
        cuda_available: whether CUDA can be used.
        engine_name: "train" or "extract_features" (no method rules when not training).

    Returns:
        ``(resolved_config, changes)`` where each change reads ``"KEY: old -> new (rule)"``.

    Raises:
        ValueError: inconsistent launch facts (world size not a multiple of the local size).
    """
    if world_size < 1 or local_world_size < 1 or world_size % local_world_size:
        raise ValueError(f"world size {world_size} must be a positive multiple of the processes "
                         f"per node {local_world_size}")
    tree = OmegaConf.to_container(cfg, resolve=True)
    new: Dict[str, Any] = {}
    if tree["MACHINE"]["DEVICE"] == "gpu" and not cuda_available:
        new["MACHINE.DEVICE"] = ("cpu", "no CUDA device")
    device = new.get("MACHINE.DEVICE", (tree["MACHINE"]["DEVICE"],))[0]
    if device == "cpu" and tree["DISTRIBUTED"]["BACKEND"] != "gloo":
        new["DISTRIBUTED.BACKEND"] = ("gloo", "CPU processes use gloo")
    new["DISTRIBUTED.NUM_NODES"] = (world_size // local_world_size, "launched processes")
    new["DISTRIBUTED.NUM_PROC_PER_NODE"] = (local_world_size, "launched processes")
    global_bs = int(tree["DATA"]["TRAIN"]["BATCHSIZE_PER_REPLICA"]) * world_size
    lr = tree["OPTIMIZER"]["param_schedulers"]["lr"]
    new["OPTIMIZER.param_schedulers.lr"] = (scale_lr_schedule(lr, global_bs),
                                            f"auto_lr_scaling for global batch {global_bs}")
    lr_head = tree["OPTIMIZER"]["param_schedulers"].get("lr_head") or {}
    if lr_head:
        new["OPTIMIZER.param_schedulers.lr_head"] = (scale_lr_schedule(lr_head, global_bs),
                                                     f"auto_lr_scaling for global batch {global_bs}")
    _apply(tree, new)
    method_rules = _method_rules(cfg_from(tree), world_size) if engine_name == "train" else {}
    _apply(tree, method_rules)
    changes = []
    old = OmegaConf.to_container(cfg, resolve=True)
    for path, (value, why) in {**new, **method_rules}.items():
        changes += [f"{p}: {b!r} -> {a!r} ({why})" for p, b, a in _diff(path, _get(old, path), value)]
    return cfg_from(tree), changes


def _diff(path: str, before: Any, after: Any) -> List[Tuple[str, Any, Any]]:
    """Leaf-level differences between two values (recursing into dicts and equal-length lists)."""
    if isinstance(before, dict) and isinstance(after, dict):
        return [d for k in after for d in _diff(f"{path}.{k}", before.get(k), after[k])]
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [d for i, (b, a) in enumerate(zip(before, after)) for d in _diff(f"{path}.{i}", b, a)]
    return [] if before == after else [(path, before, after)]


def cfg_from(tree: Dict[str, Any]) -> DictConfig:
    """A DictConfig from a plain tree (copied)."""
    return OmegaConf.create(copy.deepcopy(tree))


def _apply(tree: Dict[str, Any], changes: Dict[str, Tuple[Any, str]]) -> None:
    for path, (value, _) in changes.items():
        _set(tree, path, value)


def _method_rules(cfg: DictConfig, world_size: int) -> Dict[str, Tuple[Any, str]]:
    from sslcore.methods import get_method_class

    method = get_method_class(str(cfg.LOSS.name))
    return {k: (v, f"{method.__name__} rule") for k, v in
            method.infer_config(cfg, world_size=world_size).items()}
