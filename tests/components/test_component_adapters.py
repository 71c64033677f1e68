"""Component bodies called as plain Python functions (``component.python_func``).

The adapters are checked for what they add on top of sslcore: directories created at the
artifact paths, the overrides they bind (data paths, checkpoint, output dirs, in an order where
the artifact bindings win), metadata, and KFP metrics named after the protocol parameters. The
kNN and linear adapters run the real benchmarks on small synthetic features; the stages whose
sslcore call trains or reads Fashion-MNIST get a recording stand-in (the real calls are covered
by the local pipeline run in tests/pipelines).
"""

import json
from pathlib import Path
from typing import Any, Dict, List

import numpy as np
import pytest
from kfp import dsl

import sslcore.engine.extract
import sslcore.engine.launcher
import sslcore.report
from components.data_copy import data_copy
from components.extract_features import extract_features
from components.knn import knn
from components.linear import linear
from components.pretrain import pretrain
from components.report import report
from sslcore.benchmarks.features import save_features


def _artifact(cls, path: Path, **metadata):
    return cls(name=path.name, uri=str(path), metadata=dict(metadata))


@pytest.fixture
def engine_calls(monkeypatch) -> List[Dict[str, Any]]:
    """Replace run_engine with a recorder that creates what the engine would return."""
    calls: List[Dict[str, Any]] = []

    def fake_run_engine(overrides, engine_name="train"):
        calls.append({"overrides": list(overrides), "engine_name": engine_name})
        values = dict(o.split("=", 1) for o in overrides if o.startswith("config."))
        if engine_name == "train":
            final = Path(values["config.CHECKPOINT.DIR"]) / "model_final_checkpoint_phase0.torch"
            final.write_bytes(b"")
            return final
        out = Path(values["config.EXTRACT_FEATURES.OUTPUT_DIR"])
        for split in ("train", "test"):
            (out / f"{split}_res5avg_features.npy").write_bytes(b"")
        return out

    monkeypatch.setattr(sslcore.engine.launcher, "run_engine", fake_run_engine)
    return calls


def _dataset(tmp_path: Path) -> dsl.Dataset:
    path = tmp_path / "dataset"
    path.mkdir()
    return _artifact(dsl.Dataset, path)


def _synthetic_features(path: Path, layer: str, *, num_train=300, num_test=100, dim=8) -> Path:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, dim)) * 4
    for split, n in (("train", num_train), ("test", num_test)):
        labels = np.arange(n) % 3
        x = centers[labels] + rng.normal(size=(n, dim))
        save_features(path, split, layer, x, labels, np.arange(n))
    return path


def test_data_copy_passes_limits_and_records_the_manifest(tmp_path, monkeypatch):
    calls = []

    def fake_prepare(source, out_dir, *, limit_train=None, limit_test=None):
        calls.append((source, Path(out_dir), limit_train, limit_test))
        return {"name": "fashion_mnist", "splits": {"train": {"num_images": 8}}, "classes": ["a"],
                "num_files": 9, "listing_digest": "abc", "content": {"ignored": True}}

    import sslcore.data.prepare

    monkeypatch.setattr(sslcore.data.prepare, "prepare_dataset", fake_prepare)
    out = _artifact(dsl.Dataset, tmp_path / "out")
    data_copy.python_func(source="fashion_mnist", dataset=out, limit_train=8, limit_test=0)
    assert calls == [("fashion_mnist", tmp_path / "out", 8, None)]
    assert out.metadata == {"name": "fashion_mnist", "splits": {"train": {"num_images": 8}},
                            "classes": ["a"], "num_files": 9, "listing_digest": "abc"}


def test_pretrain_binds_data_and_checkpoint_dir_after_user_overrides(tmp_path, engine_calls):
    dataset = _dataset(tmp_path)
    model = _artifact(dsl.Model, tmp_path / "model")
    pretrain.python_func(dataset=dataset, config="pretrain/simclr/x", model=model,
                         overrides=["config.OPTIMIZER.num_epochs=1", "config.CHECKPOINT.DIR=/nope"])
    (call,) = engine_calls
    assert call["engine_name"] == "train"
    overrides = call["overrides"]
    assert overrides[:3] == ["config=pretrain/simclr/x", "config.OPTIMIZER.num_epochs=1",
                             "config.CHECKPOINT.DIR=/nope"]
    assert overrides[-1] == f"config.CHECKPOINT.DIR={model.path}"  # the artifact wins
    assert f"config.DATA.TRAIN.DATA_PATHS=[{dataset.path}/train_images.npy]" in overrides
    assert f"config.DATA.TRAIN.LABEL_PATHS=[{dataset.path}/train_labels.npy]" in overrides
    assert model.metadata["checkpoint_file"] == "model_final_checkpoint_phase0.torch"
    assert model.metadata["config"] == "pretrain/simclr/x"


