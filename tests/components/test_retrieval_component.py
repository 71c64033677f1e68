"""The retrieval component: python_func on a tiny Fashion-MNIST subset, and one kfp.local run."""

from pathlib import Path

import pytest
import torch
from kfp import dsl

from components.retrieval import retrieval
from sslcore.benchmarks.metrics import read_metrics
from sslcore.data.fashion_mnist import prepare_fashion_mnist
from tests.components.local_run import run_component_locally

SMALL = {"num_queries": 10, "num_database": 40, "num_whiten": 30}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory) -> Path:
    return prepare_fashion_mnist(tmp_path_factory.mktemp("retrieval_fm") / "data", limit_train=80, limit_test=20,
                                 register_catalog=False)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A pretrain-output directory holding a real (untrained) checkpoint of the thin trunk."""
    from sslcore.benchmarks.retrieval import load_retrieval_model
    from sslcore.engine.checkpoint import save_checkpoint

    model, _ = load_retrieval_model()
    root = tmp_path_factory.mktemp("retrieval_model") / "model"
    root.mkdir()
    save_checkpoint(root / "model_final_checkpoint_phase0.torch", model=model,
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1), method_state={}, phase_idx=0,
                    iteration=1, phase_complete=True, iteration_in_phase=1, config={})
    return root


def _artifact(cls, path: Path, **metadata):
    return cls(name=path.name, uri=str(path), metadata=dict(metadata))


def test_python_func_runs_random_init_and_logs_one_metric_per_record(tmp_path, dataset_dir):
    metrics = _artifact(dsl.Metrics, tmp_path / "metrics")
    retrieval.python_func(dataset=_artifact(dsl.Dataset, dataset_dir), metrics=metrics, descriptor="rmac",
                          whiten=True, **SMALL)
    written = read_metrics(tmp_path / "metrics")
    assert written["benchmark"] == "retrieval"
    assert metrics.metadata == {f"class_{r['name']}".replace("@", "_at_"): r["value"] for r in written["records"]}
    assert set(metrics.metadata) == {"class_mAP", "class_precision_at_1", "class_precision_at_5",
                                     "class_precision_at_10"}
    params = written["records"][0]["params"]
    assert params["descriptor"] == "rmac" and params["whitening"] and params["model"] == "random_init"
    assert (tmp_path / "metrics" / "examples.json").is_file()


@pytest.mark.slow
def test_runs_through_kfp_local_with_a_checkpoint(tmp_path, dataset_dir, model_dir):
    out = run_component_locally(retrieval, tmp_path, artifacts={"dataset": (dsl.Dataset, dataset_dir),
                                                                "checkpoint": (dsl.Model, model_dir)},
                                descriptor="gem", **SMALL)
    written = read_metrics(out["metrics"])
    assert [r["name"] for r in written["records"]] == ["mAP", "precision@1", "precision@5", "precision@10"]
    assert written["records"][0]["params"]["model"] == "checkpoint"
    assert (Path(out["metrics"]) / "thumbnails").is_dir()
