"""Detection metrics: PASCAL VOC AP at IoU 0.5 (VOC07 protocol) and COCO-style mAP@[.5:.95].

Protocols:

- [0] Everingham et al., "The PASCAL Visual Object Classes (VOC) Challenge", IJCV 2010,
  http://host.robots.ox.ac.uk/pascal/VOC/pubs/everingham10.pdf, section 4.2: per class, the
  detections of all test images are sorted by decreasing score and matched greedily; a detection
  is a true positive when its IoU with the best-overlapping ground-truth box of that class is at
  least 0.5 and that box was not matched before; later detections of a matched box are false
  positives. Ground-truth boxes flagged ``difficult`` do not count as positives, and a detection
  matched to one is neither a true nor a false positive. AP is the mean of the interpolated
  precision at the 11 recalls 0, 0.1, ..., 1 (the VOC2007 test metric, the default here) or the
  area under the interpolated precision/recall curve over every recall step ("all-point", VOC2010
  and later).
- [1] Lin et al., "Microsoft COCO: Common Objects in Context", 2014,
  https://arxiv.org/abs/1405.0312: AP averaged over IoU thresholds 0.5:0.05:0.95, 101-point
  interpolation, computed by pycocotools' ``COCOeval`` (difficult boxes are ``iscrowd``/ignored
  in the ground truth from :func:`sslcore.data.coco.voc_to_coco`).

Boxes are (x1, y1, x2, y2) in continuous pixel coordinates and IoU uses areas ``(x2 - x1) * (y2 -
y1)``, as torchvision and pycocotools do (the original VOC devkit adds one pixel to each side
length for its inclusive integer boxes; on boxes tens of pixels wide the two differ slightly).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from sslcore.benchmarks.metrics import make_record, read_metrics, write_metrics

log = logging.getLogger(__name__)

Detections = Mapping[Any, Mapping[str, np.ndarray]]


def voc_ap(recall: np.ndarray, precision: np.ndarray, *, use_07_metric: bool = True) -> float:
    """Average precision of one precision/recall curve, VOC style.

    Args:
        recall: (D,) float, cumulative recall after each detection (non-decreasing, in [0, 1]).
        precision: (D,) float, cumulative precision after each detection.
        use_07_metric: True: mean over the 11 recalls t = 0, 0.1, ..., 1 of the largest
            precision at recall >= t (0 when none; VOC2007). False: area under the curve with
            precision made monotone (each value replaced by the largest at higher recall).

    Returns:
        AP in [0, 1].

    Raises:
        ValueError: if the arrays differ in shape.
    """
    recall = np.asarray(recall, dtype=np.float64)
    precision = np.asarray(precision, dtype=np.float64)
    if recall.shape != precision.shape or recall.ndim != 1:
        raise ValueError(f"recall and precision must be (D,) arrays of one shape, got {recall.shape} "
                         f"and {precision.shape}")
    if use_07_metric:
        points = [precision[recall >= t].max() if np.any(recall >= t) else 0.0
                  for t in np.linspace(0.0, 1.0, 11)]
        return float(np.mean(points))
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with many.

    Args:
        box: (4,) float, (x1, y1, x2, y2).
        boxes: (G, 4) float.

    Returns:
        (G,) float64 IoU in [0, 1]; 0 where the union is empty.
    """
    box = np.asarray(box, dtype=np.float64)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    iw = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0, None)
    ih = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0, None)
    inter = iw * ih
    union = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def _class_tp_fp(detections: Detections, ground_truths: Detections, label: int,
                 iou_threshold: float):
    """(scores, tp, fp, number of non-difficult positives) of one class over all images."""
    gts, num_positives = {}, 0
    for image_id, gt in ground_truths.items():
        keep = np.asarray(gt["labels"]) == label
        difficult = np.asarray(gt.get("difficult", np.zeros(len(keep), bool)), dtype=bool)[keep]
        gts[image_id] = (np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 4)[keep], difficult,
                         np.zeros(int(keep.sum()), dtype=bool))
        num_positives += int((~difficult).sum())
    entries = []
    for image_id, det in detections.items():
        keep = np.asarray(det["labels"]) == label
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)[keep]
        entries += [(float(s), image_id, b) for s, b in zip(np.asarray(det["scores"])[keep], boxes)]
    entries.sort(key=lambda e: -e[0])  # stable: ties keep image order
    tp, fp = np.zeros(len(entries)), np.zeros(len(entries))
    for i, (_, image_id, box) in enumerate(entries):
        gt_boxes, difficult, matched = gts.get(image_id, (np.zeros((0, 4)), np.zeros(0, bool), np.zeros(0, bool)))
        overlaps = box_iou(box, gt_boxes)
        best = int(np.argmax(overlaps)) if len(overlaps) else -1
        if best < 0 or overlaps[best] < iou_threshold:
            fp[i] = 1
        elif difficult[best]:
            continue  # neither TP nor FP
        elif not matched[best]:
            tp[i], matched[best] = 1, True
        else:
            fp[i] = 1
    scores = np.array([e[0] for e in entries])
    return scores, tp, fp, num_positives


