"""Detection benchmark: VOC AP against hand computations and pycocotools, conversion, short real runs."""

import base64
import importlib.util
import io
import json
import math

import numpy as np
import pytest
import torch

from sslcore.benchmarks.detection import (
    build_detection_backbone,
    load_trunk_resnet,
    lr_factor,
    run_detection_benchmark,
)
from sslcore.benchmarks.detection_eval import box_iou, evaluate_coco, evaluate_voc, voc_ap
from sslcore.benchmarks.metrics import read_metrics


@pytest.fixture(autouse=True)
def _one_thread():
    """Single-threaded torch: on the shared 2-core machine, intra-op threads contend (10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _dets(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels, int)}


def hand_case():
    """Class 1: 2 positives (A, B) and one difficult box (C); detections give TP, FP, ignored, FP, TP."""
    truths = {
        0: {"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([1]), "difficult": np.array([False])},
        1: {"boxes": np.array([[20, 20, 30, 30], [50, 50, 60, 60]], float), "labels": np.array([1, 1]),
            "difficult": np.array([False, True])},
    }
    detections = {
        0: _dets([[0, 0, 10, 10], [1, 0, 10, 10]], [0.9, 0.8], [1, 1]),  # TP on A, then a duplicate: FP
        # matches difficult C (ignored), a miss (FP), then B at IoU exactly 0.5 (TP: IoU >= 0.5)
        1: _dets([[50, 50, 60, 60], [70, 70, 80, 80], [20, 20, 30, 40]], [0.7, 0.6, 0.5], [1, 1, 1]),
    }
    return detections, truths


def test_voc_ap_on_a_hand_computed_case():
    detections, truths = hand_case()
    # ranked outcomes after dropping the difficult match: TP FP FP TP, 2 positives
    # recall .5 .5 .5 1, precision 1 .5 1/3 .5
    eleven = (6 * 1.0 + 5 * 0.5) / 11  # recall thresholds 0..0.5 reach precision 1, 0.6..1 reach 0.5
    all_point = 0.5 * 1.0 + 0.5 * 0.5
    assert evaluate_voc(detections, truths, num_classes=2) == pytest.approx({1: eleven})  # class 2: no gt
    assert evaluate_voc(detections, truths, num_classes=2, use_07_metric=False) == pytest.approx({1: all_point})
    # the same detections labelled as class 2 find nothing of class 1
    relabelled = {k: {**d, "labels": np.full_like(d["labels"], 2)} for k, d in detections.items()}
    assert evaluate_voc(relabelled, truths, num_classes=2) == {1: 0.0}


def test_voc_ap_curve_and_iou_primitives():
    assert voc_ap(np.array([0.5, 1.0]), np.array([1.0, 1.0])) == pytest.approx(1.0)
    assert voc_ap(np.array([0.25]), np.array([1.0])) == pytest.approx(3 / 11)  # t = 0, .1, .2
    assert voc_ap(np.array([0.25]), np.array([1.0]), use_07_metric=False) == pytest.approx(0.25)
    np.testing.assert_allclose(box_iou([0, 0, 10, 10], [[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]]),
                               [50 / 150, 0.0, 1.0])
    with pytest.raises(ValueError, match="iou_threshold"):
        evaluate_voc({}, {}, num_classes=1, iou_threshold=0)


def random_case(seed=0, num_images=25):
    """Ground truth without difficult objects; detections are jittered copies plus false alarms."""
    rng = np.random.default_rng(seed)
    truths, detections, coco_images, annotations = {}, {}, [], []
    for image_id in range(num_images):
        count = rng.integers(1, 4)
        xy = rng.uniform(0, 60, (count, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(12, 36, (count, 2))], axis=1)
        labels = rng.integers(1, 3, count)
        truths[image_id] = {"boxes": boxes, "labels": labels, "difficult": np.zeros(count, bool)}
        coco_images.append({"id": image_id, "width": 100, "height": 100, "file_name": f"{image_id}.jpg"})
        for box, label in zip(boxes, labels):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                                "area": float((box[2] - box[0]) * (box[3] - box[1])), "iscrowd": 0})
        jitter = boxes + rng.normal(0, rng.choice([1.0, 8.0], (count, 1)), (count, 4))
        false = rng.uniform(0, 60, (2, 2))
        det_boxes = np.concatenate([jitter, np.concatenate([false, false + 20], axis=1)])
        detections[image_id] = _dets(det_boxes, rng.uniform(0, 1, count + 2),
                                     np.concatenate([labels, rng.integers(1, 3, 2)]))
    categories = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    return detections, truths, {"images": coco_images, "annotations": annotations, "categories": categories}


@pytest.mark.parametrize("seed", [0, 1])
def test_voc_ap_agrees_with_pycocotools_ap50_without_difficult_objects(seed):
    detections, truths, coco_gt = random_case(seed)
    ours = evaluate_voc(detections, truths, num_classes=2, use_07_metric=False)
    coco = evaluate_coco(detections, coco_gt)
    assert 0.2 < coco["AP50"] < 0.95  # a case with both hits and misses
    # COCO interpolates at 101 recalls and matches each detection to the best unmatched box;
    # VOC integrates every recall step: close, not identical
    assert np.mean(list(ours.values())) == pytest.approx(coco["AP50"], abs=0.03)
    assert coco["mAP"] < coco["AP50"]


def test_lr_factor_warms_up_then_steps():
    kw = {"iterations": 90, "warmup_iters": 10}
    assert lr_factor(0, **kw) == pytest.approx(1e-3)
    assert lr_factor(5, **kw) == pytest.approx(1e-3 * 0.5 + 0.5)
    assert lr_factor(10, **kw) == lr_factor(59, **kw) == 1.0
    assert lr_factor(60, **kw) == pytest.approx(0.1) and lr_factor(80, **kw) == pytest.approx(0.01)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from sslcore.data.scenes import build_fashion_mnist_scenes

    out = tmp_path_factory.mktemp("scenes")
    build_fashion_mnist_scenes(out, num_trainval=16, num_test=8)
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A real sslcore checkpoint of quick_simclr's model (ResNet-18 x0.125, small stem).

    The model comes from the recipe's resolved config through sslcore's model builder and is
    written by the trainer's own ``save_checkpoint`` (with the config, as a run saves it); its
    weights and BN statistics are perturbed so they differ from any fresh initialisation.
    """
    from omegaconf import OmegaConf

    from sslcore.engine.checkpoint import save_checkpoint
    from sslcore.engine.launcher import resolve
    from sslcore.models.model import build_model

    cfg = resolve(["config=pretrain/simclr/quick_simclr"])
    torch.manual_seed(123)
    model = build_model(cfg.MODEL)
    with torch.no_grad():
        for name, tensor in model.trunk.state_dict().items():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
    path = tmp_path_factory.mktemp("pretrain") / "model_final_checkpoint_phase0.torch"
    save_checkpoint(path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), method_state={},
                    phase_idx=0, iteration=1, phase_complete=True, iteration_in_phase=1,
                    config=OmegaConf.to_container(cfg, resolve=True))
    return path


