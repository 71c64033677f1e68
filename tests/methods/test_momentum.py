"""MomentumEncoder and cosine_momentum: the one EMA mechanism of MoCo, BYOL, DINO, SwAV-momentum."""

import copy
import math

import pytest
import torch
from torch import nn

from sslcore.methods.momentum import MomentumEncoder, cosine_momentum


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_update_is_the_ema_of_parameters_and_copies_buffers():
    model = _model()
    teacher = MomentumEncoder(model)
    before = copy.deepcopy(teacher.encoder.state_dict())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    model.train()(torch.randn(8, 4))  # moves the BatchNorm running statistics
    teacher.update(model, 0.9)
    for name, value in model.state_dict().items():
        got = teacher.encoder.state_dict()[name]
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert torch.equal(got, value), name
        else:
            assert torch.allclose(got, 0.9 * before[name] + 0.1 * value, atol=1e-6), name


def test_the_encoder_is_frozen_and_builds_no_graph():
    teacher = MomentumEncoder(_model())
    assert not any(p.requires_grad for p in teacher.parameters())
    out = teacher.eval()(torch.randn(2, 4))
    assert not out.requires_grad


def test_momentum_one_keeps_the_encoder_and_bad_values_are_refused():
    model = _model()
    teacher = MomentumEncoder(model)
    before = copy.deepcopy(teacher.encoder[0].weight)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    teacher.update(model, 1.0)
    assert torch.equal(teacher.encoder[0].weight, before)
    with pytest.raises(ValueError, match="momentum"):
        teacher.update(model, 1.5)
    with pytest.raises(ValueError, match="different parameters"):
        teacher.update(nn.Linear(4, 3), 0.5)


def test_checkpoint_round_trip():
    teacher = MomentumEncoder(_model())
    other = MomentumEncoder(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)))
    other.load_from_checkpoint(teacher.state_dict_for_checkpoint())
    for a, b in zip(teacher.encoder.state_dict().values(), other.encoder.state_dict().values()):
        assert torch.equal(a, b)


def test_cosine_schedule_goes_from_base_to_one():
    assert cosine_momentum(0.996, 0.0) == pytest.approx(0.996)
    assert cosine_momentum(0.996, 1.0) == pytest.approx(1.0)
    assert cosine_momentum(0.996, 0.5) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 2) + 1) / 2)
    values = [cosine_momentum(0.99, w / 10) for w in range(11)]
    assert values == sorted(values)
    with pytest.raises(ValueError):
        cosine_momentum(0.99, 1.5)
