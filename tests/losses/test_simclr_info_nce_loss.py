"""SimCLRInfoNCELoss against a plainly written NT-Xent, on one process and on two (gloo)."""

from __future__ import annotations

import math
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslcore.config import compose_config
from sslcore.losses import LOSSES, build_loss
from sslcore.losses.simclr_info_nce import SimCLRInfoNCELoss


def reference_nt_xent(embedding: torch.Tensor, num_views: int, temperature: float) -> torch.Tensor:
    """NT-Xent written out: loop over anchors, log-softmax over every other row.

    Rows are view-major (V*B, D); the positives of row i are the rows of the same sample in the
    other views, and their softmax probabilities are summed (multi-positive, as VISSL).
    """
    z = embedding / embedding.norm(dim=1, keepdim=True)
    n = z.shape[0]
    batch = n // num_views
    losses = []
    for i in range(n):
        others = [k for k in range(n) if k != i]
        logits = torch.stack([z[i] @ z[k] for k in others]) / temperature
        log_prob = torch.log_softmax(logits, dim=0)
        positives = [j for j, k in enumerate(others) if k % batch == i % batch]
        losses.append(-torch.logsumexp(log_prob[positives], dim=0))
    return torch.stack(losses).mean()


@pytest.mark.parametrize("num_views", [2, 3])
@pytest.mark.parametrize("batch", [1, 4, 9])
@pytest.mark.parametrize("temperature", [0.05, 0.2, 1.0])
def test_loss_and_gradient_match_reference(num_views, batch, temperature):
    torch.manual_seed(batch * 10 + num_views)
    data = torch.randn(num_views * batch, 16, dtype=torch.float64)
    mine_in = data.clone().requires_grad_(True)
    ref_in = data.clone().requires_grad_(True)

    mine = SimCLRInfoNCELoss(temperature=temperature)(mine_in, num_views=num_views)
    ref = reference_nt_xent(ref_in, num_views, temperature)
    mine.backward()
    ref.backward()

    assert mine.item() == pytest.approx(ref.item(), rel=1e-9, abs=1e-12)
    torch.testing.assert_close(mine_in.grad, ref_in.grad, rtol=1e-7, atol=1e-10)


def test_closed_form_two_orthogonal_samples():
    # two samples, two identical views each, samples orthogonal: every anchor sees its positive
    # at cosine 1 and two negatives at cosine 0 -> loss = log(1 + 2 exp(-1/T))
    t = 0.5
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    expected = math.log(1 + 2 * math.exp(-1 / t))
    assert SimCLRInfoNCELoss(temperature=t)(z).item() == pytest.approx(expected, rel=1e-6)


def test_view_order_matters():
    # the same rows read sample-major instead of view-major pair different rows: the loss changes
    torch.manual_seed(0)
    z = torch.randn(2, 5, 8)  # (V, B, D)
    loss = SimCLRInfoNCELoss()
    view_major = loss(z.reshape(10, 8))
    sample_major = loss(z.transpose(0, 1).reshape(10, 8))
    assert not torch.isclose(view_major, sample_major)


def test_scale_invariant_and_low_temperature_is_finite():
    torch.manual_seed(1)
    z = torch.randn(2 * 6, 32)
    loss = SimCLRInfoNCELoss(temperature=0.1)
    torch.testing.assert_close(loss(z), loss(7.5 * z))
    # exp(1 / 0.005) overflows float32; a log-sum-exp formulation stays finite and exact
    tiny = SimCLRInfoNCELoss(temperature=0.005)(z)
    assert torch.isfinite(tiny)
    ref = reference_nt_xent(z.double(), 2, 0.005)
    assert tiny.item() == pytest.approx(ref.item(), rel=1e-4)


def test_accepts_model_output_list_and_half_precision():
    torch.manual_seed(2)
    z = torch.randn(8, 16)
    loss = SimCLRInfoNCELoss()
    torch.testing.assert_close(loss([z]), loss(z))
    half = loss(z.bfloat16())
    assert half.dtype == torch.float32 and torch.isfinite(half)


