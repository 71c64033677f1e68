"""OPTIMIZER: SGD (unchanged), LARC through timm's Lars against a hand-written LARC step, Adam/AdamW."""

import copy

import pytest
import torch
from torch import nn

from sslcore.config import compose_config
from sslcore.optim.optimizer import build_optimizer, split_param_groups


class _Net(nn.Module):
    """A trunk-like part (conv + BN) and a head-like part under ``heads``."""

    def __init__(self):
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(1))
        self.heads = nn.ModuleList([nn.Linear(4 * 6 * 6, 5)])

    def forward(self, x):
        return self.heads[0](self.trunk(x))


def _cfg(*overrides):
    return compose_config(list(overrides)).OPTIMIZER


def _loss_and_grads(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(6, 3, 8, 8, generator=g)
    net(x).square().mean().backward()


def _names_by_param(net):
    return {id(p): n for n, p in net.named_parameters()}


def test_default_sgd_groups_are_decay_then_no_decay():
    torch.manual_seed(0)
    net = _Net()
    opt = build_optimizer(_cfg("config.OPTIMIZER.weight_decay=0.01"), net, initial_lr=0.1)
    assert type(opt) is torch.optim.SGD
    names = _names_by_param(net)
    groups = [sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups]
    assert groups == [["heads.0.bias", "heads.0.weight", "trunk.0.bias", "trunk.0.weight"],
                      ["trunk.1.bias", "trunk.1.weight"]]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    assert opt.param_groups[0]["momentum"] == 0.9 and not opt.param_groups[0]["nesterov"]


def test_regularize_flags_and_non_regularized_names():
    torch.manual_seed(0)
    net = _Net()
    names = _names_by_param(net)
    groups = split_param_groups(net, weight_decay=0.1, regularize_bn=True, regularize_bias=False,
                                non_regularized=["heads.0.weight"])
    decayed = sorted(names[id(p)] for p in groups[0]["params"])
    assert decayed == ["trunk.0.weight", "trunk.1.weight"]  # no bias decayed, BN bias neither
    assert sorted(names[id(p)] for p in groups[1]["params"]) == ["heads.0.bias", "heads.0.weight",
                                                                  "trunk.0.bias", "trunk.1.bias"]


def test_head_weight_decay_splits_head_groups():
    torch.manual_seed(0)
    net = _Net()
    opt = build_optimizer(_cfg("config.OPTIMIZER.weight_decay=0.01",
                               "config.OPTIMIZER.head_optimizer_params.use_different_wd=true",
                               "config.OPTIMIZER.head_optimizer_params.weight_decay=0.5"),
                          net, initial_lr=0.1)
    names = _names_by_param(net)
    got = [(sorted(names[id(p)] for p in g["params"]), g["weight_decay"]) for g in opt.param_groups]
    assert got == [(["trunk.0.bias", "trunk.0.weight"], 0.01),
                   (["trunk.1.bias", "trunk.1.weight"], 0.0),
                   (["heads.0.bias", "heads.0.weight"], 0.5)]
    ddp_like = nn.Module()
    ddp_like.module = net  # DDP's wrapper prefix "module."
    wrapped = split_param_groups(ddp_like, weight_decay=0.01, regularize_bn=False,
                                 regularize_bias=True, head_weight_decay=0.5)
    assert [g["weight_decay"] for g in wrapped] == [0.01, 0.0, 0.5]


def _plain_larc_step(params, grads, wds, *, lr, coeff, eps, clip):
    """One LARC step as in the paper / apex: the trust ratio rescales (grad + wd * w).

    As apex, a parameter with a zero weight norm (a BatchNorm bias at init) keeps its gradient.
    """
    out = []
    for w, g, wd in zip(params, grads, wds):
        w_norm, g_norm = w.norm().item(), g.norm().item()
        if w_norm == 0:
            out.append(w - lr * g)
            continue
        ratio = coeff * w_norm / (g_norm + wd * w_norm + eps)
        if clip:
            ratio = min(ratio / lr, 1.0)
        out.append(w - lr * ratio * (g + wd * w))  # first momentum step: buffer = grad
    return out


@pytest.mark.parametrize("clip,lr", [(False, 0.5), (True, 0.5), (True, 1e-4)])
def test_larc_matches_a_plain_trust_ratio_step(clip, lr):
    torch.manual_seed(0)
    net = _Net()
    cfg = _cfg("config.OPTIMIZER.use_larc=true", f"config.OPTIMIZER.larc_config.clip={clip}",
               "config.OPTIMIZER.larc_config.trust_coefficient=0.02",
               "config.OPTIMIZER.larc_config.eps=1e-8", "config.OPTIMIZER.weight_decay=0.01")
    opt = build_optimizer(cfg, net, initial_lr=lr)
    assert type(opt).__name__ == "Lars"
    _loss_and_grads(net)
    params, grads, wds = [], [], []
    for group in opt.param_groups:
        for p in group["params"]:
            params.append(p.detach().clone())
            grads.append(p.grad.detach().clone())
            wds.append(group["weight_decay"])
    assert 0.0 in wds and 0.01 in wds  # BN/bias-free group is adapted too (apex behaviour)
    expected = _plain_larc_step(params, grads, wds, lr=lr, coeff=0.02, eps=1e-8, clip=clip)
    opt.step()
    got = [p.detach() for group in opt.param_groups for p in group["params"]]
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-7)
    moved = [(g - b).abs().max().item() for g, b in zip(got, params)]
    assert min(moved) > 0
    if clip and lr == 1e-4:  # tiny LR: every ratio clips to 1, LARC is plain SGD
        for e, b, gr, wd in zip(expected, params, grads, wds):
            torch.testing.assert_close(e, b - lr * (gr + wd * b))


