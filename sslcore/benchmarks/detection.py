"""Object detection transfer benchmark: Faster R-CNN on a converted sslcore trunk vs random init.

Protocol (design.md section 9): [0] Faster R-CNN (Ren et al. 2015, https://arxiv.org/abs/1506.01497)
with [1] FPN (Lin et al. 2017, https://arxiv.org/abs/1612.03144), torchvision's implementation,
fine-tuned as in [2] MoCo (He et al. 2020, https://arxiv.org/abs/1911.05722, appendix A.3; the
protocol VISSL's model zoo follows): every layer trains and batch norm is trained (SyncBN there,
BatchNorm with batch statistics on one process here), so pretrained and random-init trunks train
alike. torchvision's recipe for supervised weights (FrozenBatchNorm2d, layer2-4 trained) is
``frozen_bn=True, trainable_layers=3``.

Model: the trunk is converted to a torchvision ResNet (:mod:`sslcore.convert.torchvision`, strict
load); an FPN of ``fpn_channels`` (32) channels sits on layer2-4 plus a max-pool level; anchors
``anchor_sizes`` (16, 28, 48, 80 px, one per level) at ratios 0.5/1/2. layer1 is left out: with
the 'small' stem it runs at stride 1, where an FPN level costs most of the compute and adds little
for the scenes' 10-56 px items. Data: a VOC2007 layout (``trainval`` / ``test``), normally the
Fashion-MNIST scenes (:func:`sslcore.data.scenes.build_fashion_mnist_scenes`, 96 px canvases),
kept at native size (``min_size = max_size = 96``), flipped horizontally with p = 0.5;
difficult objects are trained on (as detectron2 does) and ignored in evaluation.

Schedule (torchvision's detection reference, scaled down): SGD momentum 0.9, weight decay 1e-4,
linear warmup from ``lr * 0.001`` over min(100, iterations / 5) updates, x0.1 at 2/3 and 8/9 of
``iterations``. Defaults (thin ResNet-18 x0.125, batch 8, lr 0.02, 300 iterations) take minutes on
a CPU; a GPU recipe on real VOC07+12 with a ResNet-50 uses ``min_size=800, max_size=1333``, batch
16, lr 0.02, 24k iterations, steps at 18k and 22k (MoCo's detectron2 setting).

Outputs in ``out_dir``: ``metrics.json`` (``AP50`` = VOC07 11-point AP at IoU 0.5 averaged over
classes, ``mAP`` = COCO AP@[.5:.95], ``AP75``; in %), ``per_class_ap50.json``, ``examples.json``
(test images with predicted and true boxes, for the report) and ``train_log.json`` (losses, lr).
Where detectron2 is importable, :mod:`sslcore.benchmarks.detection_detectron2` runs the same
protocol through it from the detectron2-format checkpoint.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from sslcore.benchmarks.detection_eval import image_tensor, predict, write_detection_results
from sslcore.benchmarks.features import PathLike

log = logging.getLogger(__name__)

# Fashion-MNIST pixel statistics (as in the pretraining recipes' Normalize transform), used when
# the checkpoint's recipe has no Normalize step and there is no checkpoint.
FASHION_MNIST_MEAN = (0.286, 0.286, 0.286)
FASHION_MNIST_STD = (0.353, 0.353, 0.353)
DEFAULT_TRUNK = {"depth": 18, "width_multiplier": 0.125, "groups": 1, "width_per_group": 64, "stem": "small"}
DEFAULT_ANCHOR_SIZES = (16, 28, 48, 80)
RETURNED_LAYERS = ("layer2", "layer3", "layer4")


def normalization_from_checkpoint(checkpoint: Optional[Mapping[str, Any]]) -> Tuple[List[float], List[float]]:
    """Per-channel (mean, std) the trunk saw in pretraining: its recipe's last ``Normalize``.

    Args:
        checkpoint: a loaded checkpoint with ``config.DATA.TRAIN.TRANSFORMS``, or None.

    Returns:
        ``(mean, std)`` lists of 3 floats applied to [0, 1] RGB images: the recipe's values;
        (0, 0, 0) / (1, 1, 1) when the recipe stops at ``ToTensor``; Fashion-MNIST's statistics
        when there is no checkpoint (random init).
    """
    if checkpoint is None:
        return list(FASHION_MNIST_MEAN), list(FASHION_MNIST_STD)
    transforms = (((checkpoint.get("config") or {}).get("DATA") or {}).get("TRAIN") or {}).get("TRANSFORMS") or []
    found = [t for t in transforms if isinstance(t, Mapping) and t.get("name") == "Normalize"]
    if not found:
        return [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    mean, std = list(found[-1]["mean"]), list(found[-1]["std"])
    return [float(m) for m in (mean * 3)[:3]], [float(s) for s in (std * 3)[:3]]


def _stage_channels(resnet: nn.Module, layer: str) -> int:
    convs = [m for m in getattr(resnet, layer)[-1].modules() if isinstance(m, nn.Conv2d)]
    return int(convs[-1].out_channels)


def _freeze_batchnorm(module: nn.Module) -> None:
    """Replace every BatchNorm2d under ``module`` by a FrozenBatchNorm2d with its statistics."""
    from torchvision.ops.misc import FrozenBatchNorm2d

    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, eps=child.eps)
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(frozen, key).copy_(getattr(child, key).detach())
            setattr(module, name, frozen)
        else:
            _freeze_batchnorm(child)


def build_detection_backbone(resnet: nn.Module, *, fpn_channels: int = 32, frozen_bn: bool = False,
                             trainable_layers: int = 5) -> nn.Module:
    """An FPN backbone for Faster R-CNN over layer2-4 of a torchvision ResNet.

    Args:
        resnet: a ``torchvision.models.ResNet`` (e.g. from ``build_torchvision_resnet``, with the
            converted weights loaded); its ``fc`` and ``avgpool`` are not used.
        fpn_channels: channels of every FPN level (torchvision uses 256 for ResNet-50).
        frozen_bn: replace BatchNorm by FrozenBatchNorm2d (fixed statistics and affine), as
            torchvision does for supervised ImageNet weights. False (default) trains BN (MoCo).
        trainable_layers: how many trunk stages train, counted from layer4 down to the stem
            (0-5, torchvision's ``trainable_backbone_layers``); 5 trains every layer.

    Returns:
        ``BackboneWithFPN`` mapping (B, 3, H, W) images to an OrderedDict of 4 maps ("0", "1",
        "2", "pool") of ``fpn_channels`` channels, at layer2, layer3, layer4 strides and twice
        layer4's.

    Raises:
        ValueError: if ``trainable_layers`` is outside 0-5 or ``fpn_channels`` < 1.
    """
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must lie in 0-5 (stages trained from layer4 down), got {trainable_layers}")
    if fpn_channels < 1:
        raise ValueError(f"fpn_channels must be >= 1, got {fpn_channels}")
    if frozen_bn:
        _freeze_batchnorm(resnet)
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        trained.append("bn1")
    for name, param in resnet.named_parameters():
        param.requires_grad_(any(name.startswith(prefix) for prefix in trained))
    return BackboneWithFPN(resnet, {layer: str(i) for i, layer in enumerate(RETURNED_LAYERS)},
                           [_stage_channels(resnet, layer) for layer in RETURNED_LAYERS], fpn_channels,
                           extra_blocks=LastLevelMaxPool())


def build_faster_rcnn(backbone: nn.Module, *, num_classes: int, min_size: int = 96, max_size: int = 96,
                      image_mean: Sequence[float] = FASHION_MNIST_MEAN,
                      image_std: Sequence[float] = FASHION_MNIST_STD,
                      anchor_sizes: Sequence[int] = DEFAULT_ANCHOR_SIZES,
                      representation_size: int = 256) -> nn.Module:
    """torchvision Faster R-CNN sized for small images and a thin FPN.

    Args:
        backbone: from :func:`build_detection_backbone` (4 feature maps, ``out_channels`` set).
        num_classes: foreground classes C; the predictor has C + 1 outputs (0 = background).
        min_size, max_size: images are resized so the short side is ``min_size`` pixels unless
            the long side would exceed ``max_size`` (96/96 keeps the scenes' canvases native).
        image_mean, image_std: per-channel normalisation of [0, 1] RGB input.
        anchor_sizes: one anchor size (pixels) per feature map, at aspect ratios 0.5, 1, 2.
        representation_size: width of the two-layer box head (torchvision: 1024).

    Returns:
        ``torchvision.models.detection.FasterRCNN``; in train mode ``model(images, targets)``
        returns the four losses, in eval mode ``model(images)`` the detections.

    Raises:
        ValueError: if ``anchor_sizes`` does not give one size per feature map (4).
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.ops import MultiScaleRoIAlign

    if len(anchor_sizes) != len(RETURNED_LAYERS) + 1:
        raise ValueError(f"anchor_sizes needs {len(RETURNED_LAYERS) + 1} sizes (one per FPN level), "
                         f"got {list(anchor_sizes)}")
    anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(anchor_sizes))
    roi_pool = MultiScaleRoIAlign(featmap_names=[str(i) for i in range(len(RETURNED_LAYERS))], output_size=7,
                                  sampling_ratio=2)
    channels = backbone.out_channels
    return FasterRCNN(
        backbone, min_size=min_size, max_size=max_size, image_mean=list(image_mean), image_std=list(image_std),
        rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
        box_head=TwoMLPHead(channels * 7 * 7, representation_size),
        box_predictor=FastRCNNPredictor(representation_size, num_classes + 1),
        rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=150,
        rpn_batch_size_per_image=128, box_batch_size_per_image=64, box_detections_per_img=50)


def load_trunk_resnet(checkpoint: Optional[Mapping[str, Any]],
                      trunk_settings: Optional[Mapping[str, Any]]) -> Tuple[nn.Module, Dict[str, Any]]:
    """A torchvision ResNet with the checkpoint's trunk weights (strict load), or random init.

    Args:
        checkpoint: a loaded sslcore checkpoint, or None for a randomly initialised trunk.
        trunk_settings: ``build_torchvision_resnet`` keyword arguments; None reads them from the
            checkpoint's saved config (``trunk_settings_from_checkpoint``), or, without a
            checkpoint, uses the default thin ResNet-18 x0.125 'small' stem.

    Returns:
        ``(resnet, settings)``: the ResNet with ``fc`` replaced by ``nn.Identity``, and the
        settings used.

    Raises:
        ValueError: settings that cannot be read, or weights that do not match them exactly.
    """
    from sslcore.convert.torchvision import (build_torchvision_resnet, convert_vissl_to_torchvision,
                                             trunk_settings_from_checkpoint)

    if trunk_settings is None:
        trunk_settings = DEFAULT_TRUNK if checkpoint is None else trunk_settings_from_checkpoint(checkpoint)
    settings = dict(trunk_settings)
    resnet = build_torchvision_resnet(**settings)
    resnet.fc = nn.Identity()
    if checkpoint is not None:
        try:
            resnet.load_state_dict(convert_vissl_to_torchvision(checkpoint), strict=True)
        except RuntimeError as exc:
            raise ValueError(f"the checkpoint's trunk does not match trunk_settings={settings}: {exc}") from exc
    return resnet, settings


def build_detector(checkpoint: Optional[Mapping[str, Any]], trunk_settings: Optional[Mapping[str, Any]], *,
                   num_classes: int, fpn_channels: int = 32, frozen_bn: bool = False, trainable_layers: int = 5,
                   **detector_options: Any) -> Tuple[nn.Module, Dict[str, Any], Tuple[List[float], List[float]]]:
    """Faster R-CNN on the checkpoint's converted trunk (or a random one), normalised as in pretraining.

    Args:
        checkpoint, trunk_settings: see :func:`load_trunk_resnet`.
        num_classes: foreground classes.
        fpn_channels, frozen_bn, trainable_layers: see :func:`build_detection_backbone`.
        **detector_options: ``min_size``, ``max_size``, ``anchor_sizes``, ... of :func:`build_faster_rcnn`.

    Returns:
        ``(model, trunk settings, (image_mean, image_std))``.
    """
    resnet, settings = load_trunk_resnet(checkpoint, trunk_settings)
    backbone = build_detection_backbone(resnet, fpn_channels=fpn_channels, frozen_bn=frozen_bn,
                                        trainable_layers=trainable_layers)
    mean, std = normalization_from_checkpoint(checkpoint)
    model = build_faster_rcnn(backbone, num_classes=num_classes, image_mean=mean, image_std=std, **detector_options)
    return model, settings, (mean, std)


def _train_sample(dataset: Any, index: int, flip: bool) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    image, target = dataset[index]
    image = image_tensor(image)
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
    if flip:
        image = image.flip(-1)
        boxes = torch.stack([image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0],
                             boxes[:, 3]], dim=1)
    return image, {"boxes": boxes, "labels": torch.as_tensor(target["labels"], dtype=torch.int64)}