def test_pretrain_on_clusterfit_labels_trains_on_them_in_place(tmp_path, engine_calls):
    dataset = _dataset(tmp_path)
    labels = _artifact(dsl.Artifact, tmp_path / "labels")
    Path(labels.path).mkdir()
    for name in ("fm_train_N8_faiss_lbls.npy", "fm_test_N8_faiss_lbls.npy"):
        np.save(Path(labels.path) / name, np.zeros(4, dtype=np.int64))
    pretrain.python_func(dataset=dataset, config="c", model=_artifact(dsl.Model, tmp_path / "m"),
                         labels=labels)
    overrides = engine_calls[0]["overrides"]
    assert f"config.DATA.TRAIN.LABEL_PATHS=[{labels.path}/fm_train_N8_faiss_lbls.npy]" in overrides
    assert not list(Path(dataset.path).iterdir())  # the input dataset is left untouched
    (Path(labels.path) / "fm_train_N8_faiss_lbls.npy").unlink()
    with pytest.raises(ValueError, match="expected one \\*_train_\\*_lbls.npy"):
        pretrain.python_func(dataset=dataset, config="c", model=_artifact(dsl.Model, tmp_path / "m"),
                             labels=labels)


def test_pretrain_without_overrides(tmp_path, engine_calls):
    pretrain.python_func(dataset=_dataset(tmp_path), config="c",
                         model=_artifact(dsl.Model, tmp_path / "model"))
    assert engine_calls[0]["overrides"][0] == "config=c"


def test_extract_from_checkpoint_loads_the_named_file(tmp_path, engine_calls):
    dataset = _dataset(tmp_path)
    ckpt = _artifact(dsl.Model, tmp_path / "model", checkpoint_file="model_final.torch")
    features = _artifact(dsl.Artifact, tmp_path / "features")
    extract_features.python_func(source="checkpoint", dataset=dataset, features=features,
                                 config="c", overrides=["config.X=1"], checkpoint=ckpt)
    (call,) = engine_calls
    assert call["engine_name"] == "extract_features"
    overrides = call["overrides"]
    assert overrides[:2] == ["config=c", "config.X=1"]
    for expected in (
        f"config.MODEL.WEIGHTS_INIT.PARAMS_FILE={tmp_path}/model/model_final.torch",
        "config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
        "config.MODEL.FEATURE_EVAL_SETTINGS.EXTRACT_TRUNK_FEATURES_ONLY=true",
        f"config.EXTRACT_FEATURES.OUTPUT_DIR={features.path}",
        f"config.DATA.TRAIN.DATA_PATHS=[{dataset.path}/train_images.npy]",
        f"config.DATA.TEST.DATA_PATHS=[{dataset.path}/test_images.npy]",
        f"config.DATA.TEST.LABEL_PATHS=[{dataset.path}/test_labels.npy]",
    ):
        assert expected in overrides
    assert features.metadata == {"source": "checkpoint", "layers": ["res5avg"]}


def test_extract_from_a_checkpoint_uri(tmp_path, engine_calls):
    features = _artifact(dsl.Artifact, tmp_path / "features")
    extract_features.python_func(source="checkpoint", dataset=_dataset(tmp_path), config="c",
                                 features=features, checkpoint_uri="s3://runs/r1/final.torch")
    assert "config.MODEL.WEIGHTS_INIT.PARAMS_FILE=s3://runs/r1/final.torch" in \
        engine_calls[0]["overrides"]


def test_extract_random_init_has_no_weights(tmp_path, engine_calls):
    features = _artifact(dsl.Artifact, tmp_path / "features")
    extract_features.python_func(source="random_init", dataset=_dataset(tmp_path),
                                 features=features, config="c")
    assert "config.MODEL.WEIGHTS_INIT.PARAMS_FILE=" in engine_calls[0]["overrides"]
    assert features.metadata["source"] == "random_init"


