"""The retrieval benchmark end to end on tiny sets: Fashion-MNIST and a generated revisited-layout set."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sslcore.benchmarks.retrieval as retrieval
from sslcore.benchmarks.retrieval import load_retrieval_model, run_retrieval_benchmark
from sslcore.benchmarks.retrieval_data import build_fashion_mnist_set, load_image, load_revisited_ground_truth
from sslcore.cli import main
from sslcore.data.fashion_mnist import prepare_fashion_mnist

SMALL = {"num_queries": 20, "num_database": 60, "num_whiten": 40}


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    return prepare_fashion_mnist(tmp_path_factory.mktemp("fm") / "data", limit_train=120, limit_test=40,
                                 register_catalog=False)


def _revisited(root: Path, fmt: str = "json") -> Path:
    """6 database photos of 2 'landmarks' (colour patterns), 2 queries with boxes, gnd as JSON or pickle."""
    rng = np.random.default_rng(0)
    (root / "jpg").mkdir(parents=True)
    names = [f"img{i}" for i in range(6)]
    for i, name in enumerate(names):
        base = np.zeros((48, 64, 3), np.uint8)
        base[..., i % 2] = 200
        noise = rng.integers(0, 40, size=base.shape, dtype=np.uint8)
        Image.fromarray(base + noise).save(root / "jpg" / f"{name}.jpg")
    gnd = {"imlist": names, "qimlist": ["img0", "img1"],
           "gnd": [{"easy": [2], "hard": [4], "junk": [0], "bbx": [4, 6, 40, 30]},
                   {"easy": [3, 5], "hard": [], "junk": [1], "bbx": [0, 0, 64, 48]}]}
    if fmt == "json":
        (root / "gnd_tiny5.json").write_text(json.dumps(gnd))
    else:
        (root / "gnd_tiny5.pkl").write_bytes(pickle.dumps(gnd))
    return root


def test_fashion_mnist_set_is_stratified_seeded_and_disjoint(fmnist):
    a = build_fashion_mnist_set(fmnist, seed=1, **SMALL)
    b = build_fashion_mnist_set(fmnist, seed=1, **SMALL)
    assert a.indices == b.indices
    db, wh = a.indices["database"]["rows"], a.indices["whiten"]["rows"]
    assert not set(db) & set(wh)
    assert np.bincount(a.indices["database"]["labels"]).tolist() == [6] * 10
    labels = np.load(fmnist / "train_labels.npy")
    for q, gnd in zip(a.indices["queries"]["labels"], a.ground_truth["class"]):
        assert sorted(gnd["ok"]) == [i for i, row in enumerate(db) if labels[row] == q]
    with pytest.raises(ValueError, match="num_database"):
        build_fashion_mnist_set(fmnist, num_queries=10, num_database=200, num_whiten=0)


def test_fashion_mnist_run_writes_metrics_indices_and_examples(fmnist, tmp_path, monkeypatch):
    calls, fits = [], []
    real_describe, real_fit = retrieval.compute_descriptors, retrieval.fit_pca_whitening

    def spy_describe(model, transform, images, **kw):
        out = real_describe(model, transform, images, **kw)
        calls.append(([str(p) for p, _ in images], out))
        return out

    def spy_fit(descriptors, **kw):
        fits.append(descriptors)
        return real_fit(descriptors, **kw)

    monkeypatch.setattr(retrieval, "compute_descriptors", spy_describe)
    monkeypatch.setattr(retrieval, "fit_pca_whitening", spy_fit)
    metrics = run_retrieval_benchmark(tmp_path, data_dir=fmnist, whiten=True, descriptor="gem", seed=0, **SMALL)
    names = [(r["name"], r["params"]["protocol"]) for r in metrics["records"]]
    assert names == [("mAP", "class"), ("precision@1", "class"), ("precision@5", "class"), ("precision@10", "class")]
    assert all(0 <= r["value"] <= 100 and r["unit"] == "%" for r in metrics["records"])
    params = metrics["records"][0]["params"]
    assert params["whitening"] and params["whiten_size"] == 40 and params["model"] == "random_init"
    # whitening was fitted on the whitening images' descriptors, none of them a query or database image
    fitted = [paths for paths, out in calls if any(out is f for f in fits)]
    indices = json.loads((tmp_path / "indices.json").read_text())
    train = np.load(fmnist / "train_images.npy")
    assert fitted == [[str(fmnist / train[i]) for i in indices["whiten"]["rows"]]]
    assert not set(fitted[0]) & set(calls[0][0] + calls[1][0])
    # examples: relevance = same class, from the saved indices
    examples = json.loads((tmp_path / "examples.json").read_text())
    q_labels, db_labels = indices["queries"]["labels"], indices["database"]["labels"]
    for example in examples["examples"]:
        assert len(example["top"]) == 5 and (tmp_path / example["query"]["thumbnail"]).is_file()
        for match in example["top"]:
            assert match["relevant"] == (db_labels[match["id"]] == q_labels[example["query"]["id"]])


def test_revisited_layout_json_and_pickle_behind_the_flag(tmp_path):
    json_root = _revisited(tmp_path / "json")
    pkl_root = _revisited(tmp_path / "pkl", fmt="pkl")
    kw = dict(dataset="tiny5", descriptor="rmac", image_size=32, layer="res4")
    from_json = run_retrieval_benchmark(tmp_path / "out_json", revisited_root=json_root, **kw)
    protocols = {r["params"]["protocol"] for r in from_json["records"]}
    assert protocols == {"easy", "medium", "hard"}
    assert from_json["queries_without_positives"] == {"easy": 0, "medium": 0, "hard": 1}
    with pytest.raises(ValueError, match="allow_pickle=True .*--allow-pickle"):
        run_retrieval_benchmark(tmp_path / "out_pkl", revisited_root=pkl_root, **kw)
    from_pkl = run_retrieval_benchmark(tmp_path / "out_pkl", revisited_root=pkl_root, allow_pickle=True, **kw)
    assert [r["value"] for r in from_pkl["records"]] == [r["value"] for r in from_json["records"]]
    assert load_revisited_ground_truth(pkl_root, "tiny5", allow_pickle=True)["qimlist"] == ["img0", "img1"]
    assert load_image(json_root / "jpg" / "img0.jpg", (4, 6, 40, 30)).size == (36, 24)
    with pytest.raises(ValueError, match="whiten_root"):
        run_retrieval_benchmark(tmp_path / "o", revisited_root=json_root, whiten=True, whiten_root=json_root, **kw)
    whitened = run_retrieval_benchmark(tmp_path / "out_w", revisited_root=json_root, whiten=True,
                                       whiten_root=pkl_root / "jpg", **kw)
    assert whitened["records"][0]["params"]["whiten_size"] == 6


def test_checkpoint_weights_reach_the_trunk(tmp_path):
    from sslcore.engine.checkpoint import save_checkpoint

    model, _ = load_retrieval_model()
    with torch.no_grad():
        for param in model.trunk.parameters():
            param.add_(0.5)
    save_checkpoint(tmp_path / "model.torch", model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    method_state={}, phase_idx=0, iteration=1, phase_complete=True, iteration_in_phase=1, config={})
    loaded, _ = load_retrieval_model(checkpoint=str(tmp_path / "model.torch"))
    fresh, _ = load_retrieval_model()
    for (name, a), b, c in zip(model.trunk.state_dict().items(), loaded.trunk.state_dict().values(),
                               fresh.trunk.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(not torch.equal(a, c) for a, c in zip(model.trunk.parameters(), fresh.trunk.parameters()))


def test_bad_arguments_raise_clear_errors(fmnist, tmp_path, capsys):
    with pytest.raises(ValueError, match="exactly one set"):
        run_retrieval_benchmark(tmp_path)
    with pytest.raises(ValueError, match="spatial"):
        run_retrieval_benchmark(tmp_path, data_dir=fmnist, layer="flatten", **SMALL)
    with pytest.raises(ValueError, match="descriptor"):
        run_retrieval_benchmark(tmp_path, data_dir=fmnist, descriptor="vlad")
    assert main(["benchmark", "retrieval", "--out", str(tmp_path), "--data", str(fmnist)]) == 2
    assert "--random-init" in capsys.readouterr().err
    assert main(["benchmark", "knn", "--out", str(tmp_path)]) == 2
    assert "--features" in capsys.readouterr().err