def test_backbone_weights_equal_the_checkpoint_trunk(checkpoint):
    state = torch.load(checkpoint, weights_only=True)
    trunk = state["classy_state_dict"]["base_model"]["model"]["trunk"]
    resnet, settings = load_trunk_resnet(state, None)
    assert settings["depth"] == 18 and settings["width_multiplier"] == 0.125 and settings["stem"] == "small"
    backbone = build_detection_backbone(resnet)
    body = backbone.body.state_dict()
    compared = 0
    for key, value in trunk.items():
        name = key[len("_feature_blocks."):]
        if name.startswith(("conv1", "bn1", "layer")):
            assert torch.equal(body[name], value), name
            compared += 1
    assert compared == len(body) > 50
    random_body = build_detection_backbone(load_trunk_resnet(None, None)[0]).body.state_dict()
    assert not torch.equal(random_body["layer1.0.conv1.weight"], body["layer1.0.conv1.weight"])


@pytest.fixture(scope="module")
def results(scenes, checkpoint, tmp_path_factory):
    """Both runs, same seed and schedule: pretrained through the function, random init through the CLI."""
    from sslcore.cli import main

    root = tmp_path_factory.mktemp("detection_results")
    run_detection_benchmark(scenes, root / "pretrained", checkpoint=checkpoint, iterations=6, batch_size=2,
                            num_test=4, seed=3)
    code = main(["benchmark", "detection", "--data", str(scenes / "VOC2007"), "--out", str(root / "random"),
                 "--random-init", "--iterations", "6", "--batch-size", "2", "--num-test", "4", "--seed", "3"])
    assert code == 0
    return root