def test_extract_raw_pixels(tmp_path, monkeypatch, engine_calls):
    calls = []

    def fake_pixels(data_dir, out_dir):
        calls.append((data_dir, out_dir))
        _synthetic_features(Path(out_dir), "pixels", num_train=3, num_test=3)
        return Path(out_dir)

    monkeypatch.setattr(sslcore.engine.extract, "extract_raw_pixel_features", fake_pixels)
    dataset = _dataset(tmp_path)
    features = _artifact(dsl.Artifact, tmp_path / "features")
    extract_features.python_func(source="raw_pixels", dataset=dataset, features=features)
    assert calls == [(dataset.path, features.path)]
    assert engine_calls == []
    assert features.metadata == {"source": "raw_pixels", "layers": ["pixels"]}


@pytest.mark.parametrize("source, with_checkpoint, uri, config, message", [
    ("imagenet", False, "", "c", "unknown"),
    ("checkpoint", False, "", "c", "only when"),
    ("checkpoint", True, "s3://b/c.torch", "c", "only when"),
    ("random_init", True, "", "c", "only when"),
    ("random_init", False, "s3://b/c.torch", "c", "only when"),
    ("raw_pixels", True, "", "", "only when"),
    ("random_init", False, "", "", "needs `config`"),
])
def test_extract_rejects_inconsistent_arguments(tmp_path, engine_calls, source, with_checkpoint,
                                                uri, config, message):
    ckpt = _artifact(dsl.Model, tmp_path / "model") if with_checkpoint else None
    with pytest.raises(ValueError, match=message):
        extract_features.python_func(source=source, dataset=_dataset(tmp_path), config=config,
                                     features=_artifact(dsl.Artifact, tmp_path / "f"),
                                     checkpoint=ckpt, checkpoint_uri=uri)
    assert engine_calls == []


def test_knn_writes_metrics_json_and_logs_named_metrics(tmp_path):
    features = _artifact(dsl.Artifact, _synthetic_features(tmp_path / "features", "res5avg"))
    metrics = _artifact(dsl.Metrics, tmp_path / "metrics")
    knn.python_func(features=features, metrics=metrics)
    written = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert written["benchmark"] == "knn"
    assert set(metrics.metadata) == {"top1_k200_T0.1", "top5_k200_T0.1",
                                     "top1_k20_T0.07", "top5_k20_T0.07"}
    assert all(0 <= v <= 100 for v in metrics.metadata.values())
    assert metrics.metadata["top1_k20_T0.07"] > 90  # well separated clusters


def test_knn_reads_the_requested_layer(tmp_path):
    features = _artifact(dsl.Artifact, _synthetic_features(tmp_path / "features", "pixels"))
    metrics = _artifact(dsl.Metrics, tmp_path / "metrics")
    knn.python_func(features=features, metrics=metrics, layer="pixels")
    written = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert {r["layer"] for r in written["records"]} == {"pixels"}


@pytest.mark.parametrize("epochs", [0, 2])
def test_linear_passes_epochs_only_when_set(tmp_path, monkeypatch, epochs):
    import sslcore.benchmarks.linear as linear_module

    seen = {}
    real = linear_module.run_linear_benchmark

    def spy(features_dir, out_dir, **kwargs):
        seen.update(kwargs)
        return real(features_dir, out_dir, **{**kwargs, "epochs": kwargs.get("epochs", 2)})

    monkeypatch.setattr(linear_module, "run_linear_benchmark", spy)
    features = _artifact(dsl.Artifact, _synthetic_features(tmp_path / "features", "res5avg"))
    metrics = _artifact(dsl.Metrics, tmp_path / "metrics")
    linear.python_func(features=features, metrics=metrics, epochs=epochs)
    assert seen == ({"layer": "res5avg", "epochs": 2} if epochs else {"layer": "res5avg"})
    written = json.loads((tmp_path / "metrics" / "metrics.json").read_text())
    assert written["benchmark"] == "linear"
    assert set(metrics.metadata) == {"top1", "top5"}
    assert all(0 <= v <= 100 for v in metrics.metadata.values())


def _report_inputs(tmp_path: Path) -> Dict[str, Any]:
    inputs = {}
    for i, name in enumerate(f"{m}_{b}" for m in ("pretrained", "random_init", "raw_pixels")
                             for b in ("knn", "linear")):
        path = tmp_path / name
        path.mkdir()
        record = {"name": "top1", "value": 10.0 + i, "unit": "%", "layer": "res5avg",
                  "params": {"k": 20, "T": 0.07} if name.endswith("knn") else {"epochs": 2}}
        (path / "metrics.json").write_text(json.dumps(
            {"benchmark": name.rsplit("_", 1)[1], "records": [record]}))
        inputs[name] = _artifact(dsl.Metrics, path)
    ckpt = tmp_path / "model"
    ckpt.mkdir()
    (ckpt / "stdout.json").write_text('{"iteration": 1, "phase_idx": 0, "loss": 5.0, "lr": 0.1}\n')
    (ckpt / "train_config.yaml").write_text("config:\n  SEED_VALUE: 0\n")
    inputs["checkpoint"] = _artifact(dsl.Model, ckpt, checkpoint_file="model_final.torch")
    return inputs


