"""DeepCluster-v2: spherical k-means against a plain loop and on a toy case, memory-bank updates,
cluster targets, 2 processes = 1, recipes, training with per-epoch clustering, exact resume."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sslcore.config import compose_config
from sslcore.engine.hooks import Hook
from sslcore.losses import build_loss
from sslcore.losses.deepclusterv2 import DeepClusterV2Loss, spherical_kmeans

QUICK = "pretrain/deepclusterv2/quick_deepclusterv2"


def reference_kmeans(x, init, num_iters):
    """Lloyd's algorithm on the sphere, one row at a time, from the given initial centroids."""
    centroids = [c.clone() for c in init]
    k = len(centroids)

    def assign():
        return [max(range(k), key=lambda j: float(row @ centroids[j])) for row in x]

    for _ in range(num_iters):
        ids = assign()
        for j in range(k):
            members = [x[i] for i in range(len(x)) if ids[i] == j]
            if members:
                mean = torch.stack(members).mean(dim=0)
                centroids[j] = mean / mean.norm()
    return torch.stack(centroids), torch.tensor(assign())


def _toy_clusters(seed=0, per_cluster=10):
    """Three tight groups of unit vectors around orthogonal directions."""
    gen = torch.Generator().manual_seed(seed)
    centers = torch.eye(3, 5, dtype=torch.float64)
    rows = [F.normalize(c + 0.05 * torch.randn(per_cluster, 5, generator=gen, dtype=torch.float64), dim=1)
            for c in centers]
    return torch.cat(rows), torch.arange(3).repeat_interleave(per_cluster)


# ---- k-means -------------------------------------------------------------------------------

def test_kmeans_matches_plain_loop_from_the_same_start():
    gen = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(40, 6, generator=gen, dtype=torch.float64), dim=1)
    centroids, ids = spherical_kmeans(x, 5, 4, seed=3)
    start = torch.randperm(40, generator=torch.Generator().manual_seed(3))[:5]
    ref_centroids, ref_ids = reference_kmeans(x, list(x[start]), 4)
    torch.testing.assert_close(centroids, ref_centroids)
    assert torch.equal(ids, ref_ids)


def test_kmeans_recovers_toy_clusters_deterministically():
    x, truth = _toy_clusters()
    centroids, ids = spherical_kmeans(x, 3, 10, seed=0)
    again, ids_again = spherical_kmeans(x, 3, 10, seed=0)
    assert torch.equal(ids, ids_again) and torch.equal(centroids, again)
    # the same partition as the truth, up to a relabelling
    mapping = {int(t): int(i) for t, i in zip(truth, ids)}
    assert len(set(mapping.values())) == 3
    assert all(mapping[int(t)] == int(i) for t, i in zip(truth, ids))
    torch.testing.assert_close(centroids.norm(dim=1), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="num_clusters"):
        spherical_kmeans(x, 31, 3, seed=0)


# ---- memory bank, clusters, loss -----------------------------------------------------------

def test_memory_update_writes_normalised_rows_of_the_memory_crops():
    loss = DeepClusterV2Loss(num_clusters=[2], crops_for_mb=[0, 2], embedding_dim=4, num_crops=3,
                             num_train_samples=10)
    emb = torch.randn(2 * 3, 4)  # crops 0 and 2 of 3 images, crop-major
    ids = torch.tensor([7, 1, 4])
    loss.update_memory(emb, ids)
    torch.testing.assert_close(loss.memory[0, ids], F.normalize(emb[:3], dim=1))
    torch.testing.assert_close(loss.memory[1, ids], F.normalize(emb[3:], dim=1))
    assert loss.memory_filled.nonzero().flatten().tolist() == [1, 4, 7]
    assert loss.memory[:, 0].abs().sum() == 0
    newer = torch.randn(2, 4)
    loss.update_memory(newer, torch.tensor([4]))  # the latest embedding replaces the row
    torch.testing.assert_close(loss.memory[0, 4], F.normalize(newer[0], dim=0))
    with pytest.raises(ValueError, match="sample ids"):
        loss.update_memory(torch.randn(2, 4), torch.tensor([10]))


