"""Linear evaluation (eval_mlp head on frozen features): learns what is learnable, nothing more."""

import numpy as np
import pytest
import torch

from sslcore.benchmarks.features import save_features
from sslcore.benchmarks.linear import predict_scores, run_linear_benchmark, train_linear_classifier
from sslcore.benchmarks.metrics import read_metrics
from sslcore.models.heads.eval_mlp import LinearEvalMLP


def _blobs(n_per_class, num_classes=4, dim=20, seed=0, scale=1.0):
    """Gaussian blobs around well-separated means: linearly separable up to noise ``scale``."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim)) * 6.0
    labels = np.repeat(np.arange(num_classes), n_per_class)
    feats = means[labels] + rng.normal(scale=scale, size=(len(labels), dim)) + 50.0  # offset: BN copes
    return feats.astype(np.float32), labels


def _write(root, layer, train, train_y, test, test_y):
    save_features(root, "train", layer, train, train_y, np.arange(len(train)))
    save_features(root, "test", layer, test, test_y, np.arange(len(test)))


def test_separable_problem_reaches_full_accuracy(tmp_path):
    train, train_y = _blobs(100, seed=0)
    test, test_y = _blobs(25, seed=0)
    test += np.random.default_rng(9).normal(scale=0.1, size=test.shape).astype(np.float32)
    _write(tmp_path / "feats", "res5avg", train, train_y, test, test_y)
    result = run_linear_benchmark(tmp_path / "feats", tmp_path / "out", batch_size=32, epochs=10,
                                  milestones=[6, 8])
    values = {r["name"]: r["value"] for r in result["records"]}
    assert values["top1"] >= 99.0 and values["top5"] == 100.0
    params = result["records"][0]["params"]
    assert params["epochs"] == 10 and params["batch_size"] == 32 and params["milestones"] == [6, 8]
    assert params["nesterov"] is True and params["momentum"] == 0.9 and params["schedule"] == "multistep"
    assert result == read_metrics(tmp_path / "out") and result["benchmark"] == "linear"


def test_random_labels_stay_near_chance(tmp_path):
    rng = np.random.default_rng(1)
    num_classes = 4
    train, test = rng.normal(size=(800, 32)), rng.normal(size=(800, 32))
    train_y, test_y = rng.integers(0, num_classes, 800), rng.integers(0, num_classes, 800)
    _write(tmp_path, "res5avg", train, train_y, test, test_y)
    result = run_linear_benchmark(tmp_path, tmp_path / "out", batch_size=64, epochs=10, milestones=[6])
    top1 = next(r["value"] for r in result["records"] if r["name"] == "top1")
    assert 15.0 <= top1 <= 35.0  # chance is 25%; 800 samples give a std of about 1.5 points


def test_training_is_deterministic_and_leaves_global_state(tmp_path):
    train, train_y = _blobs(30, seed=2, scale=4.0)
    rng_before, threads_before = torch.get_rng_state(), torch.get_num_threads()
    heads = [train_linear_classifier(train, train_y, num_classes=4, epochs=3, batch_size=16, seed=s,
                                     device="cpu") for s in (7, 7, 8)]
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert torch.get_num_threads() == threads_before
    first, again, other = (torch.cat([p.flatten() for p in h.parameters()]) for h in heads)
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert isinstance(heads[0], LinearEvalMLP) and not heads[0].training


def test_small_set_trains_in_one_batch_and_predicts_logits():
    train, train_y = _blobs(3, num_classes=3, seed=3)
    head = train_linear_classifier(train, train_y, num_classes=3, epochs=2, batch_size=256, device="cpu")
    scores = predict_scores(head, train, batch_size=4)
    assert scores.shape == (9, 3) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, predict_scores(head, train), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    ({"epochs": 0}, "epochs >= 1"),
    ({"batch_size": 1}, "batch_size >= 2"),
    ({"lr": 0.0}, "lr > 0"),
    ({"milestones": [5, 2]}, "increasing"),
    ({"num_classes": 2}, r"\[0, 2\)"),
])
def test_train_rejects_bad_arguments(kwargs, match):
    train, train_y = _blobs(5, seed=4)
    args = {"num_classes": 4, **kwargs}
    with pytest.raises(ValueError, match=match):
        train_linear_classifier(train, train_y, **args)


def test_benchmark_rejects_multilabel_and_mismatched_dims(tmp_path):
    train, train_y = _blobs(5, seed=5)
    multi = np.eye(4, dtype=np.int64)[train_y]
    _write(tmp_path / "a", "res5avg", train, multi, train, multi)
    with pytest.raises(ValueError, match="SVM benchmark"):
        run_linear_benchmark(tmp_path / "a", tmp_path / "out", epochs=1)
    _write(tmp_path / "b", "res5avg", train, train_y, train[:, :5], train_y)
    with pytest.raises(ValueError, match="D=20 but test D=5"):
        run_linear_benchmark(tmp_path / "b", tmp_path / "out", epochs=1)
