"""Checkpoints in VISSL's layout, written atomically, found again for AUTO_RESUME.

Layout of one checkpoint file (``torch.save`` of plain containers, loadable with
``torch.load(weights_only=True)``)::

    {
      "phase_idx": int,            # last finished (or current, for iteration checkpoints) phase
      "iteration": int,            # optimizer updates done so far
      "train_phase_idx": int,
      "phase_complete": bool,      # False for a checkpoint taken inside a phase
      "iteration_in_phase": int,   # updates done inside phase_idx (== iterations per phase if complete)
      "type": "consolidated",
      "config": {...},             # the resolved config, as plain data
      "classy_state_dict": {
        "base_model": {"model": {"trunk": {"_feature_blocks.conv1.weight": ...}, "heads": {"0.clf...": ...}},
                       "meta": {}},
        "optimizer": torch optimizer state_dict, "phase_idx", "train_phase_idx", "num_updates",
        "loss": method state (queues, memory banks, ...), "amp": GradScaler state or None,
      },
    }

Files in CHECKPOINT.DIR: ``model_phase{N}.torch`` every CHECKPOINT_FREQUENCY phases,
``model_iteration{N}.torch`` every CHECKPOINT_ITER_FREQUENCY updates,
``model_final_checkpoint_phase{N}.torch`` at the end, and ``checkpoint.torch``, a symlink to the
newest one (replaced atomically). Every file is written to a temporary name and renamed, so a run
killed mid-write never leaves a truncated checkpoint behind.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from torch import nn

from sslcore.config.schema import Key, declare

log = logging.getLogger(__name__)

declare("CHECKPOINT", {
    "DIR": Key("./checkpoints", str, "where checkpoints, the resolved config and logs are written"),
    "AUTO_RESUME": Key(True, bool, "resume from DIR/checkpoint.torch when it exists"),
    "CHECKPOINT_FREQUENCY": Key(1, int, "save every N phases (epochs)"),
    "CHECKPOINT_ITER_FREQUENCY": Key(-1, int, "also save every N iterations; -1 disables"),
    "OVERWRITE_EXISTING": Key(False, bool, "start from scratch even if DIR holds a checkpoint"),
})
declare("MODEL.WEIGHTS_INIT", {
    "PARAMS_FILE": Key("", str, "checkpoint to initialise the model from ('' = random init)"),
    "STATE_DICT_KEY_NAME": Key("classy_state_dict", str,
                               "key holding the weights: 'classy_state_dict' for VISSL/sslcore "
                               "checkpoints, '' for a flat state dict, or e.g. 'model'/'state_dict'"),
    "SKIP_LAYERS": Key(["num_batches_tracked"], list, "parameter names containing any of these are not loaded"),
    "REMOVE_PREFIX": Key("", str, "prefix removed from every key of the file before matching"),
    "APPEND_PREFIX": Key("", str, "prefix added to every key of the file before matching"),
})

LATEST = "checkpoint.torch"


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, then rename onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def point_latest(ckpt_dir: Path, target: Path) -> None:
    """Atomically replace the ``checkpoint.torch`` symlink in ``ckpt_dir`` by one to ``target``."""
    tmp = ckpt_dir / f".{LATEST}.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, ckpt_dir / LATEST)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DistributedDataParallel or similar wrappers."""
    return getattr(model, "module", model)


def model_state(model: nn.Module) -> Dict[str, Any]:
    """VISSL's ``base_model`` entry: trunk and heads state dicts without their prefixes."""
    state = unwrap(model).state_dict()
    trunk = {k[len("trunk."):]: v for k, v in state.items() if k.startswith("trunk.")}
    heads = {k[len("heads."):]: v for k, v in state.items() if k.startswith("heads.")}
    return {"model": {"trunk": trunk, "heads": heads}, "meta": {}}


def flat_model_state(base_model: Dict[str, Any]) -> Dict[str, Any]:
    """Inverse of :func:`model_state`: ``{"model": {"trunk", "heads"}}`` to ``trunk.*``/``heads.*`` keys."""
    model = base_model["model"]
    flat = {f"trunk.{k}": v for k, v in model.get("trunk", {}).items()}
    flat.update({f"heads.{k}": v for k, v in model.get("heads", {}).items()})
    return flat


