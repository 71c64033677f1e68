"""sslcore ResNe(X)t <-> ClassyVision resnext: names, a ClassyVision-layout forward, round trip."""

import pytest
import torch
from torch import nn

from sslcore.convert.classy_vision import convert_classy_vision_to_vissl, convert_vissl_to_classy_vision
from sslcore.models.trunks.resnet import ResNeXt


class ClassyLayer(nn.Module):
    """ClassyVision's GenericLayer layout: convolutional_block, final bn, downsample, written here."""

    def __init__(self, cin, width, out, stride, bottleneck, groups):
        super().__init__()
        if bottleneck:
            self.convolutional_block = nn.Sequential(
                nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                nn.Conv2d(width, width, 3, stride, 1, groups=groups, bias=False),
                nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, out, 1, bias=False))
        else:
            self.convolutional_block = nn.Sequential(
                nn.Conv2d(cin, out, 3, stride, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU(),
                nn.Conv2d(out, out, 3, 1, 1, bias=False))
        self.bn = nn.BatchNorm2d(out)
        self.downsample = None
        if stride != 1 or cin != out:
            self.downsample = nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        residual = x if self.downsample is None else self.downsample(x)
        return torch.relu(self.bn(self.convolutional_block(x)) + residual)


class ClassyResNeXt(nn.Module):
    def __init__(self, blocks, base, bottleneck, small, groups=1, width_per_group=64):
        super().__init__()
        stem = [nn.Conv2d(3, base, 3, 1, 1, bias=False) if small else nn.Conv2d(3, base, 7, 2, 3, bias=False),
                nn.BatchNorm2d(base), nn.ReLU()]
        self.initial_block = nn.Module()
        self.initial_block._module = nn.Sequential(*stem, *([] if small else [nn.MaxPool2d(3, 2, 1)]))
        expansion = 4 if bottleneck else 1
        stages, cin = [], base
        for i, n in enumerate(blocks):
            planes = base * 2 ** i
            out, width = planes * expansion, int(planes * width_per_group / 64) * groups
            stage = nn.Sequential()
            for j in range(n):
                stage.add_module(f"block{i}-{j}", ClassyLayer(cin if j == 0 else out, width, out,
                                                              2 if (j == 0 and i > 0) else 1, bottleneck, groups))
            stages.append(stage)
            cin = out
        self.blocks = nn.Sequential(*stages)

    def forward(self, x):
        return self.blocks(self.initial_block._module(x))


def _randomise(module):
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


@pytest.mark.parametrize("settings,blocks,bottleneck", [
    (dict(depth=18, width_multiplier=0.125, stem="small"), (2, 2, 2, 2), False),
    (dict(depth=50, width_multiplier=0.125, groups=2, width_per_group=32), (3, 4, 6, 3), True),
])
def test_classy_layout_computes_the_same_and_round_trips(settings, blocks, bottleneck):
    torch.manual_seed(0)
    trunk = ResNeXt(**settings).eval()
    _randomise(trunk)
    converted = convert_vissl_to_classy_vision({"classy_state_dict": {"base_model": {
        "model": {"trunk": trunk.state_dict(), "heads": {}}}}})
    classy_state = converted["classy_state_dict"]["base_model"]["model"]["trunk"]
    last = "convolutional_block.6.weight" if bottleneck else "convolutional_block.3.weight"
    assert f"blocks.3.block3-{blocks[3] - 1}.{last}" in classy_state
    assert "blocks.1.block1-0.downsample.1.running_var" in classy_state

    classy = ClassyResNeXt(blocks, int(64 * settings["width_multiplier"]), bottleneck,
                           small=settings.get("stem") == "small", groups=settings.get("groups", 1),
                           width_per_group=settings.get("width_per_group", 64)).eval()
    classy.load_state_dict(classy_state, strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(classy(x), trunk(x, out_feat_keys=["res5"])[0], atol=1e-5, rtol=1e-5)

    back = convert_classy_vision_to_vissl(converted)["classy_state_dict"]["base_model"]["model"]["trunk"]
    original = trunk.state_dict()
    assert back.keys() == original.keys()
    assert all(torch.equal(back[k], original[k]) for k in original)


def test_unknown_classy_key_is_refused():
    with pytest.raises(ValueError, match="no counterpart"):
        convert_classy_vision_to_vissl({"initial_block._module.0.weight": torch.zeros(1),
                                        "blocks.0.block0-0.attention.weight": torch.zeros(1)})
