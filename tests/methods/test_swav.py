"""SwAV: Sinkhorn-Knopp and the swapped-prediction loss against plain loops, the queue, the head,
prototype freezing and normalisation, recipes, training, exact resume, 2 processes = 1 process."""

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

from world_helpers import assert_two_processes_train_like_one
from sslcore.config import compose_config
from sslcore.engine.hooks import Hook
from sslcore.engine.temp_frozen_params import TempFrozenParams
from sslcore.losses import build_loss
from sslcore.losses.sinkhorn import sinkhorn_knopp, sinkhorn_plan
from sslcore.losses.swav import SwAVLoss, SwAVMomentumLoss
from sslcore.models import build_model
from sslcore.models.heads.swav_head import SwAVPrototypesHead

QUICK = "pretrain/swav/quick_swav"


# ---- plain references ----------------------------------------------------------------------

def reference_sinkhorn(scores: torch.Tensor, epsilon: float, num_iters: int) -> torch.Tensor:
    """Sinkhorn-Knopp written entry by entry (SwAV Alg. 1): returns (B, K) codes, rows sum to 1."""
    batch, k = scores.shape
    q = [[math.exp(float(scores[b, j]) / epsilon) for b in range(batch)] for j in range(k)]
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(num_iters):
        for j in range(k):
            row_sum = sum(q[j])
            q[j] = [v / row_sum / k for v in q[j]]
        for b in range(batch):
            col_sum = sum(q[j][b] for j in range(k))
            for j in range(k):
                q[j][b] = q[j][b] / col_sum / batch
    codes = [[q[j][b] / sum(q[i][b] for i in range(k)) for j in range(k)] for b in range(batch)]
    return torch.tensor(codes, dtype=torch.float64)


def reference_swav_loss(scores, num_crops, crops_for_assign, temperature, epsilon, num_iters,
                        queue_scores=None):
    """The SwAV loss from the paper's formula, one crop pair at a time."""
    batch = scores[0].shape[0] // num_crops
    total = 0.0
    for h, s in enumerate(scores):
        head = 0.0
        for i, c in enumerate(crops_for_assign):
            block = s[c * batch:(c + 1) * batch].detach()
            if queue_scores is not None:
                block = torch.cat([block, queue_scores[h][i]])
            q = reference_sinkhorn(block, epsilon, num_iters)[:batch]
            terms = [-(q * torch.log_softmax(s[p * batch:(p + 1) * batch] / temperature, dim=1))
                     .sum(dim=1).mean() for p in range(num_crops) if p != c]
            head = head + sum(terms) / len(terms)
        total = total + head / len(crops_for_assign)
    return total / len(scores)


def _inputs(num_crops, batch, dim, clusters, seed=0):
    gen = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(num_crops * batch, dim, generator=gen, dtype=torch.float64), dim=1)
    protos = [F.normalize(torch.randn(k, dim, generator=gen, dtype=torch.float64), dim=1) for k in clusters]
    return z, protos


# ---- Sinkhorn ------------------------------------------------------------------------------

@pytest.mark.parametrize("epsilon, num_iters", [(0.05, 3), (0.5, 1), (0.1, 7)])
def test_sinkhorn_matches_plain_loop(epsilon, num_iters):
    torch.manual_seed(0)
    scores = F.normalize(torch.randn(6, 4, dtype=torch.float64), dim=1)
    mine = sinkhorn_knopp(scores, epsilon=epsilon, num_iters=num_iters, dtype=torch.float64)
    torch.testing.assert_close(mine, reference_sinkhorn(scores, epsilon, num_iters), rtol=1e-10, atol=1e-12)


def test_sinkhorn_marginals_rows_one_over_k_cols_one_over_b():
    torch.manual_seed(1)
    batch, k = 12, 5
    scores = torch.randn(batch, k, dtype=torch.float64)
    plan = sinkhorn_plan(scores, epsilon=0.5, num_iters=300, dtype=torch.float64)  # (K, B)
    torch.testing.assert_close(plan.sum(dim=0), torch.full((batch,), 1 / batch, dtype=torch.float64))
    torch.testing.assert_close(plan.sum(dim=1), torch.full((k,), 1 / k, dtype=torch.float64))
    few = sinkhorn_plan(scores, epsilon=0.5, num_iters=3, dtype=torch.float64)
    torch.testing.assert_close(few.sum(dim=0), torch.full((batch,), 1 / batch, dtype=torch.float64))
    codes = sinkhorn_knopp(scores, epsilon=0.5, num_iters=3, dtype=torch.float64)
    torch.testing.assert_close(codes, (few * batch).t())
    torch.testing.assert_close(codes.sum(dim=1), torch.ones(batch, dtype=torch.float64))