def evaluate_voc(detections: Detections, ground_truths: Detections, *, num_classes: int,
                 iou_threshold: float = 0.5, use_07_metric: bool = True) -> Dict[int, float]:
    """Per-class VOC average precision of a detector's output on a test set.

    Args:
        detections: image id -> ``{"boxes": (D, 4) float x1,y1,x2,y2, "scores": (D,) float,
            "labels": (D,) int}`` (class ids 1..num_classes; 0 is background).
        ground_truths: image id -> ``{"boxes": (G, 4), "labels": (G,) int, "difficult": (G,)
            bool (optional, default all False)}`` for every test image, including images without
            objects.
        num_classes: C, the number of foreground classes.
        iou_threshold: minimum IoU of a true positive (0.5 in VOC).
        use_07_metric: 11-point (VOC2007, default) or all-point AP; see :func:`voc_ap`.

    Returns:
        ``{label: AP in [0, 1]}`` for labels 1..C that have at least one non-difficult
        ground-truth box (AP is undefined without positives; those classes are left out and logged).

    Raises:
        ValueError: if ``num_classes`` < 1 or ``iou_threshold`` is outside (0, 1].

    Example:
        >>> gt = {0: {"boxes": np.array([[0, 0, 10, 10]]), "labels": np.array([1])}}
        >>> det = {0: {"boxes": np.array([[0, 0, 10, 10]]), "scores": np.array([0.9]), "labels": np.array([1])}}
        >>> evaluate_voc(det, gt, num_classes=1)
        {1: 1.0}
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must lie in (0, 1], got {iou_threshold}")
    result: Dict[int, float] = {}
    for label in range(1, num_classes + 1):
        _, tp, fp, num_positives = _class_tp_fp(detections, ground_truths, label, iou_threshold)
        if num_positives == 0:
            log.info("VOC AP: class %d has no non-difficult ground truth; left out", label)
            continue
        tp, fp = np.cumsum(tp), np.cumsum(fp)
        recall = tp / num_positives
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        result[label] = voc_ap(recall, precision, use_07_metric=use_07_metric)
    return result


def to_coco_results(detections: Detections) -> List[Dict[str, Any]]:
    """Detections in the COCO results format that ``COCO.loadRes`` reads.

    Args:
        detections: as in :func:`evaluate_voc`; image ids must be the COCO ground truth's ids and
            labels its category ids.

    Returns:
        ``[{"image_id", "category_id", "bbox": [x, y, w, h], "score"}, ...]``.
    """
    results = []
    for image_id, det in detections.items():
        boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4)
        for box, score, label in zip(boxes, np.asarray(det["scores"]), np.asarray(det["labels"])):
            x1, y1, x2, y2 = (float(v) for v in box)
            results.append({"image_id": int(image_id), "category_id": int(label),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return results


COCO_STAT_NAMES = ("mAP", "AP50", "AP75", "APs", "APm", "APl")


def evaluate_coco(detections: Detections, coco_gt: Mapping[str, Any], *,
                  image_ids: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """COCO-style box AP with pycocotools' ``COCOeval``.

    Args:
        detections: as in :func:`to_coco_results`.
        coco_gt: COCO ground-truth dict (``images``, ``annotations``, ``categories``), e.g. from
            :func:`sslcore.data.coco.voc_to_coco`.
        image_ids: evaluate only these images (default: every image of ``coco_gt``).

    Returns:
        ``{"mAP": AP@[.5:.95], "AP50", "AP75", "APs", "APm", "APl"}`` in [0, 1]; COCOeval's -1
        (no ground truth in an area range) is kept as -1. All zeros when there is no detection.

    Raises:
        ValueError: if ``coco_gt`` lacks ``images``, ``annotations`` or ``categories``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    missing = [k for k in ("images", "annotations", "categories") if k not in coco_gt]
    if missing:
        raise ValueError(f"coco_gt lacks {missing}; build it with sslcore.data.coco.voc_to_coco")
    results = to_coco_results(detections)
    if not results:
        return {name: 0.0 for name in COCO_STAT_NAMES}
    gt = COCO()
    gt.dataset = {"info": {}, **dict(coco_gt)}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(results)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        if image_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(COCO_STAT_NAMES, evaluator.stats[:6])}


