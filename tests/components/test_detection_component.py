"""The detection component: python_func on a tiny scenes set, and one kfp.local run with a checkpoint."""

from pathlib import Path

import pytest
import torch
from kfp import dsl
from torch import nn

from components.detection import detection
from sslcore.benchmarks.metrics import read_metrics
from tests.components.local_run import run_component_locally

SMALL = {"iterations": 2, "batch_size": 2, "num_test": 3}


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from sslcore.data.scenes import build_fashion_mnist_scenes

    out = tmp_path_factory.mktemp("detection_scenes")
    build_fashion_mnist_scenes(out, num_trainval=16, num_test=8)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A pretrain-output directory: a checkpoint of the thin sslcore trunk with its trunk config."""
    from sslcore.engine.checkpoint import save_checkpoint
    from sslcore.models.trunks.resnet import ResNeXt

    resnets = {"DEPTH": 18, "WIDTH_MULTIPLIER": 0.125, "STEM": "small", "NORM": "BatchNorm", "GROUPS": 1,
               "WIDTH_PER_GROUP": 64}
    model = nn.ModuleDict({"trunk": ResNeXt(depth=18, width_multiplier=0.125, stem="small")})
    root = tmp_path_factory.mktemp("detection_model") / "model"
    root.mkdir()
    save_checkpoint(root / "model_final_checkpoint_phase0.torch", model=model,
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1), method_state={}, phase_idx=0,
                    iteration=1, phase_complete=True, iteration_in_phase=1,
                    config={"MODEL": {"TRUNK": {"NAME": "resnet", "RESNETS": resnets}}})
    return root


def _artifact(cls, path: Path, **metadata):
    return cls(name=path.name, uri=str(path), metadata=dict(metadata))


def test_python_func_runs_random_init_and_logs_one_metric_per_record(tmp_path, scenes):
    metrics = _artifact(dsl.Metrics, tmp_path / "metrics")
    detection.python_func(dataset=_artifact(dsl.Dataset, scenes), metrics=metrics, **SMALL)
    written = read_metrics(tmp_path / "metrics")
    assert written["benchmark"] == "detection" and written["sizes"] == {"num_train": 16, "num_test": 3}
    assert metrics.metadata == {f"random_{r['name']}": r["value"] for r in written["records"]}
    assert set(metrics.metadata) == {"random_AP50", "random_mAP", "random_AP75"}
    for name in ("per_class_ap50.json", "examples.json", "train_log.json"):
        assert (tmp_path / "metrics" / name).is_file()


@pytest.mark.slow
def test_runs_through_kfp_local_with_a_checkpoint(tmp_path, scenes, model_dir):
    out = run_component_locally(detection, tmp_path, artifacts={"dataset": (dsl.Dataset, scenes),
                                                                "checkpoint": (dsl.Model, model_dir)}, **SMALL)
    written = read_metrics(out["metrics"])
    assert [r["name"] for r in written["records"]] == ["AP50", "mAP", "AP75"]
    assert all(r["params"]["init"] == "pretrained" for r in written["records"])
    assert written["checkpoint"].endswith("checkpoint.torch")