def test_sinkhorn_large_scores_stay_finite_and_hard_codes_are_one_hot():
    scores = torch.tensor([[40.0, -40.0, 0.0], [0.0, 40.0, 1.0]])  # exp(40 / 0.05) overflows
    codes = sinkhorn_knopp(scores, epsilon=0.05, num_iters=3)
    assert torch.isfinite(codes).all()
    hard = sinkhorn_knopp(torch.randn(7, 4), num_iters=3, hard=True)
    assert ((hard == 0) | (hard == 1)).all() and (hard.sum(dim=1) == 1).all()
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn_knopp(torch.randn(3, 2), epsilon=0.0)


# ---- loss ----------------------------------------------------------------------------------

@pytest.mark.parametrize("num_crops, crops_for_assign, clusters", [
    (2, [0, 1], [7]), (4, [0, 1], [5, 9]), (3, [1], [6])])
def test_swav_loss_and_gradient_match_reference(num_crops, crops_for_assign, clusters):
    batch, dim, temperature = 5, 8, 0.1
    z, protos = _inputs(num_crops, batch, dim, clusters)
    mine_scores = [(z @ p.t()).requires_grad_(True) for p in protos]
    ref_scores = [s.detach().clone().requires_grad_(True) for s in mine_scores]
    loss_fn = SwAVLoss(temperature=temperature, crops_for_assign=crops_for_assign, num_crops=num_crops,
                       num_iters=3, epsilon=0.05, use_double_precision=True, num_prototypes=clusters,
                       embedding_dim=dim)
    mine = loss_fn([z, *mine_scores], iteration=0, prototypes=protos)
    ref = reference_swav_loss(ref_scores, num_crops, crops_for_assign, temperature, 0.05, 3)
    mine.backward()
    ref.backward()
    assert mine.dtype == torch.float64
    assert mine.item() == pytest.approx(ref.item(), rel=1e-9)
    for a, b in zip(mine_scores, ref_scores):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-8, atol=1e-12)


def test_queue_fills_newest_first_and_joins_the_codes_from_start_iter():
    batch, dim, clusters = 4, 6, [5]
    loss_fn = SwAVLoss(crops_for_assign=[0, 1], num_crops=2, num_prototypes=clusters, embedding_dim=dim,
                       use_double_precision=True, queue_length=2 * batch, queue_start_iter=2)
    seen = []
    for step in range(3):
        z, protos = _inputs(2, batch, dim, clusters, seed=10 + step)
        z = z.float()
        if step == 2:  # the queue holds steps 1 (front) and 0: its scores join Sinkhorn
            queued = loss_fn.queue.double()
            queue_scores = [[queued[i] @ protos[0].t() for i in range(2)]]
            ref = reference_swav_loss([z.double() @ protos[0].t()], 2, [0, 1], 0.1, 0.05, 3, queue_scores)
            no_queue = reference_swav_loss([z.double() @ protos[0].t()], 2, [0, 1], 0.1, 0.05, 3)
        loss = loss_fn([z, z @ protos[0].float().t()], iteration=step, prototypes=[p.float() for p in protos])
        seen.append(z)
        if step < 2:
            assert int(loss_fn.queue_fill) == min((step + 1) * batch, 2 * batch)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-5)
    assert abs(ref.item() - no_queue.item()) > 1e-3  # the queue really changes the codes
    # newest first: crop c of step 2, then step 1
    for crop in range(2):
        torch.testing.assert_close(loss_fn.queue[crop, :batch], seen[2][crop * batch:(crop + 1) * batch])
        torch.testing.assert_close(loss_fn.queue[crop, batch:], seen[1][crop * batch:(crop + 1) * batch])
    state = loss_fn.state_dict()
    assert set(state) == {"queue", "queue_fill"} and int(state["queue_fill"]) == 2 * batch


def test_nan_dumps_the_tensors_and_raises(tmp_path):
    loss_fn = SwAVLoss(num_crops=2, num_prototypes=[3], embedding_dim=4, output_dir=str(tmp_path))
    z = torch.randn(4, 4)
    scores = torch.randn(4, 3)
    scores[1, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="use_double_precision") as err:
        loss_fn([z, scores], iteration=7, prototypes=[torch.randn(3, 4)])
    dump = tmp_path / "swav_loss_nan_rank0_iter7.pt"
    assert dump.exists() and str(dump) in str(err.value)
    saved = torch.load(dump, weights_only=True)
    assert saved["iteration"] == 7 and torch.isnan(saved["outputs"][1]).any()