def image_tensor(image: Any) -> torch.Tensor:
    """A dataset image as a (3, H, W) float tensor in [0, 1].

    Args:
        image: a PIL image, a (C, H, W) uint8 tensor (scaled by 1/255) or a float tensor in
            [0, 1]; one channel is repeated to three.

    Returns:
        (3, H, W) float32.
    """
    if isinstance(image, torch.Tensor):
        out = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    else:
        from torchvision.transforms.functional import to_tensor

        out = to_tensor(image.convert("RGB"))
    return out.expand(3, -1, -1) if out.shape[0] == 1 else out


@torch.no_grad()
def predict(model: nn.Module, dataset: Any, indices: Sequence[int], *, batch_size: int,
            device: torch.device) -> Tuple[Dict[int, Dict[str, np.ndarray]], Dict[int, Dict[str, np.ndarray]]]:
    """Run a torchvision detector in eval mode on ``dataset[indices]``.

    Args:
        model: e.g. ``FasterRCNN``; called on a list of (3, H, W) images.
        dataset: items ``(image, target)`` with target ``boxes`` (G, 4), ``labels`` (G,),
            ``difficult`` (G,) and ``image_id`` (as :class:`sslcore.data.voc.VOCDetection`).
        indices: dataset positions to run.
        batch_size: images per forward pass.
        device: where the model lives.

    Returns:
        ``(detections, ground_truths)``, both image id -> numpy dicts: detections with ``boxes``
        (D, 4) float32 x1,y1,x2,y2 pixels, ``scores`` (D,) and ``labels`` (D,) int64; ground
        truths with ``boxes`` (G, 4), ``labels`` (G,) and ``difficult`` (G,) bool.
    """
    model.eval()
    detections, ground_truths = {}, {}
    for start in range(0, len(indices), batch_size):
        items = [dataset[i] for i in indices[start:start + batch_size]]
        outputs = model([image_tensor(image).to(device) for image, _ in items])
        for (_, target), output in zip(items, outputs):
            image_id = int(target["image_id"])
            detections[image_id] = {k: v.cpu().numpy() for k, v in output.items()}
            ground_truths[image_id] = {
                "boxes": torch.as_tensor(target["boxes"]).reshape(-1, 4).numpy(),
                "labels": torch.as_tensor(target["labels"]).numpy(),
                "difficult": torch.as_tensor(target["difficult"], dtype=torch.bool).numpy()}
    return detections, ground_truths


def _png_base64(image: torch.Tensor) -> str:
    from PIL import Image

    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def collect_examples(dataset: Any, indices: Sequence[int], detections: Mapping[int, Mapping[str, np.ndarray]],
                     classes: Sequence[str], *, score_threshold: float = 0.5) -> List[Dict[str, Any]]:
    """Test images with their predicted and true boxes, for ``examples.json`` and the report.

    Args:
        dataset: as in :func:`predict`.
        indices: the dataset positions to show.
        detections: from :func:`predict`, keyed by image id.
        classes: class names; label ``l`` is ``classes[l - 1]``.
        score_threshold: predictions below this score are left out, except that an image with
            none above it shows its highest-scoring ones (as many as it has true boxes), so a short
            schedule's low-confidence boxes still appear, each with its score.

    Returns:
        One dict per image: ``{"image_id", "width", "height", "image_png": base64 PNG,
        "predictions": [{"box": [x1, y1, x2, y2], "label": name, "score"}], "ground_truth":
        [{"box", "label", "difficult"}]}``, boxes in pixels.
    """
    examples = []
    for index in indices:
        image, target = dataset[index]
        image = image_tensor(image)
        det = detections[int(target["image_id"])]
        scores = np.asarray(det["scores"])
        keep = scores >= score_threshold
        if not keep.any() and len(scores):
            keep[np.argsort(-scores, kind="stable")[: max(1, len(target["labels"]))]] = True
        predictions = [{"box": [round(float(v), 2) for v in box], "label": classes[int(label) - 1],
                        "score": round(float(score), 4)}
                       for box, label, score in zip(det["boxes"][keep], det["labels"][keep], det["scores"][keep])]
        truth = [{"box": [float(v) for v in box], "label": classes[int(label) - 1], "difficult": bool(d)}
                 for box, label, d in zip(torch.as_tensor(target["boxes"]).reshape(-1, 4).tolist(),
                                          torch.as_tensor(target["labels"]).tolist(),
                                          torch.as_tensor(target["difficult"]).tolist())]
        examples.append({"image_id": int(target["image_id"]), "width": int(image.shape[-1]),
                         "height": int(image.shape[-2]), "image_png": _png_base64(image),
                         "predictions": predictions, "ground_truth": truth})
    return examples


