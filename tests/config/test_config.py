"""Config: VISSL override syntax, unknown keys and wrong types refused with close matches, inference."""

import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sslcore.config import ConfigError, compose_config
from sslcore.config.infer import infer_config
from sslcore.config.schema import Key, iter_keys
from sslcore.optim.schedulers import build_param_scheduler, scale_lr_schedule

RECIPE = "pretrain/simclr/quick_simclr"


def test_recipe_and_overrides_apply():
    cfg = compose_config([f"config={RECIPE}", "config.OPTIMIZER.num_epochs=7",
                          "+config.NEW_KEY=1", "config.DATA.TRAIN.DATA_PATHS=[/a,/b]"])
    assert cfg.OPTIMIZER.num_epochs == 7
    assert cfg.NEW_KEY == 1
    assert list(cfg.DATA.TRAIN.DATA_PATHS) == ["/a", "/b"]
    assert cfg.LOSS.name == "simclr_info_nce_loss"


def test_unknown_override_names_closest_keys():
    with pytest.raises(ConfigError) as err:
        compose_config([f"config={RECIPE}", "config.OPTIMIZER.num_epoch=2"])
    msg = str(err.value)
    assert "config.OPTIMIZER.num_epoch" in msg
    assert "config.OPTIMIZER.num_epochs" in msg


def test_unknown_section_key_in_recipe(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("config:\n  MODEL:\n    TRUNK:\n      RESNETS:\n        DEPHT: 50\n")
    with pytest.raises(ConfigError) as err:
        compose_config([f"config={bad}"])
    assert "config.MODEL.TRUNK.RESNETS.DEPTH" in str(err.value)
    assert str(bad) in str(err.value)


def test_wrong_type_is_refused():
    with pytest.raises(ConfigError, match="OPTIMIZER.num_epochs.*expected int"):
        compose_config(["config.OPTIMIZER.num_epochs=two"])
    with pytest.raises(ConfigError, match="expected one of"):
        compose_config(["config.MACHINE.DEVICE=tpu"])


def test_add_existing_key_and_missing_recipe():
    with pytest.raises(ConfigError, match="already exists"):
        compose_config(["+config.OPTIMIZER.num_epochs=3"])
    with pytest.raises(ConfigError, match="quick_simclr"):
        compose_config(["config=pretrain/simclr/quick_simclrr"])


def test_delete_resets_default():
    cfg = compose_config([f"config={RECIPE}", "~config.OPTIMIZER.num_epochs"])
    assert cfg.OPTIMIZER.num_epochs == 10


def test_every_key_has_doc_and_valid_default():
    keys = list(iter_keys())
    assert len(keys) > 40
    for path, key in keys:
        assert isinstance(key, Key) and key.doc, path
        assert key.check(key.default) is None, path


def test_inference_is_pure_and_logged():
    cfg = compose_config([f"config={RECIPE}", "config.DATA.TRAIN.BATCHSIZE_PER_REPLICA=32",
                          "config.OPTIMIZER.param_schedulers.lr.auto_lr_scaling.auto_scale=true",
                          "config.OPTIMIZER.param_schedulers.lr.auto_lr_scaling.base_value=0.3",
                          "config.OPTIMIZER.param_schedulers.lr.auto_lr_scaling.base_lr_batch_size=256"])
    before = OmegaConf.to_container(cfg)
    out, changes = infer_config(cfg, world_size=4, local_world_size=2, cuda_available=False)
    assert OmegaConf.to_container(cfg) == before  # input untouched
    assert out.DISTRIBUTED.NUM_NODES == 2 and out.DISTRIBUTED.NUM_PROC_PER_NODE == 2
    assert out.MACHINE.DEVICE == "cpu" and out.DISTRIBUTED.BACKEND == "gloo"
    buf = out.LOSS.simclr_info_nce_loss.buffer_params
    assert buf.effective_batch_size == 32 * 2 * 4 and buf.world_size == 4
    scaled_lr = 0.3 * 128 / 256
    sched = build_param_scheduler(OmegaConf.to_container(out.OPTIMIZER.param_schedulers.lr), 2)
    assert sched(0.2499) == pytest.approx(scaled_lr, rel=1e-3)  # end of the 25% warm-up
    assert any("effective_batch_size" in c for c in changes)
    assert any("auto_lr_scaling" in c for c in changes)


def test_lr_scaling_rules():
    lr = {"name": "composite", "lengths": [0.1, 0.9], "interval_scaling": ["rescaled", "fixed"],
          "schedulers": [{"name": "linear", "start_value": 0.01, "end_value": 0.3},
                         {"name": "cosine", "start_value": 0.3, "end_value": 0.0}],
          "auto_lr_scaling": {"auto_scale": True, "base_value": 0.3, "base_lr_batch_size": 256,
                              "scaling_type": "sqrt"}}
    out = scale_lr_schedule(lr, 1024)
    assert out["schedulers"][0]["end_value"] == pytest.approx(0.6)
    assert out["schedulers"][1]["start_value"] == pytest.approx(0.6)
    sched = build_param_scheduler(out, 10)
    assert sched(0.0) == pytest.approx(0.01)
    # "fixed" interval scaling: the cosine runs on the global clock, as fvcore defines it
    assert sched(0.1) == pytest.approx(0.6 * (1 + math.cos(0.1 * math.pi)) / 2, rel=1e-6)
    assert sched(0.0999) == pytest.approx(0.6, rel=1e-2)
    assert sched(0.999) < 0.01


def test_scheduler_errors_name_the_fix():
    with pytest.raises(ValueError, match="end_value"):
        build_param_scheduler({"name": "cosine", "start_value": 0.1, "end_valu": 0.0}, 1)
    with pytest.raises(KeyError, match="cosine"):
        build_param_scheduler({"name": "cosin", "start_value": 0.1, "end_value": 0.0}, 1)


CONFIG_ROOT = Path(__file__).resolve().parents[2] / "sslcore" / "config"
RECIPES = sorted(str(p.relative_to(CONFIG_ROOT).with_suffix("")) for p in CONFIG_ROOT.rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_shipped_recipe_composes(recipe):
    cfg = compose_config([f"config={recipe}"])
    assert cfg.LOSS.name or recipe.startswith(("feature_extraction", "benchmark"))


def test_every_pretrain_method_has_imagenet_fashion_mnist_and_quick_recipes():
    for method_dir in sorted((CONFIG_ROOT / "pretrain").iterdir()):
        names = [p.stem for p in method_dir.glob("*.yaml")]
        assert any(n.startswith("quick_") for n in names), method_dir.name
        assert any("fashion_mnist" in n for n in names), method_dir.name
        imagenet = [p for p in method_dir.glob("*.yaml") if "imagenet1k" in p.read_text()]
        assert imagenet, f"{method_dir.name}: no ImageNet recipe"
