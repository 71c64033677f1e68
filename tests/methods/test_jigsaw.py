"""Jigsaw: the permutation sets, the patch transforms and their shapes, the siamese collator and
head, every recipe, and the quick recipe end to end (with the cross-entropy method)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from resume_helpers import rewind
from world_helpers import assert_two_processes_train_like_one
from sslcore.config import compose_config
from sslcore.data import build_collator, build_transforms
from sslcore.data.jigsaw_permutations import (
    generate_jigsaw_permutations,
    load_permutations,
    save_permutations,
)
from sslcore.data.patches import ImgPatchesFromTensor, ShuffleImgPatches
from sslcore.engine.launcher import run_engine
from sslcore.models import build_model
from sslcore.models.heads import build_head

RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "sslcore/config/pretrain/"
                                  "jigsaw").glob("*.yaml"))
QUICK = ["config=pretrain/jigsaw/quick_jigsaw", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]


def hamming(perms: np.ndarray) -> np.ndarray:
    """All pairwise Hamming distances, written plainly (the diagonal is left at 0)."""
    n = len(perms)
    out = np.zeros((n, n), dtype=int)
    for i in range(n):
        for j in range(n):
            out[i, j] = sum(int(a != b) for a, b in zip(perms[i], perms[j]))
    return out


def _off_diagonal(d: np.ndarray) -> np.ndarray:
    return d[~np.eye(len(d), dtype=bool)]


@pytest.mark.parametrize("criterion", ["max_avg", "max_min"])
def test_permutation_sets_are_valid_distinct_and_seeded(criterion):
    perms = generate_jigsaw_permutations(100, 9, seed=0, criterion=criterion)
    assert perms.shape == (100, 9) and perms.dtype == np.int64
    assert all(sorted(row) == list(range(9)) for row in perms.tolist())
    assert len({tuple(r) for r in perms.tolist()}) == 100
    assert np.array_equal(perms, generate_jigsaw_permutations(100, 9, seed=0, criterion=criterion))
    assert not np.array_equal(perms, generate_jigsaw_permutations(100, 9, seed=1, criterion=criterion))


def test_max_min_keeps_every_pair_far_apart_and_max_avg_spreads_on_average():
    rng = np.random.default_rng(0)
    random_set = np.array([rng.permutation(9) for _ in range(100)])
    random_d = _off_diagonal(hamming(random_set))
    max_min = _off_diagonal(hamming(generate_jigsaw_permutations(100, 9, seed=0, criterion="max_min")))
    max_avg = _off_diagonal(hamming(generate_jigsaw_permutations(100, 9, seed=0, criterion="max_avg")))
    assert max_min.min() >= 6 > random_d.min()
    assert max_avg.mean() > random_d.mean() + 0.05


def test_small_sets_are_exhaustive_and_greedy():
    everything = generate_jigsaw_permutations(24, 4, seed=3)
    assert {tuple(r) for r in everything.tolist()} == set(itertools.permutations(range(4)))
    two = generate_jigsaw_permutations(2, 4, seed=3, criterion="max_min")
    assert hamming(two)[0, 1] == 4  # the second pick is as far as possible from the first
    with pytest.raises(ValueError, match="num_perms"):
        generate_jigsaw_permutations(25, 4)
    with pytest.raises(ValueError, match="criterion"):
        generate_jigsaw_permutations(5, 4, criterion="avg")


def test_permutation_files_round_trip_and_vissl_files_are_one_based(tmp_path):
    perms = generate_jigsaw_permutations(10, 9, seed=0)
    path = save_permutations(perms, tmp_path / "perms.npy")
    assert np.array_equal(load_permutations(path, 9), perms)
    np.save(tmp_path / "vissl.npy", perms + 1)
    assert np.array_equal(load_permutations(tmp_path / "vissl.npy", 9), perms)
    np.save(tmp_path / "bad.npy", np.zeros((3, 9), dtype=int))
    with pytest.raises(ValueError, match="permutation of"):
        load_permutations(tmp_path / "bad.npy", 9)
    with pytest.raises(ValueError, match="shape"):
        load_permutations(path, 4)


@pytest.mark.parametrize("shape, num, jitter, patch", [
    ((3, 255, 255), 9, 21, (64, 64)), ((3, 30, 30), 9, 2, (8, 8)), ((1, 40, 60), 4, 5, (15, 25)),
    ((3, 64, 64), 16, 3, (13, 13)),
])
def test_patches_from_tensor_have_their_shapes_and_lie_in_their_cells(shape, num, jitter, patch):
    image = torch.rand(shape)
    torch.manual_seed(0)
    patches = ImgPatchesFromTensor(num_patches=num, patch_jitter=jitter)(image)
    side = math.isqrt(num)
    assert patches.shape == (num, shape[0], *patch)
    cell_h, cell_w = shape[1] // side, shape[2] // side
    for k in range(num):
        row, col = divmod(k, side)
        cell = image[:, row * cell_h:(row + 1) * cell_h, col * cell_w:(col + 1) * cell_w]
        assert any(torch.equal(cell[:, dy:dy + patch[0], dx:dx + patch[1]], patches[k])
                   for dy in range(jitter) for dx in range(jitter))


def test_patch_transform_errors_name_the_fix():
    with pytest.raises(ValueError, match="perfect square"):
        ImgPatchesFromTensor(num_patches=8)
    with pytest.raises(ValueError, match="patch_jitter"):
        ImgPatchesFromTensor(num_patches=9, patch_jitter=10)(torch.rand(3, 30, 30))


def test_shuffle_reorders_by_the_labelled_permutation_and_sets_the_label(tmp_path):
    shuffle = ShuffleImgPatches(perm_file=str(tmp_path / "p.npy"), num_perms=20)
    assert (tmp_path / "p.npy").exists() and shuffle.perms.shape == (20, 9)
    patches = torch.arange(9.0)[:, None, None, None].expand(9, 3, 4, 4).clone()
    torch.manual_seed(1)
    labels = set()
    for _ in range(30):
        out, label = shuffle(patches)
        labels.add(label)
        assert out.shape == (9, 3, 4, 4)
        assert out[:, 0, 0, 0].tolist() == [float(i) for i in shuffle.perms[label]]
    assert len(labels) > 5 and max(labels) < 20
    sample = {"data": [patches], "label": [7], "data_idx": [3], "data_valid": [True]}
    out = shuffle.apply_to_sample(sample, None)
    assert sample["label"] == [7]  # the input sample is not modified
    expected = torch.tensor([float(i) for i in shuffle.perms[out["label"][0]]])
    assert torch.equal(out["data"][0][:, 0, 0, 0], expected)
    # reloading the saved set gives the same permutations; a different size is refused
    assert np.array_equal(ShuffleImgPatches(perm_file=str(tmp_path / "p.npy")).perms, shuffle.perms)
    with pytest.raises(ValueError, match="num_perms"):
        ShuffleImgPatches(perm_file=str(tmp_path / "p.npy"), num_perms=30)
    with pytest.raises(FileNotFoundError, match="num_perms"):
        ShuffleImgPatches(perm_file=str(tmp_path / "missing.npy"))


def test_generated_sets_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLCORE_CACHE_DIR", str(tmp_path))
    first = ShuffleImgPatches(num_perms=12, perm_seed=5)
    assert Path(first.perm_file).parent == tmp_path / "jigsaw_permutations"
    assert np.array_equal(ShuffleImgPatches(num_perms=12, perm_seed=5).perms, first.perms)


def test_transforms_collator_and_head_make_one_row_per_image(tmp_path):
    transform = build_transforms([
        {"name": "ToTensor"},
        {"name": "ImgPatchesFromTensor", "num_patches": 9, "patch_jitter": 2},
        {"name": "ShuffleImgPatches", "perm_file": str(tmp_path / "p.npy"), "num_perms": 10},
    ])
    from PIL import Image
    samples = []
    for i in range(4):
        image = Image.fromarray(np.full((30, 30, 3), 10 * i, dtype=np.uint8))
        samples.append(transform({"data": [image], "label": [0], "data_idx": [i], "data_valid": [True]}))
    batch = build_collator("siamese_collator")(samples)
    (data,) = batch["data"]
    assert data.shape == (36, 3, 8, 8)
    assert [round(float(data[9 * i, 0, 0, 0]) * 255) for i in range(4)] == [0, 10, 20, 30]  # sample-major
    assert batch["label"].tolist() == [s["label"][0] for s in samples]
    assert batch["data_idx"].tolist() == [0, 1, 2, 3]
    head = build_head("siamese_concat_view", {"num_towers": 9})
    feats = torch.randn(36, 5)
    joined = head(feats)
    assert joined.shape == (4, 45) and torch.equal(joined[1], feats[9:18].flatten())
    assert head(torch.randn(18, 5, 1, 1)).shape == (2, 45)
    with pytest.raises(ValueError, match="towers"):
        head(torch.randn(10, 5))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes_and_the_classifier_fits_the_permutations(recipe, tmp_path):
    cfg = compose_config([f"config=pretrain/jigsaw/{recipe}", f"config.CHECKPOINT.DIR={tmp_path}"])
    shuffle = [t for t in cfg.DATA.TRAIN.TRANSFORMS if t["name"] == "ShuffleImgPatches"][0]
    assert str(shuffle.perm_file).startswith(str(tmp_path))  # saved with the run
    assert cfg.MODEL.HEAD.PARAMS[-1][1]["dims"][-1] == shuffle.num_perms
    assert cfg.MODEL.HEAD.PARAMS[1] == ["siamese_concat_view", {"num_towers": 9}]
    assert cfg.LOSS.name == "cross_entropy_multiple_output_single_target"
    if "8gpu" not in recipe:
        build_model(cfg.MODEL)


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def test_quick_recipe_trains_saves_its_permutations_and_resumes(tmp_path):
    run_dir = tmp_path / "run"
    overrides = QUICK + [f"config.CHECKPOINT.DIR={run_dir}", "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=5"]
    run_engine(overrides)
    losses = [r["loss"] for r in _records(run_dir)]
    assert len(losses) == 16 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])  # the bordered puzzle is solvable
    saved = run_dir / "hamming_perms_10_patches_9_max_avg.npy"
    assert np.array_equal(np.load(saved), generate_jigsaw_permutations(10, 9, seed=0))
    straight = torch.load(run_dir / "checkpoint.torch", weights_only=True)["classy_state_dict"]
    rewind(run_dir, "model_iteration10.torch")
    resumed = torch.load(run_engine(overrides), weights_only=True)["classy_state_dict"]
    assert [r["iteration"] for r in _records(run_dir)[16:]] == list(range(11, 17))
    assert [r["loss"] for r in _records(run_dir)[16:]] == pytest.approx(losses[10:], rel=1e-4, abs=1e-5)
    for key, value in straight["base_model"]["model"]["heads"].items():
        torch.testing.assert_close(resumed["base_model"]["model"]["heads"][key], value, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """The same global batch of 16 images (144 patches) on 1 and on 2 gloo processes: both ranks
    load the same saved permutation set, each sample keeps its seeded permutation, and the losses
    and weights agree after 4 steps (GroupNorm trunk, no BatchNorm in the patch head; a 10x lower
    LR than the recipe's, so float summation-order noise does not grow past the tolerance)."""
    overrides = QUICK + ["config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
                         "config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,32],use_bn:false,use_relu:true,"
                         "skip_last_layer_relu_bn:false}],[siamese_concat_view,{num_towers:9}],"
                         "[mlp,{dims:[288,10]}]]",
                         "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=64", "config.OPTIMIZER.num_epochs=1",
                         "config.OPTIMIZER.param_schedulers.lr.start_value=0.01",
                         "config.OPTIMIZER.param_schedulers.lr.end_value=0.001"]
    assert_two_processes_train_like_one(tmp_path, overrides, 16)
    saved = [np.load(d / "hamming_perms_10_patches_9_max_avg.npy") for d in (tmp_path / "one", tmp_path / "two")]
    assert np.array_equal(saved[0], saved[1])