def lr_factor(iteration: int, *, iterations: int, warmup_iters: int, warmup_factor: float = 1e-3,
              steps: Sequence[float] = (2 / 3, 8 / 9), gamma: float = 0.1) -> float:
    """Learning-rate multiplier: linear warmup, then step decay (torchvision's reference).

    Args:
        iteration: the update about to be made, from 0.
        iterations: total updates.
        warmup_iters: updates of linear warmup from ``warmup_factor`` to 1.
        warmup_factor: multiplier at iteration 0.
        steps: decay points as fractions of ``iterations``.
        gamma: multiplier applied at each step.

    Returns:
        The factor times the base learning rate.
    """
    factor = gamma ** sum(iteration >= int(s * iterations) for s in steps)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


def train_detector(model: nn.Module, dataset: Any, indices: Sequence[int], *, iterations: int,
                   batch_size: int, lr: float, seed: int, device: torch.device, warmup_iters: int,
                   weight_decay: float = 1e-4, log_every: int = 10) -> List[Dict[str, float]]:
    """Train ``model`` for ``iterations`` SGD updates on random batches of ``dataset[indices]``.

    Batches are drawn epoch by epoch from seeded permutations; each image is flipped with
    probability 0.5. The schedule is :func:`lr_factor`.

    Args:
        model: a torchvision detector in train mode semantics (``model(images, targets)`` -> losses).
        dataset: items ``(image, target)`` as :class:`sslcore.data.voc.VOCDetection`.
        indices: the dataset positions to train on.
        iterations, batch_size, lr, warmup_iters: the schedule; weight_decay: SGD's L2 penalty.
        seed: seeds batch order and flips. device: where ``model`` lives.
        log_every: updates per log record.

    Returns:
        Log records ``{"iteration", "loss", "lr", "loss_classifier", "loss_box_reg",
        "loss_objectness", "loss_rpn_box_reg", "seconds_per_iteration"}``, each averaged over
        the ``log_every`` updates before it.

    Raises:
        FloatingPointError: if the loss becomes NaN or infinite (lower ``lr``).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: lr_factor(
        i, iterations=iterations, warmup_iters=warmup_iters))
    generator = torch.Generator().manual_seed(seed)
    order: List[int] = []
    records, window, start = [], [], time.perf_counter()
    model.train()
    for iteration in range(iterations):
        while len(order) < batch_size:
            order += [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
        batch, order = order[:batch_size], order[batch_size:]
        flips = (torch.rand(len(batch), generator=generator) < 0.5).tolist()
        samples = [_train_sample(dataset, i, f) for i, f in zip(batch, flips)]
        images = [s[0].to(device) for s in samples]
        targets = [{k: v.to(device) for k, v in s[1].items()} for s in samples]
        losses = model(images, targets)
        loss = sum(losses.values())
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"detection loss is {loss.item()} at iteration {iteration}; lower lr ({lr})")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append({"loss": loss.item(), **{k: v.item() for k, v in losses.items()}})
        if (iteration + 1) % log_every == 0 or iteration + 1 == iterations:
            elapsed = time.perf_counter() - start
            record = {"iteration": iteration + 1, "lr": optimizer.param_groups[0]["lr"],
                      **{k: sum(w[k] for w in window) / len(window) for k in window[0]},
                      "seconds_per_iteration": elapsed / len(window)}
            records.append(record)
            log.info("detection iter %d/%d loss %.4f lr %.5f (%.2f s/iter)", iteration + 1, iterations,
                     record["loss"], record["lr"], record["seconds_per_iteration"])
            window, start = [], time.perf_counter()
        schedule.step()
    return records


def _voc_root(data_root: PathLike) -> Path:
    root = Path(data_root)
    if (root / "VOC2007").is_dir():
        root = root / "VOC2007"
    if not (root / "ImageSets" / "Main").is_dir():
        raise FileNotFoundError(f"{root} is not a VOC2007-layout directory (no ImageSets/Main); pass the "
                                "scenes directory written by build_fashion_mnist_scenes or its VOC2007/")
    return root


def _read_checkpoint(checkpoint: Optional[PathLike]) -> Optional[Dict[str, Any]]:
    if checkpoint is None:
        return None
    from sslcore.engine.checkpoint import load_checkpoint
    from sslcore.storage import cache_dir, copy_to_local

    return load_checkpoint(Path(copy_to_local(str(checkpoint), cache_dir("weights"))))


def _pick_device(device: Optional[str]) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_detection_benchmark(
    data_root: PathLike,
    out_dir: PathLike,
    *,
    checkpoint: Optional[PathLike] = None,
    trunk_settings: Optional[Mapping[str, Any]] = None,
    iterations: int = 300,
    batch_size: int = 8,
    lr: float = 0.02,
    min_size: int = 96,
    max_size: int = 96,
    seed: int = 0,
    device: Optional[str] = None,
    num_train: Optional[int] = None,
    num_test: Optional[int] = None,
    fpn_channels: int = 32,
    anchor_sizes: Sequence[int] = DEFAULT_ANCHOR_SIZES,
    frozen_bn: bool = False,
    trainable_layers: int = 5,
    num_examples: int = 6,
    num_threads: Optional[int] = None,
) -> Dict[str, Any]:
    """Train Faster R-CNN on ``trainval``, evaluate on ``test``, write the result files.

    See the module docstring for the protocol, the model and the files written.

    Args:
        data_root: the scenes directory or its ``VOC2007/`` (Annotations, ImageSets/Main,
            JPEGImages).
        out_dir: where the results go; created if missing.
        checkpoint: sslcore checkpoint file (local or ``s3://``); None trains from random init
            (same seed, same schedule).
        trunk_settings: ``build_torchvision_resnet`` keyword arguments; None reads
            ``config.MODEL.TRUNK.RESNETS`` from the checkpoint (thin ResNet-18 x0.125 'small'
            stem without one).
        iterations: SGD updates. batch_size: images per update. lr: base learning rate.
        min_size, max_size: resize bounds in pixels (96/96: the canvases' native size).
        seed: seeds model initialisation, batch order and flips.
        device: "cpu", "cuda", ...; None picks CUDA when available.
        num_train, num_test: use only the first N images of trainval / test (None: all).
        fpn_channels, frozen_bn, trainable_layers: see :func:`build_detection_backbone`.
        anchor_sizes: see :func:`build_faster_rcnn`.
        num_examples: test images written to ``examples.json``.
        num_threads: torch CPU threads while training and testing (None: 1 on CPU; see
            :func:`_torch_threads`); restored afterwards.

    Returns:
        The metrics dict as written (``{"benchmark": "detection", "records": [...], ...}``).

    Raises:
        FileNotFoundError: ``data_root`` is not a VOC2007 layout, or the checkpoint is missing.
        ValueError: bad arguments or a checkpoint that does not convert.
        FloatingPointError: a non-finite training loss.

    Example:
        >>> run_detection_benchmark("scenes", "out/det", checkpoint="ckpt/checkpoint.torch", iterations=300)
    """
    from sslcore.data.voc import VOCDetection, voc_classes

    if iterations < 1 or batch_size < 1 or not lr > 0:
        raise ValueError(f"iterations and batch_size must be >= 1 and lr > 0, got {iterations}, {batch_size}, {lr}")
    root, run_device = _voc_root(data_root), _pick_device(device)
    classes = list(voc_classes(root))
    train_set, test_set = VOCDetection(root, "trainval", classes=classes), VOCDetection(root, "test", classes=classes)
    train_idx, test_idx = list(range(len(train_set)))[:num_train], list(range(len(test_set)))[:num_test]
    state = _read_checkpoint(checkpoint)
    warmup = min(100, iterations // 5)
    with _torch_threads(num_threads, run_device):
        torch.manual_seed(seed)
        model, settings, (mean, std) = build_detector(
            state, trunk_settings, num_classes=len(classes), fpn_channels=fpn_channels, frozen_bn=frozen_bn,
            trainable_layers=trainable_layers, min_size=min_size, max_size=max_size, anchor_sizes=anchor_sizes)
        model.to(run_device)
        started = time.perf_counter()
        train_log = train_detector(model, train_set, train_idx, iterations=iterations, batch_size=batch_size,
                                   lr=lr, seed=seed, device=run_device, warmup_iters=warmup)
        train_seconds = time.perf_counter() - started
        detections, truths = predict(model, test_set, test_idx, batch_size=batch_size, device=run_device)
    params = {
        "init": "pretrained" if state is not None else "random", "iterations": iterations,
        "batch_size": batch_size, "lr": lr, "momentum": 0.9, "weight_decay": 1e-4,
        "lr_schedule": {"warmup_iters": warmup, "warmup_factor": 1e-3, "gamma": 0.1,
                        "steps": [int(s * iterations) for s in (2 / 3, 8 / 9)]},
        "min_size": min_size, "max_size": max_size, "seed": seed, "anchor_sizes": list(anchor_sizes),
        "backbone": (f"ResNet-{settings['depth']} x{settings['width_multiplier']:g} {settings['stem']} stem "
                     f"+ FPN({fpn_channels} ch on layer2-4), {'FrozenBN' if frozen_bn else 'BN trained'}, "
                     f"{trainable_layers} trainable stages"), "image_mean": mean, "image_std": std}
    extra = {"protocol": "Faster R-CNN + FPN fine-tuned end to end (MoCo detection protocol); VOC07 "
                         "11-point AP50 and COCO mAP@[.5:.95]",
             "train_seconds": round(train_seconds, 2), "seconds_per_iteration": round(train_seconds / iterations, 4),
             "device": str(run_device), "sizes": {"num_train": len(train_idx)},
             "checkpoint": str(checkpoint) if checkpoint is not None else None}
    return write_detection_results(out_dir, root=root, dataset=test_set, indices=test_idx, detections=detections,
                                   ground_truths=truths, params=params, train_log=train_log, extra=extra,
                                   num_examples=num_examples)


@contextlib.contextmanager
def _torch_threads(num_threads: Optional[int], device: torch.device) -> Iterator[None]:
    """Run the block with ``num_threads`` CPU threads (None: 1 on CPU, unchanged on GPU), then restore.

    One thread is the CPU default because the thin trunk's ops are too small to share: on this
    project's busy 2-core machine a training step took about 1 s with one thread and 18-36 s
    with two (threads spin while waiting for each other).
    """
    before = torch.get_num_threads()
    wanted = num_threads if num_threads is not None else (1 if device.type == "cpu" else None)
    if wanted is not None:
        torch.set_num_threads(int(wanted))
    try:
        yield
    finally:
        torch.set_num_threads(before)