def test_larc_differs_from_sgd_with_a_large_lr():
    torch.manual_seed(0)
    a = _Net()
    b = copy.deepcopy(a)
    opt_a = build_optimizer(_cfg("config.OPTIMIZER.use_larc=true"), a, initial_lr=1.0)
    opt_b = build_optimizer(_cfg(), b, initial_lr=1.0)
    _loss_and_grads(a)
    _loss_and_grads(b)
    opt_a.step()
    opt_b.step()
    diff = max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
    assert diff > 1e-3


def test_adamw_first_step_is_decoupled_decay_plus_sign_step():
    torch.manual_seed(0)
    net = _Net()
    cfg = _cfg("config.OPTIMIZER.name=adamw", "config.OPTIMIZER.weight_decay=0.1",
               "config.OPTIMIZER.betas=[0.8,0.95]")
    lr = 0.01
    opt = build_optimizer(cfg, net, initial_lr=lr)
    assert type(opt) is torch.optim.AdamW
    assert opt.param_groups[0]["betas"] == (0.8, 0.95)
    _loss_and_grads(net)
    before = [(p.detach().clone(), p.grad.clone(), g["weight_decay"])
              for g in opt.param_groups for p in g["params"]]
    opt.step()
    after = [p.detach() for g in opt.param_groups for p in g["params"]]
    for (w, grad, wd), new in zip(before, after):
        # bias-corrected first moments: m_hat = g, v_hat = g^2
        expected = w * (1 - lr * wd) - lr * grad / (grad.abs() + 1e-8)
        torch.testing.assert_close(new, expected, rtol=1e-5, atol=1e-6)


def test_adam_adds_l2_decay_to_the_gradient():
    torch.manual_seed(0)
    net = _Net()
    opt = build_optimizer(_cfg("config.OPTIMIZER.name=adam", "config.OPTIMIZER.weight_decay=0.1"),
                          net, initial_lr=0.01)
    assert type(opt) is torch.optim.Adam
    _loss_and_grads(net)
    w = net.trunk[0].weight.detach().clone()
    g = net.trunk[0].weight.grad + 0.1 * w
    opt.step()
    torch.testing.assert_close(net.trunk[0].weight.detach(), w - 0.01 * g / (g.abs() + 1e-8),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides,match", [
    (["config.OPTIMIZER.name=adamw", "config.OPTIMIZER.use_larc=true"], "use_larc=True needs"),
    (["config.OPTIMIZER.head_optimizer_params.use_different_lr=true"], "use_different_lr"),
    (["config.OPTIMIZER.betas=[0.9]"], "betas"),
])
def test_invalid_settings_name_the_key(overrides, match):
    with pytest.raises(ValueError, match=match):
        build_optimizer(_cfg(*overrides), _Net(), initial_lr=0.1)


def test_unknown_optimizer_name_is_a_config_error():
    with pytest.raises(ValueError, match="OPTIMIZER.name"):
        _cfg("config.OPTIMIZER.name=lamb")


def test_the_engine_builds_the_configured_optimizer(tmp_path):
    from sslcore.engine.launcher import resolve
    from sslcore.engine.trainer import build_task

    base = ["config=pretrain/simclr/quick_simclr", f"config.CHECKPOINT.DIR={tmp_path}"]
    task = build_task(resolve(base + ["config.OPTIMIZER.name=adamw", "config.OPTIMIZER.betas=[0.9,0.95]"]),
                      torch.device("cpu"))
    assert type(task.optimizer) is torch.optim.AdamW
    assert task.optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    task = build_task(resolve(base + ["config.OPTIMIZER.use_larc=true",
                                      "config.OPTIMIZER.larc_config.clip=true"]), torch.device("cpu"))
    assert type(task.optimizer).__name__ == "Lars"
    assert all(g["trust_clip"] and g["always_adapt"] for g in task.optimizer.param_groups)