@pytest.mark.parametrize("kwargs, match", [
    ({"crops_for_assign": [0, 2], "num_crops": 2}, "crops_for_assign"),
    ({"temperature": 0.0}, "temperature"),
    ({"momentum": 1.5}, "momentum"),
])
def test_invalid_settings_name_the_key(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SwAVMomentumLoss(**kwargs)


def test_wrong_output_shapes_raise():
    loss_fn = SwAVLoss(num_crops=2, num_prototypes=[3, 5], embedding_dim=4)
    with pytest.raises(ValueError, match="swav_head"):
        loss_fn([torch.randn(4, 4), torch.randn(4, 3)], iteration=0, prototypes=[])
    with pytest.raises(ValueError, match="num_prototypes"):
        loss_fn([torch.randn(4, 4), torch.randn(4, 3), torch.randn(4, 4)], iteration=0, prototypes=[])


# ---- head, freezing ------------------------------------------------------------------------

def test_swav_head_layout_normalisation_and_vissl_names():
    torch.manual_seed(0)
    head = SwAVPrototypesHead([16, 12, 8], num_clusters=[5, 7], use_bn=True)
    embedding, s0, s1 = head(torch.randn(6, 16, 1, 1))
    assert embedding.shape == (6, 8) and s0.shape == (6, 5) and s1.shape == (6, 7)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(6))
    torch.testing.assert_close(s0, embedding @ head.prototypes0.weight.t())
    keys = set(head.state_dict())
    assert {"projection_head.0.weight", "projection_head.1.running_mean", "projection_head.3.weight",
            "prototypes0.weight", "prototypes1.weight"} <= keys
    assert "prototypes0.bias" not in keys
    head.normalize_prototypes()
    torch.testing.assert_close(head.prototypes1.weight.norm(dim=1), torch.ones(7))
    assert len(SwAVPrototypesHead([16], num_clusters=[])(torch.randn(2, 16))) == 1


def test_temp_frozen_params_drop_gradients_until_their_iteration():
    model = build_model(compose_config([f"config={QUICK}"]).MODEL)
    frozen = TempFrozenParams([("module.heads.0.prototypes0.weight", 2)], model)
    model(torch.randn(2, 3, 32, 32))[0][1].sum().backward()
    frozen.apply(model, iteration=1)
    assert model.heads[0].prototypes0.weight.grad is None
    assert model.heads[0].projection_head[0].weight.grad is not None
    model(torch.randn(2, 3, 32, 32))[0][1].sum().backward()
    frozen.apply(model, iteration=2)
    assert model.heads[0].prototypes0.weight.grad is not None
    with pytest.raises(ValueError, match="prototypes0.weight"):
        TempFrozenParams([("heads.0.prototype0.weight", 3)], model)


# ---- recipes -------------------------------------------------------------------------------

@pytest.mark.parametrize("recipe", ["pretrain/swav/swav_8node_resnet", "pretrain/swav/swav_fashion_mnist",
                                    QUICK, "pretrain/swav_momentum/swav_momentum_8node_resnet",
                                    "pretrain/swav_momentum/swav_momentum_fashion_mnist",
                                    "pretrain/swav_momentum/quick_swav_momentum"])
def test_recipes_compose_and_build(recipe):
    from sslcore.config.infer import infer_config

    cfg = compose_config([f"config={recipe}"])
    resolved, _ = infer_config(cfg, world_size=2, local_world_size=2, cuda_available=False)
    section = resolved.LOSS[resolved.LOSS.name]
    assert section.num_crops >= 4 and section.output_dir == resolved.CHECKPOINT.DIR
    global_batch = 2 * resolved.DATA.TRAIN.BATCHSIZE_PER_REPLICA
    assert section.queue.queue_length % global_batch == 0
    assert section.queue.local_queue_length == section.queue.queue_length // 2
    loss = build_loss(resolved.LOSS)
    assert loss.num_prototypes == list(section.num_prototypes)