def test_cluster_assignment_on_a_toy_bank_and_the_loss_against_cross_entropy():
    x, truth = _toy_clusters(per_cluster=4)
    loss = DeepClusterV2Loss(num_clusters=[3, 2], crops_for_mb=[0, 1], embedding_dim=5, num_crops=2,
                             num_train_samples=14, temperature=0.2, kmeans_iters=5)
    ids = torch.arange(12)
    loss.update_memory(torch.cat([x, x]).float(), ids)  # rows 12, 13 stay empty
    stats = loss.cluster(seed=0, phase=0)
    assert stats["rows"] == 12 and int(loss.clustered_phase) == 0
    assert loss.assignments[:, 12:].eq(-1).all()
    first = loss.assignments[0, :12]
    assert all(len(set(first[truth == c].tolist())) == 1 for c in range(3))
    assert len(set(first.tolist())) == 3
    torch.testing.assert_close(loss.centroids()[0].norm(dim=1), torch.ones(3))

    emb = torch.randn(2 * 3, 5, requires_grad=True)
    rows = torch.tensor([2, 9, 13, 2, 9, 13])  # sample 13 has no cluster: ignored
    value = loss(emb, rows)
    ref_in = emb.detach().clone().requires_grad_(True)
    z = F.normalize(ref_in, dim=1)
    valid = torch.tensor([0, 1, 3, 4])
    ref = sum(F.cross_entropy(z[valid] @ c.t() / 0.2, loss.assignments[h, rows[valid]])
              for h, c in enumerate(loss.centroids())) / 2
    value.backward()
    ref.backward()
    assert value.item() == pytest.approx(ref.item(), rel=1e-6)
    torch.testing.assert_close(emb.grad, ref_in.grad)


def test_loss_needs_clusters_and_the_state_resizes_on_load():
    loss = DeepClusterV2Loss(num_clusters=[2], crops_for_mb=[0], embedding_dim=3, num_crops=2)
    with pytest.raises(RuntimeError, match="k-means"):
        loss(torch.randn(4, 3), torch.arange(4))
    other = DeepClusterV2Loss(num_clusters=[2], crops_for_mb=[0], embedding_dim=3, num_crops=2,
                              num_train_samples=6)
    other.update_memory(torch.randn(6, 3), torch.arange(6))
    other.cluster(seed=1, phase=4)
    loss.load_state_dict(other.state_dict())
    assert loss.num_train_samples == 6 and int(loss.clustered_phase) == 4
    torch.testing.assert_close(loss.memory, other.memory)


@pytest.mark.parametrize("kwargs, match", [
    ({"crops_for_mb": [2], "num_crops": 2}, "crops_for_mb"),
    ({"num_clusters": []}, "num_clusters"),
    ({"temperature": 0.0}, "temperature"),
])
def test_invalid_settings_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DeepClusterV2Loss(**kwargs)


# ---- recipes -------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["pretrain/deepclusterv2/deepclusterv2_2crops_resnet",
                                    "pretrain/deepclusterv2/deepclusterv2_fashion_mnist", QUICK])
def test_recipes_compose_and_build(recipe):
    from sslcore.config.infer import infer_config

    cfg, _ = infer_config(compose_config([f"config={recipe}"]), world_size=2, local_world_size=2,
                          cuda_available=False)
    section = cfg.LOSS.deepclusterv2_loss
    assert section.num_crops >= 2 and section.BATCHSIZE_PER_REPLICA == cfg.DATA.TRAIN.BATCHSIZE_PER_REPLICA
    loss = build_loss(cfg.LOSS)
    assert loss.num_clusters == list(section.num_clusters)


def test_imagenet_recipe_keeps_vissl_hyperparameters():
    cfg = compose_config(["config=pretrain/deepclusterv2/deepclusterv2_2crops_resnet"])
    section = cfg.LOSS.deepclusterv2_loss
    assert section.num_clusters == [3000, 3000, 3000] and section.kmeans_iters == 10
    assert section.num_train_samples == 1281167 and section.memory_params.crops_for_mb == [0, 1]
    assert cfg.OPTIMIZER.use_larc and cfg.OPTIMIZER.num_epochs == 100


# ---- training ------------------------------------------------------------------------------

class _ClusterProbe(Hook):
    """Records the assignments seen at every phase start (after the method's k-means)."""

    def __init__(self):
        self.assignments = []

    def on_phase_start(self, task):
        self.assignments.append(task.method.loss.assignments.clone())


def _train(ckpt_dir, *overrides, hooks=()):
    from sslcore.engine.launcher import resolve
    from sslcore.engine.trainer import train

    cfg = resolve([f"config={QUICK}", f"config.CHECKPOINT.DIR={ckpt_dir}", *overrides])
    final = train(cfg, torch.device("cpu"), extra_hooks=list(hooks))
    return final, [json.loads(line) for line in (Path(ckpt_dir) / "stdout.json").read_text().splitlines()]


