"""VICReg: the loss against the paper's formula written out plainly, its gradient, the recipes, a
2-epoch run with resume, and the loss on 2 processes against 1 process on the global batch."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from sslcore.config import compose_config
from sslcore.losses import build_loss
from sslcore.losses.vicreg import VICRegLoss
from sslcore.methods import get_method_class

QUICK = "pretrain/vicreg/quick_vicreg"
RECIPES = ["pretrain/vicreg/vicreg_4node_resnet", "pretrain/vicreg/vicreg_fashion_mnist", QUICK]


def plain_vicreg(z: np.ndarray, sim: float, std: float, cov: float, eps: float = 1e-4) -> float:
    """The paper's Eq. 1-6 with loops: z is (2N, D), view 0 of N images then view 1."""
    n, d = z.shape[0] // 2, z.shape[1]
    a, b = z[:n], z[n:]
    invariance = sum((a[k, j] - b[k, j]) ** 2 for k in range(n) for j in range(d)) / (n * d)

    def variance(x):
        hinge = 0.0
        for j in range(d):
            mean = sum(x[k, j] for k in range(n)) / n
            var = sum((x[k, j] - mean) ** 2 for k in range(n)) / (n - 1)
            hinge += max(0.0, 1.0 - math.sqrt(var + eps))
        return hinge / d

    def covariance(x):
        mean = x.mean(0)
        total = 0.0
        for i in range(d):
            for j in range(d):
                if i != j:
                    c_ij = sum((x[k, i] - mean[i]) * (x[k, j] - mean[j]) for k in range(n)) / (n - 1)
                    total += c_ij ** 2
        return total / d

    return sim * invariance + std * (variance(a) + variance(b)) / 2 + cov * (covariance(a) + covariance(b))


@pytest.mark.parametrize("n, d, coeffs, scale", [
    (8, 4, (25.0, 25.0, 1.0), 0.3),   # small features: the variance hinge is active
    (6, 5, (25.0, 25.0, 1.0), 3.0),   # large features: hinge inactive, covariance dominates
    (10, 3, (1.0, 0.0, 2.0), 1.0),
])
def test_loss_matches_the_plain_formula(n, d, coeffs, scale):
    torch.manual_seed(n + d)
    z = torch.randn(2 * n, d, dtype=torch.float64) * scale
    loss = VICRegLoss(*coeffs, embedding_dim=d)(z)
    assert loss.item() == pytest.approx(plain_vicreg(z.numpy(), *coeffs), rel=1e-10)


def test_gradient_matches_finite_differences():
    torch.manual_seed(0)
    z = (torch.randn(2 * 6, 4, dtype=torch.float64) * 0.7).requires_grad_()
    assert torch.autograd.gradcheck(VICRegLoss(2.0, 3.0, 0.5), (z,), eps=1e-6, atol=1e-6)


def test_each_term_responds_to_its_own_failure():
    torch.manual_seed(0)
    good = torch.randn(256, 8, dtype=torch.float64) * 2
    only_inv = VICRegLoss(1.0, 0.0, 0.0)
    only_var = VICRegLoss(0.0, 1.0, 0.0)
    only_cov = VICRegLoss(0.0, 0.0, 1.0)
    same = torch.cat([good, good])
    assert only_inv(same).item() == 0.0 and only_var(same).item() == 0.0  # std ~2 > 1
    collapsed = torch.cat([good * 0.01, good * 0.01])
    assert only_var(collapsed).item() > 0.95
    redundant = torch.cat([good[:, :1].repeat(1, 8)] * 2)  # every dimension the same
    assert only_cov(redundant).item() > 100 * only_cov(same).item()


@pytest.mark.parametrize("kwargs, match", [({"sim_coeff": -1.0}, "sim_coeff"), ({"eps": 0.0}, "eps"),
                                           ({"embedding_dim": -2}, "embedding_dim")])
def test_invalid_settings_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=f"LOSS.vicreg_loss.{match}"):
        VICRegLoss(**kwargs)


def test_bad_shapes_name_the_problem():
    with pytest.raises(ValueError, match=r"\(2\*B, D\)"):
        VICRegLoss()(torch.randn(5, 3))
    with pytest.raises(ValueError, match="embedding_dim=4"):
        VICRegLoss(embedding_dim=4)(torch.randn(6, 3))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_compose_and_build(recipe):
    cfg = compose_config([f"config={recipe}"])
    loss = build_loss(cfg.LOSS)
    assert isinstance(loss, VICRegLoss)
    assert loss.embedding_dim == cfg.MODEL.HEAD.PARAMS[-1][1]["dims"][-1]
    get_method_class("vicreg_loss").infer_config(cfg, world_size=1)


