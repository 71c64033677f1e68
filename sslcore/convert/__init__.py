"""Checkpoint conversion between sslcore/VISSL checkpoints and other frameworks' formats.

Modules (one format each):

- :mod:`sslcore.convert.vissl_state`: the VISSL/sslcore checkpoint container
  (``classy_state_dict -> base_model -> model -> {trunk, heads}``): find the trunk, wrap a trunk.
- :mod:`sslcore.convert.torchvision`: ResNe(X)t trunk <-> torchvision ``ResNet`` state dicts;
  :func:`~sslcore.convert.torchvision.build_torchvision_resnet` builds a torchvision ``ResNet``
  matching thin / small-stem trunks; settings read from a checkpoint's saved config.
- :mod:`sslcore.convert.detectron2`: ResNe(X)t trunk -> detectron2 backbone ``.pkl``.
- :mod:`sslcore.convert.classy_vision`: ResNe(X)t trunk <-> ClassyVision ``resnext``.
- :mod:`sslcore.convert.timm`: timm ResNet (torchvision names) and ViT -> sslcore.
- :mod:`sslcore.convert.caffe2`: caffe2 AlexNet ``.pkl`` (Jigsaw, Colorization, supervised) ->
  sslcore AlexNet trunks; unpickling only with ``allow_pickle=True``.
- :mod:`sslcore.convert.files`: file-to-file conversion (``sslcore convert``, the convert component).

Supported pairs (``sslcore convert --from SOURCE --to TARGET``, :data:`SUPPORTED_PAIRS`):

============== ==========================================================
source         targets
============== ==========================================================
sslcore        sslcore (weights only), torchvision, detectron2, classy_vision
torchvision    sslcore, detectron2, classy_vision
timm           sslcore (ResNet and ViT); torchvision, detectron2, classy_vision (ResNet)
classy_vision  sslcore, torchvision, detectron2
caffe2         sslcore (AlexNet variants)
============== ==========================================================

Only the trunk is converted between frameworks (heads are kept for sslcore -> sslcore).
"""

from sslcore.convert.files import SOURCES, SUPPORTED_PAIRS, TARGETS, convert_checkpoint_file

__all__ = ["SOURCES", "SUPPORTED_PAIRS", "TARGETS", "convert_checkpoint_file"]