@pytest.mark.parametrize("kwargs, call, match", [
    ({"temperature": 0.0}, None, "temperature"),
    ({"buffer_params": {"queue_size": 3}}, None, "queue_size"),
    ({"embedding_dim": 8, "buffer_params": {"embedding_dim": 8}}, None, "both"),
    ({}, {"shape": (7, 4), "num_views": 2}, "view blocks"),
    ({}, {"shape": (8, 4), "num_views": 1}, "num_views"),
    ({}, {"shape": (8,), "num_views": 2}, r"\(V\*B, D\)"),
    ({"buffer_params": {"embedding_dim": 128}}, {"shape": (8, 4), "num_views": 2}, "embedding_dim"),
    ({"buffer_params": {"effective_batch_size": 16}}, {"shape": (8, 4), "num_views": 2},
     "effective_batch_size"),
    ({"world_size": 2}, {"shape": (8, 4), "num_views": 2}, "world_size"),
])
def test_invalid_arguments_raise_value_error(kwargs, call, match):
    if call is None:
        with pytest.raises(ValueError, match=match):
            SimCLRInfoNCELoss(**kwargs)
        return
    loss = SimCLRInfoNCELoss(**kwargs)
    with pytest.raises(ValueError, match=match):
        loss(torch.randn(*call["shape"]), num_views=call["num_views"])


def test_matching_buffer_params_are_accepted():
    loss = SimCLRInfoNCELoss(buffer_params={"embedding_dim": 4, "effective_batch_size": 8,
                                            "world_size": 1})
    assert torch.isfinite(loss(torch.randn(8, 4)))


def test_build_loss_from_composed_config():
    cfg = compose_config(["config.LOSS.simclr_info_nce_loss.temperature=0.3",
                          "config.LOSS.simclr_info_nce_loss.buffer_params.embedding_dim=16"])
    loss = build_loss(cfg.LOSS)
    assert isinstance(loss, SimCLRInfoNCELoss)
    assert loss.temperature == 0.3 and loss.embedding_dim == 16
    assert "simclr_info_nce_loss" in LOSSES
    bad = compose_config(["config.LOSS.name=simclr_info_nce"])
    with pytest.raises(ValueError, match="simclr_info_nce_loss"):
        build_loss(bad.LOSS)


# ---- two processes -------------------------------------------------------------------------

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _make_inputs(num_views: int, batch: int):
    """The global batch: features (V, WORLD*B, 6) and a shared linear projector 6 -> 5."""
    gen = torch.Generator().manual_seed(100 + num_views)
    features = torch.randn(num_views, WORLD * batch, 6, generator=gen, dtype=torch.float64)
    weight = torch.randn(5, 6, generator=gen, dtype=torch.float64)
    return features, weight


def _rank_run(rank: int, num_views: int, batch: int, temperature: float):
    """This rank's share: half the samples of every view, laid out view-major."""
    features, weight = _make_inputs(num_views, batch)
    local = features[:, rank * batch:(rank + 1) * batch].reshape(num_views * batch, 6)
    local = local.clone().requires_grad_(True)
    weight = weight.clone().requires_grad_(True)
    loss = SimCLRInfoNCELoss(temperature=temperature)(local @ weight.t(), num_views=num_views)
    loss.backward()
    dist.all_reduce(weight.grad)
    weight.grad /= WORLD  # what DDP does to parameter gradients
    return loss.detach(), local.grad, weight.grad


def _worker(rank: int, port: int, out_dir: str, cases) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD)
    try:
        results = {case: _rank_run(rank, *case) for case in cases}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_one_process(tmp_path):
    cases = [(2, 3, 0.1), (3, 2, 0.5)]  # (V, B per rank, T)
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), cases), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    for num_views, batch, temperature in cases:
        features, weight = _make_inputs(num_views, batch)
        full = features.reshape(num_views * WORLD * batch, 6).clone().requires_grad_(True)
        weight = weight.clone().requires_grad_(True)
        loss = SimCLRInfoNCELoss(temperature=temperature)(full @ weight.t(), num_views=num_views)
        loss.backward()
        full_grad = full.grad.reshape(num_views, WORLD * batch, 6)

        case = (num_views, batch, temperature)
        mean_loss = sum(r[case][0] for r in ranks) / WORLD
        torch.testing.assert_close(mean_loss, loss.detach())
        for rank, result in enumerate(ranks):
            expected = full_grad[:, rank * batch:(rank + 1) * batch].reshape(num_views * batch, 6)
            # gather_with_grad sums every rank's loss gradient: WORLD x the mean loss's gradient
            torch.testing.assert_close(result[case][1], WORLD * expected)
            torch.testing.assert_close(result[case][2], weight.grad)