def save_checkpoint(path: Path, *, model: nn.Module, optimizer: torch.optim.Optimizer,
                    method_state: Dict[str, Any], phase_idx: int, iteration: int,
                    phase_complete: bool, iteration_in_phase: int, config: Dict[str, Any],
                    scaler_state: Optional[Dict[str, Any]] = None) -> Path:
    """Write one checkpoint atomically and point ``checkpoint.torch`` at it.

    Returns:
        ``path``.
    """
    payload = {
        "phase_idx": phase_idx,
        "iteration": iteration,
        "train_phase_idx": phase_idx,
        "phase_complete": phase_complete,
        "iteration_in_phase": iteration_in_phase,
        "type": "consolidated",
        "config": config,
        "classy_state_dict": {
            "base_model": model_state(model),
            "optimizer": optimizer.state_dict(),
            "phase_idx": phase_idx,
            "train_phase_idx": phase_idx,
            "num_updates": iteration,
            "loss": method_state,
            "amp": scaler_state,
        },
    }
    atomic_torch_save(payload, path)
    point_latest(path.parent, path)
    log.info("saved checkpoint %s (phase %d, iteration %d)", path, phase_idx, iteration)
    return path


def find_latest_checkpoint(ckpt_dir: Path) -> Optional[Path]:
    """The file ``checkpoint.torch`` points at, or None when there is none (or it dangles)."""
    latest = ckpt_dir / LATEST
    if not latest.exists():
        return None
    return latest.resolve()


def load_checkpoint(path: Path) -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary unpickling).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is not a checkpoint torch can read safely.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable files
        raise ValueError(
            f"cannot read checkpoint {path} with weights_only=True: {exc}. "
            "Formats that need pickle (caffe2 .pkl) must go through `sslcore convert`."
        ) from exc


def _extract_state(checkpoint: Dict[str, Any], key_name: str) -> Dict[str, Any]:
    if not key_name:
        return checkpoint
    if key_name not in checkpoint:
        raise ValueError(
            f"MODEL.WEIGHTS_INIT.STATE_DICT_KEY_NAME='{key_name}' is not in the file; "
            f"top-level keys are: {', '.join(map(str, checkpoint))}"
        )
    state = checkpoint[key_name]
    if key_name == "classy_state_dict":
        return flat_model_state(state["base_model"])
    return state


def init_model_from_weights(model: nn.Module, params_file: str, *,
                            state_dict_key_name: str = "classy_state_dict",
                            skip_layers: Optional[List[str]] = None, remove_prefix: str = "",
                            append_prefix: str = "") -> Dict[str, List[str]]:
    """Load weights into ``model`` following VISSL's MODEL.WEIGHTS_INIT semantics.

    Keys are matched by name after REMOVE_PREFIX then APPEND_PREFIX; keys containing a
    SKIP_LAYERS entry are skipped; shapes must agree. ``params_file`` may be an ``s3://`` URI.
    ``skip_layers=None`` means the config default, ``["num_batches_tracked"]``; pass ``[]`` to
    skip nothing. Files in other formats go through ``sslcore convert`` first.

    Returns:
        ``{"loaded": [...], "skipped": [...], "missing": [...], "unexpected": [...]}`` (logged).

    Raises:
        ValueError: a shape mismatch, or nothing at all matched (names the first keys on both sides).
    """
    from sslcore.storage import cache_dir, copy_to_local

    local = copy_to_local(params_file, cache_dir("weights"))  # s3:// files are downloaded first
    state = _extract_state(load_checkpoint(local), state_dict_key_name)
    own = unwrap(model).state_dict()
    skip = ["num_batches_tracked"] if skip_layers is None else list(skip_layers)
    renamed = {}
    for key, value in state.items():
        if remove_prefix and key.startswith(remove_prefix):
            key = key[len(remove_prefix):]
        renamed[append_prefix + key] = value
    summary: Dict[str, List[str]] = {"loaded": [], "skipped": [], "missing": [], "unexpected": []}
    to_load = {}
    for key, value in renamed.items():
        if any(s and s in key for s in skip):
            summary["skipped"].append(key)
        elif key not in own:
            summary["unexpected"].append(key)
        elif own[key].shape != value.shape:
            raise ValueError(f"{params_file}: '{key}' has shape {tuple(value.shape)}, "
                             f"the model expects {tuple(own[key].shape)}")
        else:
            to_load[key] = value
            summary["loaded"].append(key)
    summary["missing"] = [k for k in own if k not in to_load and not any(s and s in k for s in skip)]
    if not to_load:
        raise ValueError(
            f"{params_file}: no key matched the model. File keys start {list(renamed)[:3]}, model "
            f"keys start {list(own)[:3]}; set MODEL.WEIGHTS_INIT.REMOVE_PREFIX/APPEND_PREFIX"
        )
    unwrap(model).load_state_dict(to_load, strict=False)
    log.info("weights from %s: %d loaded, %d skipped, %d missing, %d unexpected", params_file,
             len(summary["loaded"]), len(summary["skipped"]), len(summary["missing"]),
             len(summary["unexpected"]))
    return summary