def test_imagenet_recipe_keeps_vissl_hyperparameters():
    cfg = compose_config(["config=pretrain/swav/swav_8node_resnet"])
    assert cfg.LOSS.swav_loss.epsilon == 0.05 and cfg.LOSS.swav_loss.temperature == 0.1
    assert cfg.MODEL.TEMP_FROZEN_PARAMS_ITER_MAP == [["module.heads.0.prototypes0.weight", 313]]
    assert cfg.DISTRIBUTED.NUM_NODES == 8 and cfg.DISTRIBUTED.NUM_PROC_PER_NODE == 8
    assert cfg.OPTIMIZER.use_larc and cfg.DATA.TRAIN.TRANSFORMS[0].num_crops == [2, 6]


def test_queue_length_rounds_down_to_the_global_batch():
    from sslcore.methods.swav import SwAV

    cfg = compose_config([f"config={QUICK}", "config.LOSS.swav_loss.queue.queue_length=100"])
    rules = SwAV.infer_config(cfg, world_size=3)
    assert rules["LOSS.swav_loss.queue.queue_length"] == 96  # 2 x 48
    assert rules["LOSS.swav_loss.queue.local_queue_length"] == 32


# ---- training ------------------------------------------------------------------------------

class _PrototypeProbe(Hook):
    """Records the prototypes after every update."""

    def __init__(self):
        self.weights = []

    def on_start(self, task):
        self.weights.append(task.model.heads[0].prototypes0.weight.detach().clone())

    def on_update(self, task):
        self.weights.append(task.model.heads[0].prototypes0.weight.detach().clone())


def _train(recipe, ckpt_dir, *overrides, hooks=()):
    from sslcore.engine.launcher import resolve
    from sslcore.engine.trainer import train

    cfg = resolve([f"config={recipe}", f"config.CHECKPOINT.DIR={ckpt_dir}", *overrides])
    final = train(cfg, torch.device("cpu"), extra_hooks=list(hooks))
    records = [json.loads(line) for line in (Path(ckpt_dir) / "stdout.json").read_text().splitlines()]
    return final, records


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """quick_swav, 2 epochs, with the prototypes recorded after every update."""
    probe = _PrototypeProbe()
    ckpt_dir = tmp_path_factory.mktemp("swav_straight")
    final, records = _train(QUICK, ckpt_dir, hooks=[probe])
    return final, records, probe.weights


def test_quick_swav_trains_with_frozen_then_normalised_prototypes(straight_run):
    final, records, weights = straight_run
    losses = [r["loss"] for r in records]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    # frozen for iterations 0 and 1 (TEMP_FROZEN_PARAMS_ITER_MAP), then trained
    torch.testing.assert_close(weights[2], weights[0], rtol=0, atol=1e-6)
    assert (weights[3] - weights[2]).abs().max() > 1e-4
    for w in weights:
        torch.testing.assert_close(w.norm(dim=1), torch.ones(w.shape[0]))
    state = torch.load(final, weights_only=True)["classy_state_dict"]["loss"]["loss"]
    assert int(state["queue_fill"]) == 32 and state["queue"].shape == (2, 32, 32)


def test_mid_epoch_resume_restores_the_queue_exactly(straight_run, tmp_path):
    final, _, _ = straight_run
    run = tmp_path / "interrupted"
    _train(QUICK, run, "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3")
    mid = run / "model_iteration6.torch"
    assert not torch.load(mid, weights_only=True)["phase_complete"]
    for f in run.glob("model_final*"):
        f.unlink()
    (run / "checkpoint.torch").unlink()
    os.symlink(mid.name, run / "checkpoint.torch")
    resumed, _ = _train(QUICK, run, "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3")
    a = torch.load(final, weights_only=True)["classy_state_dict"]
    b = torch.load(resumed, weights_only=True)["classy_state_dict"]
    for key, value in a["base_model"]["model"]["heads"].items():
        torch.testing.assert_close(b["base_model"]["model"]["heads"][key], value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b["loss"]["loss"]["queue"], a["loss"]["loss"]["queue"], rtol=1e-5, atol=1e-6)


def test_quick_swav_momentum_trains_and_checkpoints_the_teacher(tmp_path):
    final, records = _train("pretrain/swav_momentum/quick_swav_momentum", tmp_path)
    losses = [r["loss"] for r in records]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1
    state = torch.load(final, weights_only=True)["classy_state_dict"]
    teacher = state["loss"]["momentum_encoder"]
    student = state["base_model"]["model"]["heads"]
    w_t, w_s = teacher["heads.0.prototypes0.weight"], student["0.prototypes0.weight"]
    assert (w_t - w_s).abs().max() > 1e-6  # an EMA, not a copy
    torch.testing.assert_close(w_t.norm(dim=1), torch.ones(w_t.shape[0]))