def test_the_network_learns_to_predict_its_clusters(tmp_path):
    """One fixed batch, two identical views (no augmentation), re-clustered every epoch: the loss
    must fall steadily. (On the quick recipe's augmented noise images there is no crop invariance
    to learn in 8 steps, so its loss stays near log K; see the next test.)"""
    _, records = _train(tmp_path, "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=16",
                        "config.OPTIMIZER.num_epochs=6",
                        "config.DATA.TRAIN.TRANSFORMS=[{name:ImgReplicatePil,num_times:2},{name:ToTensor}]",
                        "config.LOSS.deepclusterv2_loss.memory_params.crops_for_mb=[0]")
    losses = [r["loss"] for r in records]
    assert len(losses) == 6 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0] and sum(losses[-2:]) < sum(losses[:2])


def test_quick_recipe_clusters_every_epoch_trains_and_resumes_exactly(tmp_path):
    probe = _ClusterProbe()
    final, records = _train(tmp_path / "straight", hooks=[probe])
    losses = [r["loss"] for r in records]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert len(probe.assignments) == 2 and not torch.equal(*probe.assignments)
    assert all((a >= 0).all() for a in probe.assignments)  # the start pass filled every row
    state = torch.load(final, weights_only=True)["classy_state_dict"]["loss"]["loss"]
    assert state["memory"].shape == (2, 64, 32) and bool(state["memory_filled"].all())
    assert int(state["clustered_phase"]) == 1

    run = tmp_path / "interrupted"
    _train(run, "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3")
    mid = run / "model_iteration6.torch"
    for f in run.glob("model_final*"):
        f.unlink()
    (run / "checkpoint.torch").unlink()
    os.symlink(mid.name, run / "checkpoint.torch")
    resumed_probe = _ClusterProbe()
    resumed, _ = _train(run, "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3", hooks=[resumed_probe])
    # the resumed epoch keeps the clusters it had (no k-means on a half-updated bank)
    assert torch.equal(resumed_probe.assignments[0], probe.assignments[1])
    a = torch.load(final, weights_only=True)["classy_state_dict"]
    b = torch.load(resumed, weights_only=True)["classy_state_dict"]
    for key, value in a["base_model"]["model"]["trunk"].items():
        torch.testing.assert_close(b["base_model"]["model"]["trunk"][key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b["loss"]["loss"]["memory"], a["loss"]["loss"]["memory"], rtol=1e-5, atol=1e-6)


# ---- two processes -------------------------------------------------------------------------

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_run(rank, world):
    """Two steps of bank updates (each rank its share of the global batch), k-means, one loss."""
    gen = torch.Generator().manual_seed(11)
    loss = DeepClusterV2Loss(num_clusters=[4, 3], crops_for_mb=[0, 1], embedding_dim=5, num_crops=3,
                             num_train_samples=16, kmeans_iters=5)
    share = 8 // world
    for step in range(2):
        emb = torch.randn(3, 8, 5, generator=gen)  # (V, global B, D)
        ids = torch.randperm(16, generator=gen)[:8]
        mine = slice(rank * share, (rank + 1) * share)
        loss.update_memory(emb[:2, mine].reshape(-1, 5), ids[mine])
    loss.cluster(seed=5, phase=0)
    emb = torch.randn(3, 8, 5, generator=gen)
    ids = torch.arange(8)  # some of them were never written: ranks hold different valid counts
    local = emb[:, rank * share:(rank + 1) * share].reshape(-1, 5)
    value = loss(local, ids[rank * share:(rank + 1) * share].repeat(3))
    return value, loss.memory.clone(), loss.assignments.clone(), loss.centroids()[1].clone()


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.save(_rank_run(rank, WORLD), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_bank_and_clusters_match_one_process(tmp_path):
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    value, memory, assignments, centroids = _rank_run(0, 1)
    assert int((assignments[0] >= 0).sum()) == int((memory[0].abs().sum(dim=1) > 0).sum())
    valid = assignments[0, :8] >= 0
    assert int(valid[:4].sum()) != int(valid[4:].sum())  # the ranks' valid counts differ
    for result in ranks:  # every rank holds the whole bank and the same clusters
        torch.testing.assert_close(result[1], memory)
        assert torch.equal(result[2], assignments)
        torch.testing.assert_close(result[3], centroids)
    torch.testing.assert_close(sum(r[0] for r in ranks) / WORLD, value)
