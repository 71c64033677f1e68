"""Heads: every registered head trains; MLP and eval_mlp layouts, config plumbing and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslcore.config import compose_config
from sslcore.models.heads import HEADS, build_head, build_heads
from sslcore.models.heads.eval_mlp import LinearEvalMLP
from sslcore.models.heads.mlp import MLP

# one example per registered head: (kwargs, input shape, output shape)
EXAMPLES = {
    "mlp": ({"dims": [12, 16, 5], "use_bn": True, "use_relu": True, "use_dropout": True},
            (6, 12), (6, 5)),
    "eval_mlp": ({"in_channels": 12, "dims": [12, 7]}, (6, 12, 1, 1), (6, 7)),
    "siamese_concat_view": ({"num_towers": 3}, (6, 4), (2, 12)),
    "swav_head": ({"dims": [12, 16, 8], "num_clusters": [5, 3], "use_bn": True}, (6, 12),
                  [(6, 8), (6, 5), (6, 3)]),  # a list: embedding, then scores per prototype layer
    "dino_head": ({"in_dim": 12, "num_clusters": [5], "hidden_dim": 16, "bottleneck_dim": 8,
                   "normalize_last_layer": False}, (6, 12), (6, 5)),  # trainable weight_g
}


@pytest.mark.parametrize("name", HEADS.names())
def test_every_registered_head_runs_forward_and_backward(name):
    assert name in EXAMPLES, f"add an example for head '{name}' to EXAMPLES"
    kwargs, in_shape, out_shape = EXAMPLES[name]
    torch.manual_seed(0)
    head = build_head(name, kwargs)
    x = torch.randn(*in_shape, requires_grad=True)
    out = head(x)
    outs, shapes = (out, out_shape) if isinstance(out, list) else ([out], [out_shape])
    assert [o.shape for o in outs] == shapes and all(torch.isfinite(o).all() for o in outs)
    sum(o.square().mean() for o in outs).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    for param in head.parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all()


@pytest.mark.parametrize("kwargs, layers", [
    ({}, [nn.Linear, nn.Linear]),
    ({"use_bn": True, "use_relu": True}, [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]),
    ({"use_relu": True, "use_dropout": True, "skip_last_layer_relu_bn": False},
     [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout]),
])
def test_mlp_layer_order(kwargs, layers):
    head = MLP([8, 16, 4], **kwargs)
    assert [type(m) for m in head.clf] == layers


def test_mlp_flattens_pooled_input_and_checks_its_width():
    head = MLP([8, 4]).eval()
    x = torch.randn(3, 8)
    torch.testing.assert_close(head(x[:, :, None, None]), head(x))
    with pytest.raises(ValueError, match="set its first dim to 9"):
        head(torch.randn(3, 9))
    with pytest.raises(ValueError, match="at least"):
        MLP([8])


def test_eval_mlp_is_batchnorm_then_linear():
    torch.manual_seed(0)
    head = LinearEvalMLP(6, [6, 3], batchnorm_eps=1e-3)
    x = 5 + 3 * torch.randn(10, 6)
    out = head(x)  # training mode: batch statistics
    normed = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-3)
    linear = head.clf.clf[0]
    torch.testing.assert_close(out, normed @ linear.weight.t() + linear.bias)
    assert set(head.state_dict()) == {
        "channel_bn.weight", "channel_bn.bias", "channel_bn.running_mean", "channel_bn.running_var",
        "channel_bn.num_batches_tracked", "clf.clf.0.weight", "clf.clf.0.bias"}
    with pytest.raises(ValueError, match="in_channels=6"):
        LinearEvalMLP(6, [5, 3])
    with pytest.raises(ValueError, match="6 input features"):
        head(torch.randn(4, 6, 2, 2))


def test_build_heads_from_config_uses_head_batchnorm_settings():
    cfg = compose_config([
        'config.MODEL.HEAD.PARAMS=[["mlp",{dims:[8,8,4],use_bn:true}],["eval_mlp",{in_channels:4,dims:[4,2]}]]',
        "config.MODEL.HEAD.BATCHNORM_EPS=0.001", "config.MODEL.HEAD.BATCHNORM_MOMENTUM=0.3"])
    heads = build_heads(cfg.MODEL.HEAD)
    assert [type(h) for h in heads] == [MLP, LinearEvalMLP]
    norms = [m for h in heads for m in h.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 2 and all(m.eps == 1e-3 and m.momentum == 0.3 for m in norms)
    assert build_heads(compose_config([]).MODEL.HEAD) == []


@pytest.mark.parametrize("params, match", [
    ('[["mlpp",{dims:[4,2]}]]', r"PARAMS\[0\].*mlp"),
    ('[["mlp",{dimz:[4,2]}]]', r"PARAMS\[0\].*dimz.*'dims'"),
    ('[["mlp"]]', r"PARAMS\[0\].*\[name, \{kwargs\}\]"),
])
def test_bad_head_entries_raise_value_error_naming_the_entry(params, match):
    cfg = compose_config([f"config.MODEL.HEAD.PARAMS={params}"])
    with pytest.raises(ValueError, match=match):
        build_heads(cfg.MODEL.HEAD)
