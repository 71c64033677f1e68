"""Convert a checkpoint file from one format to another (``sslcore convert`` and the convert component).

Every conversion passes through an sslcore/VISSL checkpoint: the source file is read into one
(``torchvision``, ``timm``, ``classy_vision``, ``caffe2``, or ``sslcore`` itself), then written in
the target format. Which pairs work is :data:`SUPPORTED_PAIRS`: every ResNe(X)t format to every
other, timm ViTs and caffe2 AlexNets to ``sslcore`` only.

Files are read with ``torch.load(weights_only=True)`` (no code runs while reading), except caffe2
pickles, which need ``allow_pickle=True``. Outputs: ``torch.save`` files for sslcore (a checkpoint
loadable through ``MODEL.WEIGHTS_INIT``), torchvision (a ``ResNet`` state dict without ``fc``) and
ClassyVision; a pickle ``.pkl`` for detectron2.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch

from sslcore.convert.caffe2 import convert_caffe2_to_vissl, load_caffe2_pickle
from sslcore.convert.classy_vision import convert_classy_vision_to_vissl, convert_vissl_to_classy_vision
from sslcore.convert.detectron2 import convert_vissl_to_detectron2, save_detectron2_checkpoint
from sslcore.convert.timm import convert_timm_to_vissl
from sslcore.convert.torchvision import convert_torchvision_to_vissl, convert_vissl_to_torchvision
from sslcore.convert.vissl_state import extract_trunk_state, wrap_trunk_state

log = logging.getLogger(__name__)

SOURCES = ("sslcore", "torchvision", "timm", "classy_vision", "caffe2")
TARGETS = ("sslcore", "torchvision", "detectron2", "classy_vision")
_RESNET_FORMATS = ("sslcore", "torchvision", "timm", "classy_vision")
SUPPORTED_PAIRS: Tuple[Tuple[str, str], ...] = tuple(
    [(s, t) for s in _RESNET_FORMATS for t in TARGETS if s != t or s == "sslcore"] + [("caffe2", "sslcore")]
)


def _to_sslcore(source: str, path: Path, *, allow_pickle: bool, caffe2_variant: str, bgr2rgb: bool,
                num_heads: Optional[int]) -> Dict[str, Any]:
    if source == "caffe2":
        blobs = load_caffe2_pickle(path, allow_pickle=allow_pickle)
        return convert_caffe2_to_vissl(blobs, variant=caffe2_variant, bgr2rgb=bgr2rgb)
    from sslcore.engine.checkpoint import load_checkpoint  # weights_only=True, clear errors

    state = load_checkpoint(path)
    if source == "torchvision":
        return convert_torchvision_to_vissl(state)
    if source == "timm":
        return convert_timm_to_vissl(state, num_heads=num_heads)
    if source == "classy_vision":
        return convert_classy_vision_to_vissl(state)
    if "classy_state_dict" in state:  # keep heads and config, drop optimizer and loss state
        heads = state["classy_state_dict"]["base_model"]["model"].get("heads", {})
        return wrap_trunk_state(extract_trunk_state(state), heads=heads, config=state.get("config"))
    return wrap_trunk_state(extract_trunk_state(state), heads={k[len("heads."):]: v for k, v in state.items()
                                                               if k.startswith("heads.")})


def _write(target: str, checkpoint: Mapping[str, Any], path: Path) -> Dict[str, Any]:
    """Write ``checkpoint`` in the target format; returns the written ``{key: array}`` mapping."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if target == "detectron2":
        converted = convert_vissl_to_detectron2(checkpoint)
        save_detectron2_checkpoint(converted, path)
        return converted["model"]
    if target == "torchvision":
        out = convert_vissl_to_torchvision(checkpoint)
        torch.save(out, path)
        return out
    if target == "classy_vision":
        out = convert_vissl_to_classy_vision(checkpoint)
        torch.save(out, path)
        return out["classy_state_dict"]["base_model"]["model"]["trunk"]
    torch.save(dict(checkpoint), path)
    model = checkpoint["classy_state_dict"]["base_model"]["model"]
    return {**{f"trunk.{k}": v for k, v in model["trunk"].items()},
            **{f"heads.{k}": v for k, v in model.get("heads", {}).items()}}


def _numel(value: Any) -> int:
    return value.numel() if torch.is_tensor(value) else int(np.asarray(value).size)


def convert_checkpoint_file(input_path: Union[str, Path], output_path: Union[str, Path], *,
                            source: str = "sslcore", target: str = "torchvision",
                            allow_pickle: bool = False, caffe2_variant: str = "alexnet_bvlc",
                            bgr2rgb: bool = True, num_heads: Optional[int] = None) -> Dict[str, Any]:
    """Convert one checkpoint file from ``source`` to ``target`` format.

    Args:
        input_path: the file to read (``.torch``/``.pth``; caffe2 ``.pkl``).
        output_path: the file to write; must end in ``.pkl`` for detectron2.
        source: one of :data:`SOURCES`.
        target: one of :data:`TARGETS`; (source, target) must be in :data:`SUPPORTED_PAIRS`.
        allow_pickle: let a caffe2 pickle be unpickled (it can run arbitrary code).
        caffe2_variant: sslcore AlexNet of a caffe2 file (``alexnet_jigsaw``,
            ``alexnet_colorization``, ``alexnet_bvlc``, or jigsaw / colorization / supervised).
        bgr2rgb: reverse a caffe2 model's first conv input channels (BGR -> RGB).
        num_heads: attention heads of a timm ViT state dict (not stored in the weights).

    Returns:
        Summary ``{"source", "target", "input", "output", "num_tensors", "num_elements",
        "first_keys"}`` (also logged); ``num_elements`` counts the written array entries.

    Raises:
        ValueError: an unsupported pair (the message lists the supported ones), a detectron2
            output not named ``*.pkl``, a caffe2 file without ``allow_pickle``, or a file whose
            contents do not fit the source format.
        FileNotFoundError: if ``input_path`` does not exist.
    """
    if (source, target) not in SUPPORTED_PAIRS:
        pairs = ", ".join(f"{s}->{t}" for s, t in SUPPORTED_PAIRS)
        raise ValueError(f"converting {source} -> {target} is not supported; supported pairs: {pairs}")
    input_path, output_path = Path(input_path), Path(output_path)
    if target == "detectron2" and output_path.suffix != ".pkl":
        raise ValueError(f"output {output_path}: detectron2 reads converted weights from a '.pkl' "
                         "file; name the output *.pkl")
    if not input_path.exists():
        raise FileNotFoundError(f"input checkpoint {input_path} does not exist")
    checkpoint = _to_sslcore(source, input_path, allow_pickle=allow_pickle, caffe2_variant=caffe2_variant,
                             bgr2rgb=bgr2rgb, num_heads=num_heads)
    written = _write(target, checkpoint, output_path)
    summary = {"source": source, "target": target, "input": str(input_path), "output": str(output_path),
               "num_tensors": len(written),
               "num_elements": int(sum(_numel(v) for v in written.values())),
               "first_keys": list(written)[:3]}
    log.info("converted %s (%s) -> %s (%s): %d tensors, %d elements", input_path, source, output_path,
             target, summary["num_tensors"], summary["num_elements"])
    return summary
