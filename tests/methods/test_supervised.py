"""Label-driven training: the cross-entropy losses against plain log-softmax arithmetic, the
Supervised method, its recipes, and real runs (2 epochs, resume, 2 processes == 1 process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from sslcore.config import compose_config
from sslcore.config.infer import infer_config
from sslcore.engine.launcher import run_engine
from sslcore.losses import LOSSES, build_loss
from sslcore.losses.cross_entropy import (
    CrossEntropyLoss,
    CrossEntropyMultipleOutputSingleTargetLoss,
)
from sslcore.methods import get_method_class
from sslcore.methods.supervised import Supervised
from sslcore.optim.schedulers import build_param_scheduler

RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "sslcore/config/pretrain/"
                                  "supervised").glob("*.yaml"))
QUICK = ["config=pretrain/supervised/quick_supervised"]


def reference_ce(logits, target, *, weight=None, ignore_index=-100, smoothing=0.0, reduction="mean"):
    """Cross-entropy written out from log-softmax, one sample at a time.

    loss_i = -sum_k q_ik w_k log p_ik with q = (1-eps) onehot(y_i) + eps/K; 'mean' divides by
    sum_i w_{y_i} over the kept samples (torch's weighted mean).
    """
    classes = logits.shape[1]
    w = torch.ones(classes, dtype=logits.dtype) if weight is None else torch.tensor(weight, dtype=logits.dtype)
    total, norm = logits.new_zeros(()), logits.new_zeros(())
    for x, y in zip(logits, target.tolist()):
        if y == ignore_index:
            continue
        logp = x - torch.log(torch.exp(x).sum())
        q = torch.full((classes,), smoothing / classes, dtype=logits.dtype)
        q[y] += 1 - smoothing
        total = total - (q * w * logp).sum()
        norm = norm + w[y]
    return total / norm if reduction == "mean" else total


@pytest.mark.parametrize("num_outputs", [1, 3])
@pytest.mark.parametrize("temperature, normalize", [(1.0, False), (0.1, True), (2.0, False)])
@pytest.mark.parametrize("smoothing, reduction", [(0.0, "mean"), (0.2, "mean"), (0.0, "sum")])
def test_multiple_output_loss_and_gradient_match_reference(num_outputs, temperature, normalize,
                                                            smoothing, reduction):
    torch.manual_seed(num_outputs)
    batch, classes = 7, 5
    target = torch.randint(classes, (batch,))
    target[2] = -1  # ignored
    weight = [0.5, 1.0, 2.0, 1.5, 0.25]
    outs = [torch.randn(batch, classes, dtype=torch.float64) * 3 for _ in range(num_outputs)]
    mine_in = [o.clone().requires_grad_(True) for o in outs]
    ref_in = [o.clone().requires_grad_(True) for o in outs]
    loss_fn = CrossEntropyMultipleOutputSingleTargetLoss(
        weight=weight, ignore_index=-1, reduction=reduction, normalize_output=normalize,
        temperature=temperature, label_smoothing=smoothing).double()
    mine = loss_fn(mine_in if num_outputs > 1 else mine_in[0], target)
    ref = sum(reference_ce((o / o.norm(dim=1, keepdim=True) if normalize else o) / temperature, target,
                           weight=weight, ignore_index=-1, smoothing=smoothing, reduction=reduction)
              for o in ref_in)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), rel=1e-9)
    for a, b in zip(mine_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-10)
        assert a.grad[2].abs().max() == 0  # the ignored sample gives no gradient


@pytest.mark.parametrize("kwargs", [{}, {"ignore_index": 3}, {"label_smoothing": 0.1},
                                    {"weight": [1.0, 2.0, 3.0, 4.0]}, {"reduction": "sum"}])
def test_torch_cross_entropy_by_name_matches_reference(kwargs):
    torch.manual_seed(0)
    logits = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    ref_in = logits.detach().clone().requires_grad_(True)
    target = torch.tensor([0, 3, 1, 2, 3, 1])
    mine = CrossEntropyLoss(**kwargs).double()([logits], target)
    ref = reference_ce(ref_in, target, weight=kwargs.get("weight"),
                       ignore_index=kwargs.get("ignore_index", -100),
                       smoothing=kwargs.get("label_smoothing", 0.0),
                       reduction=kwargs.get("reduction", "mean"))
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), rel=1e-9)
    torch.testing.assert_close(logits.grad, ref_in.grad, rtol=1e-7, atol=1e-10)


def test_probability_targets_are_soft_cross_entropy():
    torch.manual_seed(1)
    logits = torch.randn(4, 3, dtype=torch.float64)
    probs = torch.softmax(torch.randn(4, 3, dtype=torch.float64), dim=1)
    expected = -(probs * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    got = CrossEntropyMultipleOutputSingleTargetLoss()(logits, probs)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_errors_name_the_problem():
    loss = CrossEntropyMultipleOutputSingleTargetLoss()
    with pytest.raises(ValueError, match=r"labels \[4\] are outside \[0, 4\).*5 wide"):
        loss(torch.randn(3, 4), torch.tensor([0, 4, -1]))
    with pytest.raises(ValueError, match="3 rows but the target has 2"):
        loss(torch.randn(3, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="cross_entropy_multiple_output_single_target for several"):
        CrossEntropyLoss()([torch.randn(2, 3)] * 2, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        CrossEntropyMultipleOutputSingleTargetLoss(temperature=0.0)
    with pytest.raises(ValueError, match="weight has 2 entries"):
        CrossEntropyLoss(weight=[1.0, 2.0])(torch.randn(2, 3), torch.tensor([0, 1]))


def test_losses_and_method_are_registered_and_built_from_config():
    cfg = compose_config(["config.LOSS.name=cross_entropy_multiple_output_single_target",
                          "config.LOSS.cross_entropy_multiple_output_single_target.temperature=0.5",
                          "config.LOSS.cross_entropy_multiple_output_single_target.weight=[1.0,2.0]"])
    loss = build_loss(cfg.LOSS)
    assert isinstance(loss, CrossEntropyMultipleOutputSingleTargetLoss)
    assert loss.temperature == 0.5 and loss.ignore_index == -1  # VISSL's default
    assert loss.weight.tolist() == [1.0, 2.0]
    cfg = compose_config(["config.LOSS.name=CrossEntropyLoss",
                          "config.LOSS.CrossEntropyLoss.ignore_index=-1"])
    assert build_loss(cfg.LOSS).ignore_index == -1
    assert LOSSES.get("CrossEntropyLoss") is CrossEntropyLoss
    for name in ("CrossEntropyLoss", "cross_entropy_multiple_output_single_target"):
        assert get_method_class(name) is Supervised
    with pytest.raises(ValueError, match="reduction"):
        compose_config(["config.LOSS.CrossEntropyLoss.reduction=none"])


def test_method_trains_views_against_their_labels_and_rejects_lost_labels():
    model = torch.nn.Linear(3, 2)
    wrapped = lambda x: [model(torch.cat(x) if isinstance(x, list) else x)]  # noqa: E731
    method = Supervised(compose_config(QUICK), wrapped, CrossEntropyMultipleOutputSingleTargetLoss())
    x = torch.randn(4, 3)
    one = {"data": [x], "label": torch.tensor([0, 1, 1, 0])}
    out = method.forward(None, one)
    expected = torch.nn.functional.cross_entropy(model(x), one["label"])
    assert method.compute_loss(None, out, one).item() == pytest.approx(expected.item())
    two_views = {"data": [x, x], "label": torch.tensor([0, 1, 1, 0])}  # default_collate, 2 views
    with pytest.raises(ValueError, match="simclr_collator"):
        method.compute_loss(None, method.forward(None, two_views), two_views)


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes_and_resolves(recipe):
    cfg = compose_config([f"config=pretrain/supervised/{recipe}"])
    resolved, _ = infer_config(cfg, world_size=8, local_world_size=8, cuda_available=True)
    lr = OmegaConf.to_container(resolved.OPTIMIZER.param_schedulers.lr)
    assert build_param_scheduler(lr, int(resolved.OPTIMIZER.num_epochs))(0.5) > 0
    assert resolved.LOSS.name in Supervised.loss_names


def test_imagenet_recipe_has_vissl_values():
    cfg = compose_config(["config=pretrain/supervised/supervised_8gpu_resnet"])
    assert cfg.MODEL.TRUNK.RESNETS.DEPTH == 50 and cfg.MODEL.HEAD.PARAMS[0][1]["dims"] == [2048, 1000]
    assert cfg.OPTIMIZER.num_epochs == 90 and cfg.OPTIMIZER.nesterov
    assert cfg.OPTIMIZER.param_schedulers.lr.milestones == [30, 60]
    assert cfg.DISTRIBUTED.NUM_PROC_PER_NODE * cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA == 256


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def _weights(path):
    return torch.load(path, weights_only=True)["classy_state_dict"]["base_model"]["model"]


def test_quick_recipe_trains_two_epochs_and_resumes_exactly(tmp_path):
    straight = run_engine(QUICK + [f"config.CHECKPOINT.DIR={tmp_path / 'a'}"])
    losses = [r["loss"] for r in _records(tmp_path / "a")]
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(losses)))
    resumed_dir = tmp_path / "b"
    run_engine(QUICK + [f"config.CHECKPOINT.DIR={resumed_dir}"])
    for f in resumed_dir.glob("model_final*"):
        f.unlink()
    os.replace(resumed_dir / "checkpoint.torch", resumed_dir / "old_link")
    os.symlink("model_phase0.torch", resumed_dir / "checkpoint.torch")
    final = run_engine(QUICK + [f"config.CHECKPOINT.DIR={resumed_dir}"])
    assert [r["iteration"] for r in _records(resumed_dir)[8:]] == [5, 6, 7, 8]
    a, b = _weights(straight), _weights(final)
    for part in ("trunk", "heads"):
        for key in a[part]:
            torch.testing.assert_close(a[part][key], b[part][key], rtol=1e-5, atol=1e-6)


def _fmnist(data_dir, limit, batch):
    return [f"config.DATA.TRAIN.DATA_SOURCES=[disk_filelist]",
            f"config.DATA.TRAIN.DATA_PATHS=[{data_dir}/train_images.npy]",
            f"config.DATA.TRAIN.LABEL_SOURCES=[disk_filelist]",
            f"config.DATA.TRAIN.LABEL_PATHS=[{data_dir}/train_labels.npy]",
            f"config.DATA.TRAIN.DATA_LIMIT={limit}", f"config.DATA.TRAIN.BATCHSIZE_PER_REPLICA={batch}"]


def test_quick_recipe_learns_fashion_mnist_labels(fmnist_small, tmp_path):
    """On real images (the synthetic ones are noise) the class loss falls within 2 epochs."""
    run_engine(QUICK + _fmnist(fmnist_small, 256, 32) + [
        "config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,10]}]]", f"config.CHECKPOINT.DIR={tmp_path}"])
    losses = [r["loss"] for r in _records(tmp_path)]
    assert len(losses) == 16
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert first > 2.0 and last < first - 0.3, losses


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """GroupNorm trunk, head without BatchNorm: 2 gloo processes x 8 == 1 process x 16."""
    # LR 0.02: at the recipe's 0.1 float summation-order noise (~1e-7) grows to ~1e-4 in 4 steps
    common = QUICK + ["config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
                      "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=32",
                      "config.OPTIMIZER.param_schedulers.lr.value=0.02"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    results = {}
    for nproc, batch in ((1, 16), (2, 8)):
        out = tmp_path / str(nproc)
        args = ["-m", "sslcore.cli", "train", *common, f"config.CHECKPOINT.DIR={out}",
                f"config.DATA.TRAIN.BATCHSIZE_PER_REPLICA={batch}"]
        if nproc > 1:
            args = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] + args
        done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        results[nproc] = (_records(out), _weights(out / "checkpoint.torch"))
    (one_log, one), (two_log, two) = results[1], results[2]
    assert [r["iteration"] for r in one_log] == [r["iteration"] for r in two_log] == [1, 2, 3, 4]
    for a, b in zip(one_log, two_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    for part in ("trunk", "heads"):
        flat1 = torch.cat([one[part][k].flatten().float() for k in one[part]])
        flat2 = torch.cat([two[part][k].flatten().float() for k in one[part]])
        assert ((flat1 - flat2).norm() / flat1.norm()).item() < 1e-4
