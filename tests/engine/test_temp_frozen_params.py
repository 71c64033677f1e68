"""MODEL.TEMP_FROZEN_PARAMS_ITER_MAP is applied by the engine, so it holds for every method."""

import pytest
import torch

from sslcore.config import compose_config
from sslcore.engine.hooks import Hook
from sslcore.engine.launcher import resolve
from sslcore.engine.temp_frozen_params import TempFrozenParams
from sslcore.engine.trainer import build_task, train
from sslcore.models import build_model

FROZEN = "trunk._feature_blocks.conv1.weight"


class _Probe(Hook):
    """Records the frozen stem weight and a free head weight before training and after each update."""

    def __init__(self):
        self.stem, self.head = [], []

    def _record(self, task):
        params = dict(task.model.named_parameters())
        self.stem.append(params[FROZEN].detach().clone())
        self.head.append(params["heads.0.clf.0.weight"].detach().clone())

    on_start = on_update = _record


def test_simclr_keeps_a_listed_parameter_fixed_for_its_iterations_then_trains_it(tmp_path):
    """quick_simclr with the stem conv frozen for 3 iterations: weight decay and momentum leave
    it untouched for updates 0-2, the heads move from the first update, the stem from the fourth."""
    probe = _Probe()
    cfg = resolve(["config=pretrain/simclr/quick_simclr", f"config.CHECKPOINT.DIR={tmp_path}",
                   "config.OPTIMIZER.num_epochs=1", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false",
                   f"config.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP=[[module.{FROZEN},3]]"])
    train(cfg, torch.device("cpu"), extra_hooks=[probe])
    assert len(probe.stem) >= 5
    for step in (1, 2, 3):
        assert torch.equal(probe.stem[step], probe.stem[0]), step
        assert not torch.equal(probe.head[step], probe.head[step - 1]), step
    assert not torch.equal(probe.stem[4], probe.stem[3])


def test_unknown_parameter_is_refused_with_the_closest_names(tmp_path):
    cfg = resolve(["config=pretrain/simclr/quick_simclr", f"config.CHECKPOINT.DIR={tmp_path}",
                   "config.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP=[[trunk._feature_blocks.conv.weight,3]]"])
    with pytest.raises(ValueError, match=r"TEMP_FROZEN_PARAMS_ITER_MAP\[0\].*did you mean.*conv1\.weight"):
        build_task(cfg, torch.device("cpu"))


@pytest.mark.parametrize("entry", [["a"], ["a", -1], [3, 2], ["a", 1.5]])
def test_malformed_entries_show_the_expected_form(entry):
    model = build_model(compose_config(["config=pretrain/simclr/quick_simclr"]).MODEL)
    with pytest.raises(ValueError, match=r"write \[parameter name, iterations\]"):
        TempFrozenParams([entry], model)
