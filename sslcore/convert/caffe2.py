"""Convert caffe2 AlexNet ``.pkl`` blobs (Jigsaw, Colorization, supervised) to sslcore AlexNet trunks.

The AlexNet models of Goyal et al., "Scaling and Benchmarking Self-Supervised Visual Representation
Learning", ICCV 2019 (https://arxiv.org/abs/1905.01235, the fair_self_supervision_benchmark model
zoo) are caffe2 pickles: ``{"blobs": {name: np.ndarray}}`` (or the blob dict itself). Blob names:

- ``conv<k>_w`` (O, I, kh, kw) and ``conv<k>_b`` (O,): conv k = 1..5;
- ``conv<k>_bn_s``, ``_bn_b``, ``_bn_rm``, ``_bn_riv`` (also spelled ``conv<k>_norm_*``): the
  BatchNorm scale, shift, running mean and running variance (``riv`` is read as the variance, as
  VISSL's converter does);
- Jigsaw's siamese towers: ``conv1_s0_w`` is tower 0; towers ``_s1_``..``_s8_`` share its weights
  and are dropped;
- ``fc6_*``, ``fc7_*``, ``fc8_*``, ``pred_*``, ``*_momentum``, ``lr``, ``model_iter``, ``data``: not
  part of the trunk, skipped (and reported).

sslcore's AlexNet (:mod:`sslcore.models.trunks.alexnet`) puts conv k in ``_feature_blocks.<i>`` with
i = 0, 2, 4, 5, 6 for k = 1..5 (pools sit at 1 and 3); inside a block ``0`` is the conv and ``1`` the
BatchNorm. caffe2 models were trained on OpenCV's BGR images and sslcore feeds RGB, so the first
conv's input channels are reversed (``bgr2rgb``; skipped for 1-channel Colorization).

Unpickling runs arbitrary code stored in the file, so :func:`load_caffe2_pickle` refuses unless
``allow_pickle=True`` (``sslcore convert --allow-pickle``).
"""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Union

import numpy as np
import torch

from sslcore.convert.vissl_state import BLOCKS_PREFIX, wrap_trunk_state
from sslcore.models.trunks.alexnet import SPECS, AlexNet

log = logging.getLogger(__name__)

# caffe2 model name in the ICCV'19 model zoo -> sslcore trunk
CAFFE2_MODELS = {"jigsaw": "alexnet_jigsaw", "colorization": "alexnet_colorization",
                 "supervised": "alexnet_bvlc"}
_CONV_BLOCK = {1: 0, 2: 2, 3: 4, 4: 5, 5: 6}
_CONV = re.compile(r"^conv([1-5])_(w|b)$")
_NORM = re.compile(r"^conv([1-5])_?(?:bn|norm)_(s|b|rm|riv)$")
_NORM_PARAM = {"s": "weight", "b": "bias", "rm": "running_mean", "riv": "running_var"}
_SIAMESE = re.compile(r"_s([1-8])_")


def load_caffe2_pickle(path: Union[str, Path], *, allow_pickle: bool = False) -> Dict[str, np.ndarray]:
    """Read the blobs of a caffe2 ``.pkl`` model.

    Args:
        path: the pickle file.
        allow_pickle: must be True: unpickling executes code embedded in the file, so only
            open files from a source you trust.

    Returns:
        ``{blob name: np.ndarray}`` (the ``"blobs"`` entry when the file has one).

    Raises:
        ValueError: if ``allow_pickle`` is False (the message names the risk and the flag), or the
            file does not hold a dict of blobs.
    """
    if not allow_pickle:
        raise ValueError(
            f"{path} is a pickle: loading it can execute arbitrary code stored in the file. "
            "Pass allow_pickle=True (CLI: --allow-pickle) only for files from a source you trust."
        )
    with open(path, "rb") as handle:
        data = pickle.load(handle, encoding="latin1")  # noqa: S301 - guarded by allow_pickle
    if isinstance(data, Mapping) and isinstance(data.get("blobs"), Mapping):
        data = data["blobs"]
    if not isinstance(data, Mapping):
        raise ValueError(f"{path}: expected a dict of caffe2 blobs, got {type(data).__name__}")
    return dict(data)


