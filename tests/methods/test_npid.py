"""NPID / NPID++: the NCE loss against a plain formula, the memory bank's update and negatives,
the method's step, every recipe, and the quick recipe end to end (train, resume, 2 processes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resume_helpers import rewind
from world_helpers import assert_two_processes_train_like_one
from sslcore.config import compose_config
from sslcore.config.infer import infer_config
from sslcore.engine.launcher import run_engine
from sslcore.engine.trainer import build_task, train_step
from sslcore.losses import LOSSES, build_loss
from sslcore.losses.nce_with_memory import NCELossWithMemory
from sslcore.methods import get_method_class
from sslcore.methods.memory_bank import MemoryBank
from sslcore.methods.npid import NPID

RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "sslcore/config/pretrain/"
                                  "npid").glob("*.yaml"))
QUICK = ["config=pretrain/npid/quick_npid", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]


def reference_loss(embeddings, ids, memory, negatives, *, loss_type, temperature, weights, z_const):
    """The NCE / InfoNCE formulas written out, one sample and one memory row at a time."""
    n, eps = memory.shape[0], float(np.finfo(np.float32).eps)
    total = 0.0
    for emb, neg, w in zip(embeddings, negatives, weights):
        k = neg.shape[1]
        per_sample = []
        for i in range(len(ids)):
            z = emb[i] / emb[i].norm()
            rows = [int(ids[i])] + [int(j) for j in neg[i]]
            s = torch.stack([torch.dot(z, memory[r]) / temperature for r in rows])
            if loss_type == "cross_entropy":
                per_sample.append(-(s[0] - torch.logsumexp(s, dim=0)))
            else:
                p = torch.exp(s) / z_const
                term = torch.log(p[0] / (p[0] + k / n + eps))
                for j in range(1, k + 1):
                    term = term + torch.log((k / n) / (p[j] + k / n + eps))
                per_sample.append(-term)
        total = total + w * torch.stack(per_sample).mean()
    return total


@pytest.mark.parametrize("loss_type", ["nce", "cross_entropy"])
@pytest.mark.parametrize("temperature", [0.07, 0.5])
@pytest.mark.parametrize("terms", [1, 2])
def test_loss_and_gradient_match_the_plain_formula(loss_type, temperature, terms):
    torch.manual_seed(terms)
    memory = F.normalize(torch.randn(20, 8, dtype=torch.float64), dim=1)
    ids = torch.tensor([3, 0, 17, 9, 3])
    negatives = [torch.randint(0, 20, (5, 6)) for _ in range(terms)]
    data = [torch.randn(5, 8, dtype=torch.float64) for _ in range(terms)]
    weights = [0.5, 0.5] if terms == 2 else [1.0]
    z_const = 7.5  # fixed, so the reference needs no first-batch estimate
    loss_fn = NCELossWithMemory(loss_type=loss_type, temperature=temperature, loss_weights=weights,
                                norm_constant=z_const if loss_type == "nce" else -1)
    mine_in = [d.clone().requires_grad_(True) for d in data]
    ref_in = [d.clone().requires_grad_(True) for d in data]
    mine = loss_fn(mine_in, ids, memory, negatives)
    ref = reference_loss(ref_in, ids, memory, negatives, loss_type=loss_type,
                         temperature=temperature, weights=weights, z_const=z_const)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), rel=1e-9)
    for a, b in zip(mine_in, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-7, atol=1e-10)


def test_partition_constant_is_set_once_from_the_first_batch_and_checkpointed():
    torch.manual_seed(0)
    memory = F.normalize(torch.randn(50, 4), dim=1)
    ids, neg = torch.arange(6), torch.randint(0, 50, (6, 9))
    z = torch.randn(6, 4)
    loss_fn = NCELossWithMemory(temperature=0.1)
    loss_fn(z, ids, memory, neg)
    scores = torch.cat([memory[ids][:, None], memory[neg]], 1) @ F.normalize(z, dim=1)[:, :, None] / 0.1
    expected = torch.exp(scores).mean().item() * 50
    assert loss_fn.partition.item() == pytest.approx(expected, rel=1e-6)
    loss_fn(torch.randn(6, 4), ids, memory, neg)  # a second batch does not move Z
    assert loss_fn.partition.item() == pytest.approx(expected, rel=1e-6)
    restored = NCELossWithMemory(temperature=0.1)
    restored.load_state_dict(loss_fn.state_dict())
    assert restored.partition.item() == pytest.approx(expected, rel=1e-12)


def test_loss_is_registered_and_built_from_its_section():
    assert "nce_loss_with_memory" in LOSSES.names()
    cfg = compose_config(["config=pretrain/npid/npid_8gpu_resnet"])
    loss = build_loss(cfg.LOSS)
    assert isinstance(loss, NCELossWithMemory) and loss.temperature == 0.07 and loss.loss_type == "nce"
    assert get_method_class("nce_loss_with_memory") is NPID


def test_loss_rejects_bad_inputs():
    memory = F.normalize(torch.randn(10, 4), dim=1)
    loss_fn = NCELossWithMemory(loss_weights=[1.0])
    with pytest.raises(ValueError, match="loss_weights"):
        loss_fn([torch.randn(2, 4)] * 2, torch.tensor([0, 1]), memory, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_train_samples"):
        loss_fn(torch.randn(2, 4), torch.tensor([0, 10]), memory, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="embedding_dim"):
        loss_fn(torch.randn(2, 5), torch.tensor([0, 1]), memory, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="temperature"):
        NCELossWithMemory(temperature=0.0)


def test_memory_update_mixes_by_momentum_then_normalises_only_the_given_rows():
    bank = MemoryBank(num_items=12, embedding_dim=5, momentum=0.3, seed=4)
    before = bank.memory.clone()
    assert torch.allclose(before.norm(dim=1), torch.ones(12))
    ids = torch.tensor([7, 2, 11])
    z = torch.randn(3, 5)
    bank.update(z, ids)
    for row, emb in zip(ids.tolist(), z):
        mixed = 0.3 * before[row] + 0.7 * emb
        torch.testing.assert_close(bank.memory[row], mixed / mixed.norm())
    untouched = [r for r in range(12) if r not in ids.tolist()]
    assert torch.equal(bank.memory[untouched], before[untouched])


def test_initial_memory_is_seeded_and_in_range():
    a, b = MemoryBank(30, 6, seed=1, norm_init=False), MemoryBank(30, 6, seed=1, norm_init=False)
    assert torch.equal(a.memory, b.memory)
    assert not torch.equal(a.memory, MemoryBank(30, 6, seed=2, norm_init=False).memory)
    assert a.memory.abs().max() <= 1 / math.sqrt(6 / 3)


def test_negatives_are_reproducible_uniform_and_independent_of_the_batch_split():
    bank = MemoryBank(num_items=40, embedding_dim=4, seed=0)
    ids = torch.tensor([5, 9, 1, 30, 22, 5])
    whole = bank.sample_negatives(ids, 7, seed_parts=(0, 3, 0))
    assert whole.shape == (6, 7) and whole.dtype == torch.int64
    assert whole.min() >= 0 and whole.max() < 40
    halves = torch.cat([bank.sample_negatives(ids[:3], 7, seed_parts=(0, 3, 0)),
                        bank.sample_negatives(ids[3:], 7, seed_parts=(0, 3, 0))])
    assert torch.equal(whole, halves)  # two processes draw what one process draws
    assert torch.equal(whole[0], whole[5])  # per sample id
    assert not torch.equal(whole, bank.sample_negatives(ids, 7, seed_parts=(0, 4, 0)))
    many = bank.sample_negatives(torch.arange(400), 50, seed_parts=(1,)).flatten()
    counts = torch.bincount(many, minlength=40).float()
    assert counts.min() > 0.7 * counts.mean() and counts.max() < 1.3 * counts.mean()


def _task(tmp_path, *extra):
    cfg = compose_config(QUICK + [f"config.CHECKPOINT.DIR={tmp_path}", *extra])
    cfg, changes = infer_config(cfg, world_size=1, local_world_size=1, cuda_available=False)
    task = build_task(cfg, torch.device("cpu"))
    task.hooks = [task.method]
    return cfg, changes, task


def test_num_train_samples_is_inferred_from_the_data(tmp_path):
    cfg, changes, task = _task(tmp_path, "config.DATA.TRAIN.DATA_LIMIT=40")
    assert cfg.LOSS.nce_loss_with_memory.num_train_samples == 40
    assert any("num_train_samples" in c for c in changes)
    assert task.method.bank.memory.shape == (40, 32)


def test_one_step_writes_the_batch_embeddings_into_their_rows(tmp_path):
    _, _, task = _task(tmp_path)
    batch = next(iter(task.loader))
    before = task.method.bank.memory.clone()
    train_step(task, batch)
    ids = batch["data_idx"]
    z = F.normalize(task.last_output[0].detach(), dim=1)
    expected = F.normalize(0.5 * before[ids] + 0.5 * z, dim=1)
    torch.testing.assert_close(task.method.bank.memory[ids], expected)
    others = torch.ones(64, dtype=torch.bool)
    others[ids] = False
    assert torch.equal(task.method.bank.memory[others], before[others])
    assert task.method.loss.partition.item() > 0


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_composes(recipe):
    cfg = compose_config([f"config=pretrain/npid/{recipe}"])
    section = cfg.LOSS.nce_loss_with_memory
    assert cfg.LOSS.name == "nce_loss_with_memory"
    assert section.memory_params.embedding_dim == cfg.MODEL.HEAD.PARAMS[-1][1]["dims"][-1]
    if recipe.startswith("npid++"):
        assert section.negative_sampling_params.num_negatives == 32000
        assert cfg.DISTRIBUTED.NUM_NODES == 4 and cfg.OPTIMIZER.num_epochs == 800


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def test_quick_recipe_trains_and_resumes_exactly(tmp_path):
    run_dir = tmp_path / "run"
    run_engine(QUICK + [f"config.CHECKPOINT.DIR={run_dir}", "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3"])
    losses = [r["loss"] for r in _records(run_dir)]
    assert len(losses) == 8 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    straight = torch.load(run_dir / "checkpoint.torch", weights_only=True)
    bank = straight["classy_state_dict"]["loss"]["memory_bank"]["memory"]
    assert bank.shape == (64, 32) and torch.allclose(bank.norm(dim=1), torch.ones(64))
    # resume from the iteration-6 checkpoint (inside epoch 1): the last 2 steps are redone
    rewind(run_dir, "model_iteration6.torch")
    final = run_engine(QUICK + [f"config.CHECKPOINT.DIR={run_dir}",
                                "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3"])
    assert [r["iteration"] for r in _records(run_dir)[8:]] == [7, 8]
    resumed = torch.load(final, weights_only=True)
    assert [r["loss"] for r in _records(run_dir)[8:]] == pytest.approx(losses[6:], rel=1e-5)
    torch.testing.assert_close(resumed["classy_state_dict"]["loss"]["memory_bank"]["memory"], bank,
                               rtol=1e-5, atol=1e-6)
    for key, value in straight["classy_state_dict"]["base_model"]["model"]["trunk"].items():
        torch.testing.assert_close(resumed["classy_state_dict"]["base_model"]["model"]["trunk"][key], value,
                                   rtol=1e-5, atol=1e-6)


DISTRIBUTED = QUICK + [
    "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
    "config.MODEL.HEAD.PARAMS=[[mlp,{dims:[64,64,32],use_bn:false,use_relu:true}]]",
    "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=32",
]


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """Same global batch of 16 on 1 and 2 processes (GroupNorm: the forward does not depend on the
    split): same negatives, same Z, same memory updates, same losses and weights."""
    one, two = assert_two_processes_train_like_one(tmp_path, DISTRIBUTED, 16)
    s1, s2 = one[1]["classy_state_dict"], two[1]["classy_state_dict"]
    assert s1["loss"]["loss"]["partition"].item() == pytest.approx(s2["loss"]["loss"]["partition"].item(),
                                                                  rel=1e-5)
    torch.testing.assert_close(s1["loss"]["memory_bank"]["memory"], s2["loss"]["memory_bank"]["memory"],
                               rtol=1e-3, atol=1e-4)