def write_detection_results(out_dir: Union[str, os.PathLike], *, root: Union[str, os.PathLike], dataset: Any,
                            indices: Sequence[int], detections: Detections, ground_truths: Detections,
                            params: Mapping[str, Any], train_log: List[Dict[str, float]],
                            extra: Mapping[str, Any], num_examples: int = 6) -> Dict[str, Any]:
    """Score the test detections (VOC07 AP50, COCO) and write the detection benchmark's files.

    Args:
        out_dir: created if missing; receives ``metrics.json``, ``per_class_ap50.json`` (class
            name -> AP50 in %), ``examples.json`` (:func:`collect_examples`) and ``train_log.json``.
        root: the VOC root, for :func:`sslcore.data.coco.voc_to_coco` of the ``test`` split.
        dataset: the test :class:`~sslcore.data.voc.VOCDetection` (its ``classes`` name labels).
        indices: the evaluated dataset positions; the first ``num_examples`` become examples.
        detections, ground_truths: from :func:`predict`.
        params: protocol parameters stored in every record.
        train_log: the training log records.
        extra: more top-level fields of ``metrics.json`` (``sizes`` gains ``num_test``).
        num_examples: test images written to ``examples.json``.

    Returns:
        The metrics dict as written: records ``AP50`` (VOC07 11-point, mean over classes with
        positives), ``mAP`` (COCO AP@[.5:.95]) and ``AP75``, all in %.
    """
    from sslcore.data.coco import voc_to_coco

    classes = list(dataset.classes)
    per_class = evaluate_voc(detections, ground_truths, num_classes=len(classes))
    coco = evaluate_coco(detections, voc_to_coco(root, dataset.split, classes), image_ids=list(ground_truths))
    ap50 = 100.0 * sum(per_class.values()) / max(len(per_class), 1)
    layer, coco_name = "fpn(res3,res4,res5)", "pycocotools COCOeval bbox"
    records = [make_record("AP50", ap50, unit="%", layer=layer,
                           params={**params, "iou": 0.5, "voc_metric": "11-point (VOC2007)"}),
               make_record("mAP", 100.0 * coco["mAP"], unit="%", layer=layer,
                           params={**params, "iou": "0.5:0.05:0.95", "coco_metric": coco_name}),
               make_record("AP75", 100.0 * coco["AP75"], unit="%", layer=layer,
                           params={**params, "iou": 0.75, "coco_metric": coco_name})]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"per_class_ap50.json": {classes[label - 1]: 100.0 * ap for label, ap in per_class.items()},
             "examples.json": collect_examples(dataset, list(indices)[:num_examples], detections, classes),
             "train_log.json": train_log}
    for name, payload in files.items():
        (out / name).write_text(json.dumps(payload, indent=1) + "\n")
    sizes = {**dict(extra.get("sizes") or {}), "num_test": len(ground_truths)}
    path = write_metrics(out, "detection", records, {
        **extra, "classes": classes, "sizes": sizes, "coco": {k: 100.0 * v for k, v in coco.items()}})
    log.info("detection (%s init): AP50 %.2f%%, COCO mAP %.2f%%; written to %s", params.get("init"), ap50,
             100.0 * coco["mAP"], path)
    return read_metrics(path)
