"""MoCo: the loss against a plain InfoNCE, the queue and key encoder step by step, shuffling BN on
two gloo ranks, the recipes, a real 2-epoch run that resumes exactly, and 2 processes vs 1."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from resume_helpers import rewind
from sslcore.config import compose_config
from sslcore.config.loader import CONFIG_ROOT
from sslcore.data.collators import build_collator
from sslcore.engine.launcher import run_engine
from sslcore.losses import build_loss
from sslcore.losses.moco import MoCoLoss
from sslcore.methods import get_method_class
from sslcore.methods.moco import MoCo, encode_keys_shuffled, shuffle_permutation
from sslcore.models import build_model

QUICK = "pretrain/moco/quick_moco"


def reference_info_nce(query, key, queue, temperature):
    """MoCo's loss written out per query: -log softmax over [q.k+, q.queue_1, ..., q.queue_K]
    (queue rows are stored normalised and used as they are)."""
    losses = []
    for q, k in zip(query, key):
        q = q / q.norm()
        k = k / k.norm()
        logits = [q @ k] + [q @ n for n in queue]
        losses.append(-torch.log_softmax(torch.stack(logits) / temperature, dim=0)[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("batch, queue_size, temperature", [(1, 3, 0.07), (5, 16, 0.2), (8, 8, 1.0)])
def test_loss_and_gradient_match_reference(batch, queue_size, temperature):
    torch.manual_seed(batch + queue_size)
    loss_fn = MoCoLoss(embedding_dim=6, queue_size=queue_size, temperature=temperature).double()
    query = torch.randn(batch, 6, dtype=torch.float64)
    key = torch.randn(batch, 6, dtype=torch.float64)
    mine_q, ref_q = query.clone().requires_grad_(True), query.clone().requires_grad_(True)
    ref_k = key.clone().requires_grad_(True)
    mine = loss_fn(mine_q, key)
    ref = reference_info_nce(ref_q, ref_k, loss_fn.queue.double(), temperature)
    mine.backward()
    ref.backward()
    assert mine.item() == pytest.approx(ref.item(), rel=1e-9)
    torch.testing.assert_close(mine_q.grad, ref_q.grad, rtol=1e-7, atol=1e-10)


def test_key_gets_no_gradient_and_queue_is_unit_norm_and_seeded():
    loss_fn = MoCoLoss(embedding_dim=4, queue_size=10)
    torch.testing.assert_close(loss_fn.queue.norm(dim=1), torch.ones(10))
    torch.testing.assert_close(loss_fn.queue, MoCoLoss(embedding_dim=4, queue_size=10).queue)
    key = torch.randn(3, 4, requires_grad=True)
    loss_fn(torch.randn(3, 4, requires_grad=True), key).backward()
    assert key.grad is None


def test_enqueue_is_a_ring_buffer():
    loss_fn = MoCoLoss(embedding_dim=2, queue_size=5)
    first = F.normalize(torch.randn(3, 2), dim=1)
    second = F.normalize(torch.randn(3, 2), dim=1)
    loss_fn.enqueue(first)
    assert int(loss_fn.queue_ptr) == 3
    loss_fn.enqueue(second)  # rows 3, 4, then wraps to row 0
    assert int(loss_fn.queue_ptr) == 1
    torch.testing.assert_close(loss_fn.queue[[1, 2]], first[1:])
    torch.testing.assert_close(loss_fn.queue[[3, 4, 0]], second)
    with pytest.raises(ValueError, match="queue_size"):
        loss_fn.enqueue(torch.randn(6, 2))


@pytest.mark.parametrize("kwargs, match", [
    ({"temperature": 0.0}, "temperature"), ({"queue_size": 0}, "queue_size"),
    ({"momentum": 1.5}, "momentum"),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MoCoLoss(**kwargs)


def test_wrong_width_names_the_key():
    with pytest.raises(ValueError, match="embedding_dim"):
        MoCoLoss(embedding_dim=8, queue_size=4)(torch.randn(2, 5), torch.randn(2, 5))


def test_collator_puts_views_apart():
    samples = [{"data": [torch.full((1, 2, 2), float(i)), torch.full((1, 2, 2), 10.0 + i)],
                "label": [i, i], "data_idx": [7 + i, 7 + i], "data_valid": [True, True]}
               for i in range(3)]
    batch = build_collator("moco_collator")(samples)
    assert batch["data"][0][:, 0, 0, 0].tolist() == [0.0, 1.0, 2.0]
    assert batch["data_momentum"][0][:, 0, 0, 0].tolist() == [10.0, 11.0, 12.0]
    assert batch["data_idx"].tolist() == [7, 8, 9] and batch["num_skipped"] == 0
    with pytest.raises(ValueError, match="exactly 2 views"):
        build_collator("moco_collator")([{**samples[0], "data": samples[0]["data"][:1],
                                          "label": [0], "data_idx": [7], "data_valid": [True]}])


def _tiny_method(momentum=0.9, queue_size=10, shuffle=True):
    cfg = compose_config([f"config={QUICK}", f"config.LOSS.moco_loss.momentum={momentum}",
                          f"config.LOSS.moco_loss.queue_size={queue_size}",
                          "config.LOSS.moco_loss.embedding_dim=32",
                          f"config.LOSS.moco_loss.shuffle_batch={str(shuffle).lower()}"])
    torch.manual_seed(0)
    model = build_model(cfg.MODEL)
    return MoCo(cfg, model, build_loss(cfg.LOSS)), model


def test_queue_holds_the_keys_in_order_and_key_encoder_follows_the_ema():
    """Several real steps: the queue rows are the keys, FIFO; the key encoder is m k + (1-m) q."""
    method, model = _tiny_method(momentum=0.9, queue_size=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    task = SimpleNamespace(iteration=0, max_iteration=4)
    encoder = method.key_encoder.encoder
    assert all(torch.equal(a, b) for a, b in zip(encoder.parameters(), model.parameters()))
    all_keys = []
    for step in range(4):
        gen = torch.Generator().manual_seed(step)
        images = [torch.rand(4, 3, 16, 16, generator=gen) for _ in range(2)]
        batch = {"data": [images[0]], "data_momentum": [images[1]]}
        expected_keys = F.normalize(encoder(images[1])[0].detach(), dim=1)  # train-mode BN, as used
        loss = method.compute_loss(task, method.forward(task, batch), batch)
        torch.testing.assert_close(method._keys, expected_keys)
        optimizer.zero_grad()
        loss.backward()
        old_key = [p.detach().clone() for p in encoder.parameters()]
        optimizer.step()
        method.on_update(task)
        for k_new, k_old, q in zip(encoder.parameters(), old_key, model.parameters()):
            torch.testing.assert_close(k_new, 0.9 * k_old + 0.1 * q.detach())
        all_keys.append(expected_keys)
        task.iteration += 1
    # 16 keys through a queue of 10: rows hold keys 6..15, starting at the pointer 16 % 10 = 6
    keys = torch.cat(all_keys)
    queue = method.loss.queue
    assert int(method.loss.queue_ptr) == 6
    torch.testing.assert_close(torch.cat([queue[6:], queue[:6]]), keys[6:])


def test_state_round_trip_restores_queue_and_key_encoder():
    method, _ = _tiny_method()
    method.loss.enqueue(torch.randn(3, 32))
    with torch.no_grad():
        next(method.key_encoder.encoder.parameters()).add_(1.0)
    state = method.state_dict()
    fresh, _ = _tiny_method()
    fresh.load_state_dict(state)
    torch.testing.assert_close(fresh.loss.queue, method.loss.queue)
    assert int(fresh.loss.queue_ptr) == 3
    for a, b in zip(fresh.key_encoder.encoder.parameters(), method.key_encoder.encoder.parameters()):
        torch.testing.assert_close(a, b)


def test_config_checks_name_the_fix():
    cls = get_method_class("moco_loss")
    ok = compose_config([f"config={QUICK}"])
    assert cls.infer_config(ok, world_size=1) == {}
    with pytest.raises(ValueError, match="moco_collator"):
        cls.infer_config(compose_config([f"config={QUICK}",
                                         "config.DATA.TRAIN.COLLATE_FUNCTION=simclr_collator"]),
                         world_size=1)
    with pytest.raises(ValueError, match="queue_size"):
        cls.infer_config(ok, world_size=2)  # 2 x 16 keys per step, queue of 16


def test_shuffle_permutation_is_seeded_per_step():
    a = shuffle_permutation(16, seed=0, iteration=3)
    assert sorted(a.tolist()) == list(range(16))
    assert torch.equal(a, shuffle_permutation(16, seed=0, iteration=3))
    assert not torch.equal(a, shuffle_permutation(16, seed=0, iteration=4))


# ---- shuffling BN on two gloo ranks ----------------------------------------------------------

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Recorder(torch.nn.Module):
    """A per-sample 'encoder' that also records which images it saw together (one BN batch)."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(4, 3, generator=torch.Generator().manual_seed(5)))
        self.seen = []

    def forward(self, x):
        self.seen.append(x[:, 0].clone())
        return [x @ self.weight.t()]


