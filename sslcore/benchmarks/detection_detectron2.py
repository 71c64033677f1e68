"""The detection benchmark through detectron2, where detectron2 is importable (it is not on the index).

The same protocol as :mod:`sslcore.benchmarks.detection` (Faster R-CNN with FPN on a VOC2007-layout
set, the same schedule, VOC07 AP50 and mAP), run by detectron2's ``DefaultTrainer`` from the
detectron2-format checkpoint written by :mod:`sslcore.convert.detectron2`:

- [0] Faster R-CNN, Ren et al. 2015, https://arxiv.org/abs/1506.01497
- [1] Detectron2, Wu et al. 2019, https://github.com/facebookresearch/detectron2
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional

from sslcore.benchmarks.detection import (_pick_device, _read_checkpoint, _voc_root,
                                          normalization_from_checkpoint)
from sslcore.benchmarks.features import PathLike


def run_detectron2_detection_benchmark(
    data_root: PathLike, out_dir: PathLike, *, checkpoint: Optional[PathLike] = None,
    trunk_settings: Optional[Mapping[str, Any]] = None, iterations: int = 300, batch_size: int = 8,
    lr: float = 0.02, min_size: int = 96, max_size: int = 96, seed: int = 0, device: Optional[str] = None,
) -> Dict[str, Any]:
    """The same benchmark through detectron2, from the detectron2-format checkpoint (``.pkl``).

    detectron2's ``PascalVOC-Detection/faster_rcnn_R_50_FPN`` recipe with the converted trunk
    (:mod:`sslcore.convert.detectron2`; standard 7x7 stem, and RES2_OUT_CHANNELS=64 for depth
    18/34, so thin trunks stay on :func:`run_detection_benchmark`), BN trained in every layer, the
    torchvision path's schedule and detectron2's ``PascalVOCDetectionEvaluator`` (VOC07 11-point
    AP50; its ``AP`` averages VOC AP over IoU 0.5:0.95). Arguments as :func:`run_detection_benchmark`
    (no checkpoint: a random-init ResNet-50 unless ``trunk_settings`` says otherwise).

    Returns:
        The metrics dict written to ``out_dir/metrics.json`` (records ``AP50`` and ``mAP``, in %).

    Raises:
        ImportError: detectron2 is not installed. ValueError: a trunk detectron2 cannot build.
    """
    import importlib.util

    if importlib.util.find_spec("detectron2") is None:
        raise ImportError("detectron2 is not installed; use run_detection_benchmark (torchvision)")
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_pascal_voc
    from detectron2.engine import DefaultTrainer
    from detectron2.evaluation import PascalVOCDetectionEvaluator

    from sslcore.benchmarks.metrics import make_record, read_metrics, write_metrics
    from sslcore.convert.detectron2 import (convert_vissl_to_detectron2, detectron2_resnet_config,
                                            save_detectron2_checkpoint)
    from sslcore.convert.torchvision import trunk_settings_from_checkpoint
    from sslcore.data.voc import voc_classes

    root, out, state = _voc_root(data_root), Path(out_dir), _read_checkpoint(checkpoint)
    classes = list(voc_classes(root))
    settings = dict(trunk_settings or (trunk_settings_from_checkpoint(state) if state is not None else {"depth": 50}))
    names = {split: f"sslcore_voc_{abs(hash(str(root.resolve())))}_{split}" for split in ("trainval", "test")}
    for split, name in names.items():
        if name not in DatasetCatalog.list():
            register_pascal_voc(name, str(root), split, 2007, class_names=classes)
    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("PascalVOC-Detection/faster_rcnn_R_50_FPN.yaml"))
    for key, value in detectron2_resnet_config(**settings).items():
        setattr(cfg.MODEL.RESNETS, key, value)
    weights = "" if state is None else str(save_detectron2_checkpoint(convert_vissl_to_detectron2(state),
                                                                      out / "backbone_detectron2.pkl"))
    mean, std = normalization_from_checkpoint(state)
    cfg.merge_from_list([
        "MODEL.WEIGHTS", weights, "MODEL.RESNETS.NORM", "BN", "MODEL.BACKBONE.FREEZE_AT", 0,
        "MODEL.ROI_HEADS.NUM_CLASSES", len(classes), "MODEL.DEVICE", str(_pick_device(device)),
        "INPUT.FORMAT", "RGB", "MODEL.PIXEL_MEAN", [255 * m for m in mean], "MODEL.PIXEL_STD", [255 * s for s in std],
        "INPUT.MIN_SIZE_TRAIN", (min_size,), "INPUT.MAX_SIZE_TRAIN", max_size, "INPUT.MIN_SIZE_TEST", min_size,
        "INPUT.MAX_SIZE_TEST", max_size, "DATASETS.TRAIN", (names["trainval"],), "DATASETS.TEST", (names["test"],),
        "SOLVER.IMS_PER_BATCH", batch_size, "SOLVER.BASE_LR", lr, "SOLVER.MAX_ITER", iterations,
        "SOLVER.STEPS", tuple(int(s * iterations) for s in (2 / 3, 8 / 9)), "SOLVER.WARMUP_ITERS",
        min(100, iterations // 5), "SEED", seed, "OUTPUT_DIR", str(out / "detectron2"), "DATALOADER.NUM_WORKERS", 0])
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    bbox = DefaultTrainer.test(cfg, trainer.model, evaluators=[PascalVOCDetectionEvaluator(names["test"])])["bbox"]
    params = {"init": "pretrained" if state is not None else "random", "iterations": iterations,
              "batch_size": batch_size, "lr": lr, "min_size": min_size, "max_size": max_size, "seed": seed,
              "backbone": f"detectron2 R-FPN {settings}", "evaluator": "detectron2 PascalVOCDetectionEvaluator"}
    records = [make_record("AP50", float(bbox["AP50"]), unit="%", layer="fpn", params={**params, "iou": 0.5}),
               make_record("mAP", float(bbox["AP"]), unit="%", layer="fpn", params={**params, "iou": "0.5:0.95"})]
    return read_metrics(write_metrics(out, "detection", records, {"framework": "detectron2", "classes": classes}))
