"""OPTIMIZER.param_schedulers.weight_decay (VISSL's key; DINO's 0.04 -> 0.4 cosine)."""

import json
import math

import pytest
import torch
from torch import nn

from sslcore.config import compose_config
from sslcore.engine.launcher import run_engine
from sslcore.optim.optimizer import build_optimizer, build_weight_decay_schedule, set_weight_decay


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.heads = nn.ModuleList([nn.Linear(4, 5)])


def _optim(*overrides):
    return compose_config(list(overrides)).OPTIMIZER


def test_no_schedule_means_none_and_a_cosine_follows_dinos_formula():
    assert build_weight_decay_schedule(_optim()) is None
    schedule = build_weight_decay_schedule(_optim(
        "config.OPTIMIZER.param_schedulers.weight_decay={name:cosine,start_value:0.04,end_value:0.4}"))
    for where in (0.0, 0.25, 0.5, 0.9):
        expected = 0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * where))
        assert schedule(where) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("heads_too, head_decay", [(True, 0.3), (False, 0.01)])
def test_only_regularised_groups_move_and_heads_with_their_own_decay_keep_it(heads_too, head_decay):
    optim = _optim("config.OPTIMIZER.head_optimizer_params.use_different_wd=true",
                   "config.OPTIMIZER.regularize_bias=false",
                   "config.OPTIMIZER.head_optimizer_params.weight_decay=0.01")
    optimizer = build_optimizer(optim, _Net(), 0.1)
    set_weight_decay(optimizer, 0.3, heads_too=heads_too)
    decays = {(g["head"], g["regularized"]): g["weight_decay"] for g in optimizer.param_groups}
    assert decays == {(False, True): 0.3, (False, False): 0.0, (True, True): head_decay,
                      (True, False): 0.0}


@pytest.mark.parametrize("schedule, match", [
    ("{name:linear,start_value:0.1,end_value:-0.1}", r"reaches -0\.09.*>= 0"),
    ("{name:constant,value:0.1,auto_lr_scaling:{auto_scale:true}}", "auto_lr_scaling.*learning rates only"),
    ("{name:cosin,start_value:0.1,end_value:0.2}", "cosine"),
])
def test_bad_schedules_name_the_problem(schedule, match):
    with pytest.raises((ValueError, KeyError), match=match):
        build_weight_decay_schedule(_optim(f"config.OPTIMIZER.param_schedulers.weight_decay={schedule}"))


def test_training_logs_the_scheduled_decay_per_epoch(tmp_path):
    """quick_simclr, 2 epochs x 4 steps, decay 0.1 -> 0.3 linear per epoch: the log shows 0.1 in
    epoch 0 and 0.2 in epoch 1, and the checkpointed optimizer holds 0.2 on its decayed group."""
    run_engine(["config=pretrain/simclr/quick_simclr", f"config.CHECKPOINT.DIR={tmp_path}",
                "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false",
                "config.OPTIMIZER.param_schedulers.weight_decay={name:linear,start_value:0.1,"
                "end_value:0.3,update_interval:epoch}"])
    records = [json.loads(line) for line in (tmp_path / "stdout.json").read_text().splitlines()]
    assert [r["phase_idx"] for r in records] == [0] * 4 + [1] * 4
    assert [r["weight_decay"] for r in records] == pytest.approx([0.1] * 4 + [0.2] * 4)
    groups = torch.load(tmp_path / "checkpoint.torch", weights_only=True)[
        "classy_state_dict"]["optimizer"]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == pytest.approx([0.0, 0.2])
