"""VISSL's head_optimizer_params.use_different_lr: trunk and head param groups on their own LR
schedules, checked against plain piecewise / cosine formulas and a hand-computed SGD step."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from sslcore.config import compose_config
from sslcore.engine.trainer import TrainTask
from sslcore.optim.optimizer import build_head_lr_schedule, build_optimizer, set_learning_rates
from sslcore.optim.schedulers import build_param_scheduler

TRUNK_LR = ("config.OPTIMIZER.param_schedulers.lr={name: multistep, values: [0.01, 0.001], "
            "milestones: [2], update_interval: epoch}")
HEAD_LR = ("config.OPTIMIZER.param_schedulers.lr_head={name: multistep, values: [0.1, 0.05, 0.02], "
           "milestones: [1, 3], update_interval: epoch}")


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.heads = nn.ModuleList([nn.Linear(3, 2)])

    def forward(self, x):
        return self.heads[0](self.trunk(x))


def _cfg(*overrides):
    return compose_config(["config.OPTIMIZER.num_epochs=4", "config.OPTIMIZER.momentum=0.0",
                           "config.OPTIMIZER.weight_decay=0.0", *overrides])


def _task(cfg, net, optimizer, head_schedule, iters_per_phase=5):
    lr = build_param_scheduler(dict(cfg.OPTIMIZER.param_schedulers.lr), int(cfg.OPTIMIZER.num_epochs))
    return TrainTask(cfg=cfg, device=torch.device("cpu"), model=net, method=None, optimizer=optimizer,
                     lr_schedule=lr, loader=None, scaler=None, ckpt_dir=Path("."),
                     num_phases=int(cfg.OPTIMIZER.num_epochs), iters_per_phase=iters_per_phase,
                     head_lr_schedule=head_schedule)


def _piecewise(values, milestones, epoch):
    return values[sum(epoch >= m for m in milestones)]


def test_head_and_trunk_groups_follow_their_own_epoch_schedules():
    cfg = _cfg("config.OPTIMIZER.head_optimizer_params.use_different_lr=true", TRUNK_LR, HEAD_LR)
    net = _Net()
    head_schedule = build_head_lr_schedule(cfg.OPTIMIZER)
    opt = build_optimizer(cfg.OPTIMIZER, net, 0.01, head_initial_lr=float(head_schedule(0.0)))
    head_ids = {id(p) for p in net.heads.parameters()}
    assert [g["head"] for g in opt.param_groups] == [False, False, True]  # heads: all decayed
    for group in opt.param_groups:
        assert all((id(p) in head_ids) == group["head"] for p in group["params"])
    assert [g["lr"] for g in opt.param_groups] == [0.01, 0.01, 0.1]
    task = _task(cfg, net, opt, head_schedule)
    for epoch in range(4):
        task.phase_idx, task.iteration = epoch, epoch * task.iters_per_phase
        set_learning_rates(opt, *task.learning_rates())
        trunk = _piecewise([0.01, 0.001], [2], epoch)
        head = _piecewise([0.1, 0.05, 0.02], [1, 3], epoch)
        assert [g["lr"] for g in opt.param_groups] == pytest.approx([trunk, trunk, head])


def test_step_interval_head_cosine_next_to_epoch_trunk():
    head_cos = ("config.OPTIMIZER.param_schedulers.lr_head={name: cosine, start_value: 0.2, "
                "end_value: 0.0, update_interval: step}")
    cfg = _cfg("config.OPTIMIZER.head_optimizer_params.use_different_lr=true", TRUNK_LR, head_cos)
    net = _Net()
    head_schedule = build_head_lr_schedule(cfg.OPTIMIZER)
    task = _task(cfg, net, build_optimizer(cfg.OPTIMIZER, net, 0.01, 0.2), head_schedule)
    for iteration in (0, 3, 7, 12, 19):
        task.iteration, task.phase_idx = iteration, iteration // 5
        lr, head_lr = task.learning_rates()
        assert lr == pytest.approx(_piecewise([0.01, 0.001], [2], iteration // 5))
        assert head_lr == pytest.approx(0.1 * (1 + math.cos(math.pi * iteration / 20)))


def test_one_sgd_step_moves_trunk_by_trunk_lr_and_heads_by_head_lr():
    cfg = _cfg("config.OPTIMIZER.head_optimizer_params.use_different_lr=true", HEAD_LR)
    torch.manual_seed(0)
    net = _Net()
    opt = build_optimizer(cfg.OPTIMIZER, net, 0.01, head_initial_lr=0.3)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    net(torch.randn(8, 4)).square().sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in net.named_parameters()}
    opt.step()
    for name, param in net.named_parameters():
        lr = 0.3 if name.startswith("heads.") else 0.01
        assert torch.allclose(param.detach(), before[name] - lr * grads[name], atol=1e-7), name


def test_without_use_different_lr_one_lr_drives_every_group():
    cfg = _cfg(TRUNK_LR, HEAD_LR)
    net = _Net()
    assert build_head_lr_schedule(cfg.OPTIMIZER) is None
    opt = build_optimizer(cfg.OPTIMIZER, net, 0.01)
    assert not any(g["head"] for g in opt.param_groups) and len(opt.param_groups) == 2
    task = _task(cfg, net, opt, None)
    task.phase_idx = 3
    assert task.learning_rates() == (pytest.approx(0.001), None)
    set_learning_rates(opt, *task.learning_rates())
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.001, 0.001])


def test_head_groups_decay_with_the_trunk_decay():
    cfg = _cfg("config.OPTIMIZER.head_optimizer_params.use_different_lr=true",
               "config.OPTIMIZER.weight_decay=0.01", "config.OPTIMIZER.regularize_bias=false",
               "config.OPTIMIZER.param_schedulers.lr_head={name: constant, value: 0.1, "
               "auto_lr_scaling: {auto_scale: true, base_value: 0.1, base_lr_batch_size: 256, "
               "scaling_type: linear}}")
    opt = build_optimizer(cfg.OPTIMIZER, _Net(), 0.01, 0.2)
    # without use_different_wd the heads keep OPTIMIZER.weight_decay
    assert [(g["head"], g["weight_decay"]) for g in opt.param_groups] == [
        (False, 0.01), (False, 0.0), (True, 0.01), (True, 0.0)]
    with pytest.raises(ValueError, match="param_schedulers.lr_head"):
        build_optimizer(_cfg("config.OPTIMIZER.head_optimizer_params.use_different_lr=true").OPTIMIZER,
                        _Net(), 0.01)


def test_resolved_config_holds_the_scaled_head_lr():
    """The saved config shows the head LR the run uses, as it does for param_schedulers.lr, and
    the schedule is built from it unscaled (a multistep's values would otherwise scale twice)."""
    from sslcore.config.infer import infer_config

    cfg = _cfg("config=pretrain/simclr/quick_simclr",
               "config.OPTIMIZER.head_optimizer_params.use_different_lr=true",
               "config.DATA.TRAIN.BATCHSIZE_PER_REPLICA=64",
               "config.OPTIMIZER.param_schedulers.lr_head={name: multistep, values: [0.1, 0.01], "
               "milestones: [1], auto_lr_scaling: {auto_scale: true, base_value: 0.1, "
               "base_lr_batch_size: 256, scaling_type: linear}}")
    resolved, changes = infer_config(cfg, world_size=8, local_world_size=8, cuda_available=False)
    # 0.1 x 512 / 256
    assert list(resolved.OPTIMIZER.param_schedulers.lr_head["values"]) == pytest.approx([0.2, 0.02])
    assert any(c.startswith("OPTIMIZER.param_schedulers.lr_head.values.0: 0.1 -> 0.2") for c in changes)
    schedule = build_head_lr_schedule(resolved.OPTIMIZER)
    assert (schedule(0.0), schedule(0.9)) == pytest.approx((0.2, 0.02))
