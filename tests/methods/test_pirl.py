"""PIRL: image + patches views, their collator, MULTI_INPUT_HEAD_MAPPING, the two-term memory
loss (only the images update the memory), every recipe, and the quick recipe end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from resume_helpers import rewind
from world_helpers import assert_two_processes_train_like_one
from sslcore.config import compose_config
from sslcore.config.infer import infer_config
from sslcore.data import build_collator
from sslcore.data.patches import ImgPilToPatchesAndImage, patch_and_image_collator
from sslcore.engine.launcher import run_engine
from sslcore.engine.trainer import build_task, train_step
from sslcore.losses.nce_with_memory import NCELossWithMemory
from sslcore.methods.pirl import check_multi_input_config, model_inputs
from sslcore.models import build_model
from sslcore.models.model import parse_input_mapping

RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "sslcore/config/pretrain/"
                                  "pirl").glob("*.yaml"))
QUICK = ["config=pretrain/pirl/quick_pirl", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]


def _image(side=30, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def test_image_and_patches_views_have_their_shapes_and_come_from_the_grid():
    image = _image(30)
    t = ImgPilToPatchesAndImage(crop_scale_image=(0.5, 1.0), crop_size_image=24,
                                crop_scale_patches=(1.0, 1.0), crop_size_patches=30,
                                permute_patches=False, num_patches=9, patch_jitter=3)
    torch.manual_seed(0)
    views = t(image)
    assert len(views) == 10 and views[0].size == (24, 24)
    assert all(v.size == (7, 7) for v in views[1:])  # 10 px cells minus 3 px jitter
    full = np.asarray(image)
    for k, patch in enumerate(views[1:]):  # reading order, each inside its own cell
        row, col = divmod(k, 3)
        cell = full[10 * row:10 * row + 10, 10 * col:10 * col + 10]
        p = np.asarray(patch)
        assert any(np.array_equal(cell[dy:dy + 7, dx:dx + 7], p) for dy in range(3) for dx in range(3))


def test_patches_are_permuted_when_asked():
    image = _image(30)
    kw = dict(crop_scale_image=(1.0, 1.0), crop_size_image=30, crop_scale_patches=(1.0, 1.0),
              crop_size_patches=30, num_patches=9, patch_jitter=3)
    torch.manual_seed(3)
    ordered = [np.asarray(v) for v in ImgPilToPatchesAndImage(permute_patches=False, **kw)(image)[1:]]
    torch.manual_seed(3)
    shuffled = [np.asarray(v) for v in ImgPilToPatchesAndImage(permute_patches=True, **kw)(image)[1:]]
    assert sorted(p.tobytes() for p in ordered) == sorted(p.tobytes() for p in shuffled)
    assert [p.tobytes() for p in ordered] != [p.tobytes() for p in shuffled]


def _sample(i, patches=9, valid=True):
    data = [torch.full((3, 8, 8), float(100 * i))] + [torch.full((3, 4, 4), float(100 * i + p))
                                                      for p in range(1, patches + 1)]
    n = len(data)
    return {"data": data, "label": [i] * n, "data_idx": [10 + i] * n, "data_valid": [valid] * n}


def test_patch_and_image_collator_layout():
    samples = [_sample(i) for i in range(3)] + [_sample(3, valid=False)]
    batch = build_collator("patch_and_image_collator")(samples)
    images, patches = batch["data"]
    assert batch["input_names"] == ["images", "patches"]
    assert images.shape == (3, 3, 8, 8) and patches.shape == (27, 3, 4, 4)
    assert images[:, 0, 0, 0].tolist() == [0.0, 100.0, 200.0]
    assert patches[:, 0, 0, 0].tolist() == [100 * i + p for i in range(3) for p in range(1, 10)]
    assert batch["data_idx"].tolist() == [10, 11, 12] and batch["num_skipped"] == 1
    with pytest.raises(ValueError, match="ImgPilToPatchesAndImage"):
        patch_and_image_collator([{"data": [torch.zeros(3, 2, 2)], "label": [0], "data_idx": [0],
                                   "data_valid": [True]}])


def test_model_inputs_follow_input_key_names():
    batch = {"data": [torch.zeros(2, 3, 8, 8), torch.ones(18, 3, 4, 4)], "input_names": ["images", "patches"]}
    inputs = model_inputs(batch, ["patches", "images"])
    assert list(inputs) == ["patches", "images"] and inputs["patches"].shape == (18, 3, 4, 4)
    assert model_inputs({"data": [torch.zeros(2, 3)]}, ["data"]).shape == (2, 3)
    with pytest.raises(ValueError, match="INPUT_KEY_NAMES"):
        model_inputs(batch, ["data"])


def _pirl_model():
    cfg = compose_config(QUICK)
    torch.manual_seed(0)
    return build_model(cfg.MODEL).eval()


def test_multi_input_mapping_runs_each_input_through_the_trunk_and_its_head():
    model = _pirl_model()
    assert isinstance(model.heads[0], torch.nn.Sequential) and len(model.heads[0]) == 3
    assert any(k.startswith("heads.0.2.clf.0") for k in model.state_dict())
    images, patches = torch.randn(2, 3, 32, 32), torch.randn(18, 3, 8, 8)
    with torch.no_grad():
        out_patches, out_images = model({"images": images, "patches": patches})
        assert out_patches.shape == out_images.shape == (2, 32)
        torch.testing.assert_close(out_patches, model.heads[0](model.trunk(patches)[0]))
        torch.testing.assert_close(out_images, model.heads[1](model.trunk(images)[0]))
        # the per-image patch embedding depends only on that image's 9 patches
        alone = model({"images": images[:1], "patches": patches[:9]})[0]
        torch.testing.assert_close(alone, out_patches[:1])
    with pytest.raises(ValueError, match="batch has"):
        model({"images": images})


def test_models_without_a_mapping_are_unchanged():
    cfg = compose_config(["config=pretrain/simclr/quick_simclr"])
    torch.manual_seed(0)
    model = build_model(cfg.MODEL).eval()
    assert model.input_mapping == []
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model.heads[0](model.trunk(x)[0]))
    with pytest.raises(ValueError, match="MULTI_INPUT_HEAD_MAPPING is empty"):
        model({"images": x})


@pytest.mark.parametrize("entries, message", [
    ([["a", ["nope"]]], "exactly one trunk feature"),
    ([["a", ["flatten"]], ["a", ["flatten"]]], "mapped twice"),
    ([["a", {"feat_names": ["flatten"], "head_index": 5}]], "head_index 5"),
    ([["a", {"feat_names": ["flatten"], "additional_keys": ["mask"]}]], "not supported"),
    (["a"], "write"),
])
def test_bad_mappings_are_explained(entries, message):
    with pytest.raises(ValueError, match=message):
        parse_input_mapping(entries, 2, ["res5", "flatten"])


def test_mapping_defaults_follow_vissl():
    mapping = parse_input_mapping([["patches", ["flatten"]], ["images", ["flatten"]], ["x", ["flatten"]]],
                                  2, ["flatten"])
    assert mapping == [("patches", ["flatten"], 0), ("images", ["flatten"], 1), ("x", ["flatten"], 1)]


def test_two_terms_are_weighted_and_share_the_memory():
    torch.manual_seed(0)
    memory = F.normalize(torch.randn(30, 6), dim=1)
    ids = torch.tensor([1, 4, 29])
    negs = [torch.randint(0, 30, (3, 5)), torch.randint(0, 30, (3, 5))]
    patches, images = torch.randn(3, 6), torch.randn(3, 6)
    both = NCELossWithMemory(loss_weights=[0.5, 0.5], norm_constant=4.0)([patches, images], ids, memory, negs)
    single = NCELossWithMemory(norm_constant=4.0)
    expected = 0.5 * single(patches, ids, memory, negs[0]) + 0.5 * single(images, ids, memory, negs[1])
    assert both.item() == pytest.approx(expected.item(), rel=1e-6)


def test_only_the_image_embeddings_update_the_memory(tmp_path):
    cfg = compose_config(QUICK + [f"config.CHECKPOINT.DIR={tmp_path}"])
    cfg, _ = infer_config(cfg, world_size=1, local_world_size=1, cuda_available=False)
    task = build_task(cfg, torch.device("cpu"))
    task.hooks = [task.method]
    batch = next(iter(task.loader))
    before = task.method.bank.memory.clone()
    train_step(task, batch)
    ids = batch["data_idx"]
    patches_out, images_out = (F.normalize(o.detach(), dim=1) for o in task.last_output)
    after = task.method.bank.memory[ids]
    torch.testing.assert_close(after, F.normalize(0.5 * before[ids] + 0.5 * images_out, dim=1))
    assert not torch.allclose(after, F.normalize(0.5 * before[ids] + 0.5 * patches_out, dim=1))


def test_inconsistent_pirl_settings_are_rejected():
    for override, message in [("config.LOSS.nce_loss_with_memory.loss_weights=[1.0]", "loss_weights"),
                              ("config.LOSS.nce_loss_with_memory.update_mem_with_emb_index=2",
                               "update_mem_with_emb_index"),
                              ("config.DATA.TRAIN.INPUT_KEY_NAMES=[images]", "INPUT_KEY_NAMES")]:
        with pytest.raises(ValueError, match=message):
            check_multi_input_config(compose_config(QUICK + [override]))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_its_heads_fit(recipe):
    cfg = compose_config([f"config=pretrain/pirl/{recipe}"])
    check_multi_input_config(cfg)
    if "4node" not in recipe:  # ResNet-50 recipes: composing is enough
        model = build_model(cfg.MODEL)
        dims = cfg.LOSS.nce_loss_with_memory.memory_params.embedding_dim
        assert [m[0] for m in model.input_mapping] == ["patches", "images"]
        assert all(h[-1].dims[-1] == dims for h in model.heads)


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def test_quick_recipe_trains_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    overrides = QUICK + [f"config.CHECKPOINT.DIR={run_dir}", "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3"]
    run_engine(overrides)
    losses = [r["loss"] for r in _records(run_dir)]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    straight = torch.load(run_dir / "checkpoint.torch", weights_only=True)["classy_state_dict"]
    rewind(run_dir, "model_iteration6.torch")
    resumed = torch.load(run_engine(overrides), weights_only=True)["classy_state_dict"]
    assert [r["loss"] for r in _records(run_dir)[8:]] == pytest.approx(losses[6:], rel=1e-5)
    torch.testing.assert_close(resumed["loss"]["memory_bank"]["memory"],
                               straight["loss"]["memory_bank"]["memory"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """The same global batch of 16 images and their patches on 1 and on 2 gloo processes: same
    negatives, same memory bank (updated from the image embeddings of every rank), same losses
    and weights after 4 steps (GroupNorm trunk, heads without BatchNorm).

    One group per GroupNorm: the 8 px patches reach res5 at 1x1, where the default 32 groups
    normalise 2 values each and amplify float summation-order noise (1 vs 2 OpenMP threads alone
    then end 4 steps 3e-4 apart in loss; with one group, 1e-8 in weights)."""
    overrides = QUICK + [
        "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm", "config.MODEL.TRUNK.RESNETS.GROUPNORM_GROUPS=1",
        "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=32",
        "config.MODEL.HEAD.PARAMS=[[[mlp,{dims:[64,32]}],[siamese_concat_view,{num_towers:9}],"
        "[mlp,{dims:[288,32]}]],[[mlp,{dims:[64,64,32],use_bn:false,use_relu:true}]]]"]
    one, two = assert_two_processes_train_like_one(tmp_path, overrides, 16)
    bank1, bank2 = (run[1]["classy_state_dict"]["loss"]["memory_bank"]["memory"] for run in (one, two))
    torch.testing.assert_close(bank1, bank2, rtol=1e-3, atol=1e-4)