def test_report_gathers_rows_with_model_names(tmp_path, monkeypatch):
    calls = {}

    def fake_table(rows):
        calls["table"] = rows
        return "TABLE"

    def fake_html(out_path, *, title, metrics, train_log, config_yaml, notes, result_dirs):
        calls["html"] = dict(out_path=out_path, title=title, metrics=metrics, train_log=train_log,
                             config_yaml=config_yaml, notes=notes, result_dirs=result_dirs)
        Path(out_path).write_text("<html></html>")
        return Path(out_path)

    monkeypatch.setattr(sslcore.report, "format_metrics_table", fake_table, raising=False)
    monkeypatch.setattr(sslcore.report, "write_html_report", fake_html, raising=False)
    inputs = _report_inputs(tmp_path)
    html = _artifact(dsl.HTML, tmp_path / "out" / "report")
    (tmp_path / "out").mkdir()
    summary = _artifact(dsl.Artifact, tmp_path / "summary")
    report.python_func(html=html, summary=summary, title="T", **inputs)

    rows = calls["table"]
    assert [r["model"] for r in rows] == ["pretrained", "pretrained", "random init",
                                          "random init", "raw pixels", "raw pixels"]
    assert [r["benchmark"] for r in rows] == ["knn", "linear"] * 3
    assert calls["html"]["metrics"] == rows
    assert [(m, b) for m, b, _ in calls["html"]["result_dirs"]] == [
        (r["model"], r["benchmark"]) for r in rows]
    assert calls["html"]["train_log"] == str(tmp_path / "model" / "stdout.json")
    assert calls["html"]["config_yaml"].startswith("config:")
    assert calls["html"]["title"] == "T"
    written = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert written == {"title": "T", "table": "TABLE", "rows": rows,
                       "checkpoint_file": "model_final.torch", "checkpoint_uri": None}


def test_report_leaves_out_switched_off_benchmarks(tmp_path):
    inputs = _report_inputs(tmp_path)
    off = tmp_path / "svm_off"
    off.mkdir()
    (off / "metrics.json").write_text(json.dumps({"benchmark": "svm", "records": [],
                                                  "skipped": "run_svm is false"}))
    summary = _artifact(dsl.Artifact, tmp_path / "summary")
    report.python_func(html=_artifact(dsl.HTML, tmp_path / "r.html"), summary=summary,
                       pretrained_svm=_artifact(dsl.Metrics, off), **inputs)
    rows = json.loads((tmp_path / "summary" / "summary.json").read_text())["rows"]
    assert len(rows) == 6 and "svm" not in {r["benchmark"] for r in rows}


def test_report_of_a_benchmark_run_publishes_the_summary_to_results_uri(tmp_path):
    inputs = _report_inputs(tmp_path)
    pretrained = {k: v for k, v in inputs.items() if k.startswith("pretrained_")}
    html = _artifact(dsl.HTML, tmp_path / "report.html")
    summary = _artifact(dsl.Artifact, tmp_path / "summary")
    results = tmp_path / "results" / "run-1"
    report.python_func(html=html, summary=summary, checkpoint_uri="s3://runs/r/model.torch",
                       results_uri=str(results), **pretrained)
    published = json.loads((results / "summary.json").read_text())
    assert published == json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert [r["model"] for r in published["rows"]] == ["pretrained", "pretrained"]
    assert published["checkpoint_uri"] == "s3://runs/r/model.torch"
    assert published["checkpoint_file"] == "model.torch"
    assert "random init" not in Path(html.path).read_text()


def test_report_with_the_real_sslcore_report(tmp_path):
    inputs = _report_inputs(tmp_path)
    html = _artifact(dsl.HTML, tmp_path / "report.html")
    summary = _artifact(dsl.Artifact, tmp_path / "summary")
    report.python_func(html=html, summary=summary, **inputs)
    page = Path(html.path).read_text()
    assert "<html" in page.lower() and "raw pixels" in page
    written = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert "raw pixels" in written["table"] and len(written["rows"]) == 6