def _trunk_name(blob: str) -> Union[str, None]:
    conv = _CONV.match(blob)
    if conv is not None:
        index, kind = int(conv.group(1)), conv.group(2)
        return f"{BLOCKS_PREFIX}{_CONV_BLOCK[index]}.0.{'weight' if kind == 'w' else 'bias'}"
    norm = _NORM.match(blob)
    if norm is not None:
        return f"{BLOCKS_PREFIX}{_CONV_BLOCK[int(norm.group(1))]}.1.{_NORM_PARAM[norm.group(2)]}"
    return None


def convert_caffe2_to_vissl(blobs: Mapping[str, Any], *, variant: str,
                            bgr2rgb: bool = True) -> Dict[str, Any]:
    """Map caffe2 AlexNet blobs to an sslcore AlexNet checkpoint, checked against the trunk.

    Args:
        blobs: ``{name: array}`` from :func:`load_caffe2_pickle`.
        variant: the sslcore trunk, e.g. ``"alexnet_jigsaw"``, ``"alexnet_colorization"``,
            ``"alexnet_bvlc"`` (or the model-zoo names of :data:`CAFFE2_MODELS`).
        bgr2rgb: reverse conv1's input channels (caffe2 BGR -> sslcore RGB); ignored for
            1-channel inputs.

    Returns:
        A checkpoint (:func:`sslcore.convert.vissl_state.wrap_trunk_state`) with float32 tensors and
        ``config = {"MODEL": {"TRUNK": {"NAME": variant}}}``; every key of the trunk is present
        (``num_batches_tracked`` as 0; deepcluster's fixed Sobel filter is not part of it).

    Raises:
        ValueError: for an unknown variant, a blob whose shape differs from the trunk's, or trunk
            keys no blob provides (both listed).
    """
    variant = CAFFE2_MODELS.get(variant, variant)
    if variant not in SPECS:
        raise ValueError(f"variant={variant!r}: use one of {sorted(SPECS)} or {sorted(CAFFE2_MODELS)}")
    own = AlexNet(variant=variant).state_dict()
    expected = {k: v.shape for k, v in own.items()
                if not k.endswith("num_batches_tracked") and not k.startswith("sobel.")}
    trunk: Dict[str, torch.Tensor] = {}
    skipped: List[str] = []
    for blob, value in blobs.items():
        if _SIAMESE.search(blob):
            skipped.append(blob)
            continue
        name = _trunk_name(blob.replace("_s0_", "_"))
        if name is None:
            skipped.append(blob)
            continue
        tensor = torch.from_numpy(np.array(value, dtype=np.float32))
        if name not in expected or tuple(tensor.shape) != tuple(expected[name]):
            raise ValueError(f"blob '{blob}' -> '{name}' has shape {tuple(tensor.shape)}; {variant} "
                             f"expects {tuple(expected[name]) if name in expected else 'no such key'}")
        trunk[name] = tensor
    missing = sorted(set(expected) - set(trunk))
    if missing:
        raise ValueError(f"the caffe2 blobs lack {missing} for {variant}: is it the right variant?")
    trunk.update({k: torch.zeros((), dtype=torch.long) for k in own if k.endswith("num_batches_tracked")})
    first = BLOCKS_PREFIX + "0.0.weight"
    if bgr2rgb and trunk[first].shape[1] == 3:
        trunk[first] = trunk[first].flip(1).contiguous()
    log.info("caffe2 -> %s: %d trunk tensors, skipped %s", variant, len(trunk), sorted(skipped))
    return wrap_trunk_state(trunk, config={"MODEL": {"TRUNK": {"NAME": variant}}})