def test_imagenet_recipe_has_the_papers_hyperparameters():
    cfg = compose_config([f"config={RECIPES[0]}"])
    l = cfg.LOSS.vicreg_loss
    assert (l.sim_coeff, l.std_coeff, l.cov_coeff) == (25.0, 25.0, 1.0)
    assert cfg.DISTRIBUTED.NUM_NODES * cfg.DISTRIBUTED.NUM_PROC_PER_NODE * \
        cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA == 2048
    o = cfg.OPTIMIZER
    assert o.use_larc and o.weight_decay == 1e-6 and o.num_epochs == 1000
    assert o.param_schedulers.lr.auto_lr_scaling.base_value == 0.2
    assert cfg.MODEL.HEAD.PARAMS[0][1]["dims"] == [2048, 8192, 8192, 8192]


def _train(ckpt_dir, *overrides):
    from sslcore.engine.launcher import resolve
    from sslcore.engine.trainer import train

    cfg = resolve([f"config={QUICK}", f"config.CHECKPOINT.DIR={ckpt_dir}", *overrides])
    final = train(cfg, torch.device("cpu"))
    records = [json.loads(line) for line in (Path(ckpt_dir) / "stdout.json").read_text().splitlines()]
    return final, records


def test_quick_recipe_trains_and_resumes_after_an_epoch(tmp_path):
    straight = tmp_path / "straight"
    final, records = _train(straight)
    losses = [r["loss"] for r in records]
    assert len(losses) == 16 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4 - 2.0

    resumed_dir = tmp_path / "resumed"  # restart from the end of epoch 1
    resumed_dir.mkdir()
    shutil.copy(straight / "model_phase0.torch", resumed_dir)
    os.symlink("model_phase0.torch", resumed_dir / "checkpoint.torch")
    resumed, after = _train(resumed_dir)
    assert [r["iteration"] for r in after] == list(range(9, 17))
    w1 = torch.load(final, weights_only=True)["classy_state_dict"]["base_model"]["model"]["trunk"]
    w2 = torch.load(resumed, weights_only=True)["classy_state_dict"]["base_model"]["model"]["trunk"]
    for key in w1:
        torch.testing.assert_close(w1[key], w2[key], rtol=1e-5, atol=1e-6)


_WORKER = textwrap.dedent('''
    import sys
    import torch
    import torch.distributed as dist
    from sslcore.losses.barlow_twins import BarlowTwinsLoss
    from sslcore.losses.vicreg import VICRegLoss

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    z = torch.load(sys.argv[1])
    n = z.shape[0] // 2
    b = n // world
    local = torch.cat([z[rank * b:(rank + 1) * b], z[n + rank * b:n + (rank + 1) * b]]).requires_grad_()
    out = {}
    for name, loss_fn in (("vicreg", VICRegLoss(embedding_dim=z.shape[1])),
                          ("barlow_twins", BarlowTwinsLoss(embedding_dim=z.shape[1]))):
        local.grad = None
        loss = loss_fn(local)
        loss.backward()
        out[name] = (loss.detach(), local.grad.clone())
    torch.save(out, sys.argv[2] + f".{rank}")
    dist.destroy_process_group()
''')


@pytest.mark.slow
def test_two_process_losses_and_gradients_match_one_process(tmp_path):
    torch.manual_seed(0)
    n, d = 12, 6
    z = torch.randn(2 * n, d, dtype=torch.float64) * 0.8
    torch.save(z, tmp_path / "z.pt")
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc_per_node=2", str(script), str(tmp_path / "z.pt"), str(tmp_path / "out")],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"out.{r}") for r in range(2)]
    from sslcore.losses.barlow_twins import BarlowTwinsLoss
    for name, loss_fn in (("vicreg", VICRegLoss(embedding_dim=d)),
                          ("barlow_twins", BarlowTwinsLoss(embedding_dim=d))):
        full = z.clone().requires_grad_()
        loss = loss_fn(full)
        loss.backward()
        b = n // 2
        for r, out in enumerate(ranks):
            rank_loss, rank_grad = out[name]
            torch.testing.assert_close(rank_loss, loss.detach())  # every rank: the global loss
            rows = torch.cat([torch.arange(r * b, (r + 1) * b), torch.arange(n + r * b, n + (r + 1) * b)])
            # the gather's backward sums both ranks' (equal) losses; DDP's averaging divides by 2
            torch.testing.assert_close(rank_grad / 2, full.grad[rows])