@pytest.mark.parametrize("init", ["pretrained", "random"])
def test_detection_trains_and_writes_its_results(results, init):
    out = results / init
    metrics = read_metrics(out)
    assert metrics["benchmark"] == "detection"
    records = {r["name"]: r for r in metrics["records"]}
    assert set(records) == {"AP50", "mAP", "AP75"}
    for record in records.values():
        assert 0.0 <= record["value"] <= 100.0 and record["unit"] == "%"
        params = record["params"]
        assert params["init"] == init and params["iterations"] == 6 and params["batch_size"] == 2
        assert params["seed"] == 3 and params["lr_schedule"]["steps"] == [4, 5]
    assert metrics["sizes"] == {"num_train": 16, "num_test": 4}
    log = json.loads((out / "train_log.json").read_text())
    assert [r["iteration"] for r in log] == [6]
    assert all(math.isfinite(v) for r in log for v in r.values())
    per_class = json.loads((out / "per_class_ap50.json").read_text())
    assert set(per_class) <= set(metrics["classes"]) and len(metrics["classes"]) == 10
    assert records["AP50"]["value"] == pytest.approx(sum(per_class.values()) / len(per_class))
    examples = json.loads((out / "examples.json").read_text())
    assert len(examples) == 4 and all(e["ground_truth"] and e["width"] == 96 for e in examples)
    for example in examples:  # above 0.5, or else the image's top-scoring ones (one per true box)
        scores = [p["score"] for p in example["predictions"]]
        assert all(p["label"] in metrics["classes"] for p in example["predictions"])
        assert all(v >= 0.5 for v in scores) or (
            max(scores) < 0.5 and len(scores) <= max(1, len(example["ground_truth"])))


def test_report_section_renders_both_runs(results):
    from sslcore.report.sections import render_section
    from sslcore.report.sections.detection import draw_example_png

    both = render_section("detection", results)
    assert both.startswith("<section>") and both.endswith("</section>")
    assert "<td>pretrained</td>" in both and "<td>random</td>" in both
    assert both.count("data:image/png;base64,") == 8 and "<svg" in both
    one = render_section("detection", results / "random")
    assert one.count("data:image/png;base64,") == 4 and "<td>pretrained</td>" not in one
    # drawing changes pixels where a true box lies and keeps the size times the scale
    from PIL import Image

    example = json.loads((results / "random" / "examples.json").read_text())[0]
    drawn = Image.open(io.BytesIO(base64.b64decode(draw_example_png({**example, "predictions": []}, scale=2))))
    plain = Image.open(io.BytesIO(base64.b64decode(example["image_png"]))).convert("RGB")
    assert drawn.size == (192, 192)
    x1, y1 = (int(v) for v in example["ground_truth"][0]["box"][:2])
    assert drawn.getpixel((2 * x1, 2 * y1 + 3)) == (0, 170, 0) != plain.getpixel((x1, y1 + 1))


def test_bad_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOC2007"):
        run_detection_benchmark(tmp_path, tmp_path / "out", iterations=1)
    with pytest.raises(ValueError, match="trainable_layers"):
        build_detection_backbone(load_trunk_resnet(None, None)[0], trainable_layers=6)


@pytest.mark.skipif(importlib.util.find_spec("detectron2") is None, reason="detectron2 is not installed")
def test_detectron2_path_runs(scenes, tmp_path):
    from sslcore.benchmarks.detection_detectron2 import run_detectron2_detection_benchmark

    metrics = run_detectron2_detection_benchmark(scenes, tmp_path / "d2", iterations=2, batch_size=2)
    assert {r["name"] for r in metrics["records"]} >= {"AP50"}