def _shuffle_worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        images = torch.randn(2 * WORLD, 3, generator=torch.Generator().manual_seed(9))
        images[:, 0] = torch.arange(2 * WORLD, dtype=torch.float)  # column 0: the sample id
        mine = images[rank * 2:(rank + 1) * 2]
        encoder = _Recorder()
        perm = shuffle_permutation(2 * WORLD, seed=0, iteration=1)
        keys, all_keys = encode_keys_shuffled(encoder, mine, perm)
        torch.save({"keys": keys, "all_keys": all_keys, "seen": encoder.seen[0], "perm": perm,
                    "images": images}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_shuffled_keys_come_back_to_their_samples(tmp_path):
    # fork: the children inherit the imported modules (a spawned child re-imports torch and
    # sslcore, tens of seconds on a busy machine); the parent never joins a process group
    mp.start_processes(_shuffle_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD,
                       join=True, start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    images, perm = ranks[0]["images"], ranks[0]["perm"]
    expected = F.normalize(images @ _Recorder().weight.detach().t(), dim=1)
    for rank, out in enumerate(ranks):
        torch.testing.assert_close(out["keys"], expected[rank * 2:(rank + 1) * 2])
        torch.testing.assert_close(out["all_keys"], expected)
        # the encoder of rank r saw the images of its permutation slice, not its own batch
        assert out["seen"].tolist() == perm[rank * 2:(rank + 1) * 2].float().tolist()
    assert sorted(torch.cat([r["seen"] for r in ranks]).tolist()) == [0.0, 1.0, 2.0, 3.0]


# ---- recipes and real runs -------------------------------------------------------------------

RECIPES = sorted(str(p.relative_to(CONFIG_ROOT).with_suffix(""))
                 for p in (CONFIG_ROOT / "pretrain" / "moco").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_composes(recipe):
    cfg = compose_config([f"config={recipe}"])
    assert cfg.LOSS.name == "moco_loss"
    assert cfg.DATA.TRAIN.COLLATE_FUNCTION == "moco_collator"
    get_method_class("moco_loss").infer_config(cfg, world_size=1)


def test_imagenet_recipes_carry_the_published_hyperparameters():
    v2 = compose_config(["config=pretrain/moco/moco_1node_resnet"])
    assert (v2.LOSS.moco_loss.temperature, v2.LOSS.moco_loss.queue_size) == (0.2, 65536)
    assert v2.DATA.TRAIN.BATCHSIZE_PER_REPLICA * v2.DISTRIBUTED.NUM_PROC_PER_NODE == 256
    v1 = compose_config(["config=pretrain/moco/moco_v1_1node_resnet"])
    assert v1.LOSS.moco_loss.temperature == 0.07 and len(v1.MODEL.HEAD.PARAMS) == 1


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def _real_data(fmnist_small):
    return ["config.DATA.TRAIN.DATA_SOURCES=[disk_filelist]",
            f"config.DATA.TRAIN.DATA_PATHS=[{fmnist_small}/train_images.npy]",
            "config.DATA.TRAIN.DATA_LIMIT=128", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]


def test_quick_moco_learns_and_resumes_exactly(fmnist_small, tmp_path):
    """quick_moco on 128 real Fashion-MNIST images: 2 epochs, the loss falls once the queue holds
    real keys, and a run resumed mid-epoch ends with the same weights, queue and key encoder."""
    common = [f"config={QUICK}", *_real_data(fmnist_small), "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=5"]
    straight = tmp_path / "straight"
    final = run_engine(common + [f"config.CHECKPOINT.DIR={straight}"])
    losses = [r["loss"] for r in _records(straight)]
    assert len(losses) == 16 and all(map(lambda x: x == x and abs(x) < 1e3, losses))
    # step 1 compares against the random initial queue (an easy task); from step 2 on the queue
    # holds real keys
    assert sum(losses[-4:]) / 4 < sum(losses[1:5]) / 4 - 0.1, losses

    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed, symlinks=True)
    rewind(resumed, "model_iteration10.torch")  # phase 1, 2 of 8 steps
    logged = len(_records(resumed))
    again = run_engine(common + [f"config.CHECKPOINT.DIR={resumed}"])
    after = _records(resumed)[logged:]
    assert [r["iteration"] for r in after] == list(range(11, 17))
    assert [r["loss"] for r in after] == pytest.approx(losses[10:], rel=1e-5)
    a = torch.load(final, weights_only=True)["classy_state_dict"]
    b = torch.load(again, weights_only=True)["classy_state_dict"]
    torch.testing.assert_close(b["base_model"], a["base_model"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b["loss"], a["loss"], rtol=1e-5, atol=1e-6)
    assert set(a["loss"]) == {"loss", "key_encoder"} and int(a["loss"]["loss"]["queue_ptr"]) == 0


@pytest.mark.slow
def test_two_processes_match_one_process(tmp_path):
    """GroupNorm trunk, head without BatchNorm, shuffle_batch off: 2 x 8 images per step train
    exactly like 1 x 16 (same losses, weights, queue), through gathered keys and DDP."""
    common = [f"config={QUICK}", "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
              "config.LOSS.moco_loss.shuffle_batch=false", "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=64",
              "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]

    def run(nproc, ckpt_dir, per_replica):
        overrides = common + [f"config.CHECKPOINT.DIR={ckpt_dir}",
                              f"config.DATA.TRAIN.BATCHSIZE_PER_REPLICA={per_replica}"]
        launcher = ([] if nproc == 1 else
                    ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"])
        cmd = [sys.executable, *launcher, "-m", "sslcore.cli", "train", *overrides]
        done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return _records(ckpt_dir), torch.load(ckpt_dir / "checkpoint.torch", weights_only=True)

    one_log, one = run(1, tmp_path / "one", 16)
    two_log, two = run(2, tmp_path / "two", 8)
    assert [r["iteration"] for r in one_log] == [r["iteration"] for r in two_log] == list(range(1, 9))
    for a, b in zip(one_log, two_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
    s1, s2 = one["classy_state_dict"], two["classy_state_dict"]
    torch.testing.assert_close(s2["loss"]["loss"]["queue"], s1["loss"]["loss"]["queue"],
                               rtol=1e-3, atol=1e-4)
    for part in ("trunk", "heads"):
        w1, w2 = s1["base_model"]["model"][part], s2["base_model"]["model"][part]
        flat1 = torch.cat([w1[k].flatten().float() for k in w1])
        flat2 = torch.cat([w2[k].flatten().float() for k in w1])
        assert ((flat1 - flat2).norm() / flat1.norm()).item() < 1e-4
