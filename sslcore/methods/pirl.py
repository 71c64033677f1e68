"""PIRL: an image and its jigsaw patches should map close to the image's memory-bank entry.

- [0] PIRL, Misra & van der Maaten 2020, https://arxiv.org/abs/1912.01991

PIRL is assembled from parts, as in VISSL, and trained by the memory-bank method of
:mod:`sslcore.methods.npid` (``LOSS.name: nce_loss_with_memory``):

- data: ``ImgPilToPatchesAndImage`` makes [image crop, 9 patches] per image;
  ``patch_and_image_collator`` batches them as inputs named ``images`` and ``patches``;
- model: ``MODEL.MULTI_INPUT_HEAD_MAPPING`` runs the trunk on each input and sends the patch
  features through ``mlp -> siamese_concat_view -> mlp`` and the image features through a
  linear projection, giving two embeddings per image: ``[patches, images]``;
- loss: NCE of both embeddings against the memory, ``loss_weights: [0.5, 0.5]`` (the paper's
  lambda = 0.5), and only the image embeddings update the memory
  (``memory_params.update_mem_on_forward: false``, ``update_mem_with_emb_index: 1``).

This module holds what that method needs to feed several named inputs to the model and to check
that the parts agree.
"""

from __future__ import annotations

from typing import Any, Dict, List, Union

import torch
from omegaconf import DictConfig


def model_inputs(batch: Dict[str, Any], input_names: List[str]
                 ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
    """What the model gets from a batch: the first data tensor, or named inputs for PIRL.

    Args:
        batch: a collated batch; collators that make several named inputs (e.g.
            ``patch_and_image_collator``) list the names of ``batch["data"]`` in
            ``batch["input_names"]``.
        input_names: DATA.TRAIN.INPUT_KEY_NAMES, the inputs to pass (e.g. [patches, images]).

    Returns:
        ``batch["data"][0]`` (e.g. (B, C, H, W)) for batches without ``input_names``, else
        ``{name: tensor}`` for every name in ``input_names``.

    Raises:
        ValueError: a name the collator does not produce.
    """
    names = batch.get("input_names")
    if names is None:
        return batch["data"][0]
    by_name = dict(zip(names, batch["data"]))
    missing = [n for n in input_names if n not in by_name]
    if missing:
        raise ValueError(f"DATA.TRAIN.INPUT_KEY_NAMES={list(input_names)} but the collator gives "
                         f"{list(names)}; with patch_and_image_collator set it to [patches, images]")
    return {n: by_name[n] for n in input_names}


def check_multi_input_config(cfg: DictConfig) -> None:
    """Check that a multi-input (PIRL) config's parts agree; no-op for one input.

    Rules: ``LOSS.nce_loss_with_memory.loss_weights`` has one weight per
    MULTI_INPUT_HEAD_MAPPING entry, ``update_mem_with_emb_index`` (when the memory is not updated
    with every output) names one of them, and every mapped input is in DATA.TRAIN.INPUT_KEY_NAMES.

    Raises:
        ValueError: naming the key to fix.
    """
    mapping = list(cfg.MODEL.MULTI_INPUT_HEAD_MAPPING)
    if not mapping:
        return
    section = cfg.LOSS.nce_loss_with_memory
    outputs = len(mapping)
    if len(section.loss_weights) != outputs:
        raise ValueError(f"config.LOSS.nce_loss_with_memory.loss_weights has "
                         f"{len(section.loss_weights)} weights for {outputs} "
                         "MODEL.MULTI_INPUT_HEAD_MAPPING outputs; PIRL uses [0.5, 0.5]")
    index = int(section.update_mem_with_emb_index)
    if not section.memory_params.update_mem_on_forward and not 0 <= index < outputs:
        raise ValueError(f"config.LOSS.nce_loss_with_memory.update_mem_with_emb_index={index} must name "
                         f"one of the {outputs} outputs (PIRL: 1, the images)")
    names = list(cfg.DATA.TRAIN.INPUT_KEY_NAMES)
    missing = [entry[0] for entry in mapping if entry[0] not in names]
    if missing:
        raise ValueError(f"MODEL.MULTI_INPUT_HEAD_MAPPING maps inputs {missing} that are not in "
                         f"config.DATA.TRAIN.INPUT_KEY_NAMES={names}")