# ---- two processes -------------------------------------------------------------------------

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _global_inputs(step):
    gen = torch.Generator().manual_seed(50 + step)
    z = F.normalize(torch.randn(3, WORLD * 4, 6, generator=gen, dtype=torch.float64), dim=2)  # (V, W*B, D)
    protos = [F.normalize(torch.randn(k, 6, generator=gen, dtype=torch.float64), dim=1) for k in (5, 3)]
    return z, protos


def _swav_steps(rank, world):
    """Three steps with a queue (used from step 1) on this rank's share of each global batch."""
    loss_fn = SwAVLoss(crops_for_assign=[0, 2], num_crops=3, num_prototypes=[5, 3], embedding_dim=6,
                       use_double_precision=True, queue_length=2 * WORLD * 4, queue_start_iter=1)
    loss_fn.queue = loss_fn.queue.double()
    share = WORLD * 4 // world
    out = []
    for step in range(3):
        z, protos = _global_inputs(step)
        local = z[:, rank * share:(rank + 1) * share].reshape(-1, 6)
        scores = [(local @ p.t()).requires_grad_(True) for p in protos]
        loss = loss_fn([local, *scores], iteration=step, prototypes=protos)
        loss.backward()
        codes = sinkhorn_knopp(local[:share] @ protos[0].t(), epsilon=0.05, num_iters=3,
                               dtype=torch.float64)
        out.append((loss.detach(), [s.grad for s in scores], codes))
    return out, loss_fn.queue.clone()


def _worker(rank, port, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        torch.save(_swav_steps(rank, WORLD), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_sinkhorn_and_loss_match_one_process(tmp_path):
    # fork: the workers inherit the imported modules (a spawn re-imports torch and sslcore)
    mp.start_processes(_worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single, single_queue = _swav_steps(0, 1)
    for step, (loss, grads, codes) in enumerate(single):
        torch.testing.assert_close(sum(r[0][step][0] for r in ranks) / WORLD, loss)
        # rank r's codes are rows [r*B, (r+1)*B) of the one-process codes
        torch.testing.assert_close(torch.cat([r[0][step][2] for r in ranks]), codes)
        for h, grad in enumerate(grads):
            v_major = grad.reshape(3, WORLD * 4, -1)
            for r, result in enumerate(ranks):
                local = v_major[:, r * 4:(r + 1) * 4].reshape(12, -1)
                torch.testing.assert_close(result[0][step][1][h] / WORLD, local)
    for result in ranks:  # the queue is global: identical on every rank and to one process
        torch.testing.assert_close(result[1], single_queue)


DISTRIBUTED_OVERRIDES = [
    "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
    "config.MODEL.HEAD.PARAMS=[[swav_head,{dims:[64,64,32],use_bn:false,num_clusters:[20,10]}]]",
    "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=32", "config.LOSS.swav_loss.use_double_precision=true"]


@pytest.mark.slow
def test_two_process_training_matches_one_process(tmp_path):
    """GroupNorm and a BatchNorm-free head make the forward independent of the batch split; the
    queue (used from iteration 2), Sinkhorn, frozen prototypes and DDP are what is under test."""
    overrides = [f"config={QUICK}", *DISTRIBUTED_OVERRIDES,
                 "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]
    one, two = assert_two_processes_train_like_one(tmp_path, overrides, 16)
    assert two[1]["config"]["LOSS"]["swav_loss"]["queue"]["local_queue_length"] == 16
    q1, q2 = one[1]["classy_state_dict"]["loss"]["loss"], two[1]["classy_state_dict"]["loss"]["loss"]
    assert int(q1["queue_fill"]) == int(q2["queue_fill"]) == 32
    torch.testing.assert_close(q2["queue"], q1["queue"], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_swav_momentum_two_process_training_matches_one_process(tmp_path):
    """SwAV momentum: the same, plus the teacher that scores the codes after 4 steps."""
    overrides = ["config=pretrain/swav_momentum/quick_swav_momentum",
                 "config.MODEL.TRUNK.RESNETS.NORM=GroupNorm",
                 "config.MODEL.HEAD.PARAMS=[[swav_head,{dims:[64,64,32],use_bn:false,num_clusters:[20]}]]",
                 "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=32",
                 "config.LOSS.swav_momentum_loss.use_double_precision=true",
                 "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]
    assert_two_processes_train_like_one(tmp_path, overrides, 16, method_state=True)
