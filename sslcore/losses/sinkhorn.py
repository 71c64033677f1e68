"""Sinkhorn-Knopp over the global batch: equal-partition soft assignments of samples to prototypes.

SwAV computes its codes Q by solving an entropy-regularised optimal-transport problem between
the N samples of the global batch and the K prototypes, under the constraint that every
prototype receives the same share of the samples::

    max_Q  Tr(Q^T C^T Z) + eps * H(Q)   s.t.  Q 1_N = 1_K / K,  Q^T 1_K = 1_N / N

whose solution is ``diag(u) exp(scores^T / eps) diag(v)``, found by alternately rescaling the rows
(prototypes) and columns (samples) of ``exp(scores^T / eps)`` (Cuturi 2013). Each rank holds
its own columns; the row sums, the total and N are summed over ranks, so two processes compute
exactly the codes that one process computes on the concatenated batch (up to float summation
order).

Papers:
    - [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882 (Sec. 3.1, Alg. 1)
    - [1] Sinkhorn distances, Cuturi 2013, https://arxiv.org/abs/1306.0895
    - [2] SeLa, Asano et al. 2020, https://arxiv.org/abs/1911.05371 (notation r, c, Q)
"""

from __future__ import annotations

from typing import Optional

import torch

from sslcore.engine.distributed import all_reduce_sum, gather_no_grad

_TINY = 1e-30


@torch.no_grad()
def sinkhorn_plan(scores: torch.Tensor, *, epsilon: float, num_iters: int,
                  dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The transport plan between prototypes and this rank's samples, before rescaling.

    Starts from ``exp((scores - M) / eps)`` with M the global maximum score (a constant factor,
    which the first normalisation removes: the result equals the unshifted formula, without
    overflow), divides by its global total, then ``num_iters`` times rescales the rows to
    sum to 1/K (summed over ranks) and the columns to 1/N. The columns therefore sum exactly to
    1/N on return; the rows approach 1/K as ``num_iters`` grows.

    Args:
        scores: (B, K) this rank's prototype scores (any float dtype; not modified).
        epsilon: eps > 0, the entropy weight; smaller gives sharper codes (SwAV: 0.05).
        num_iters: Sinkhorn iterations >= 1 (SwAV: 3).
        dtype: computation dtype; default float32 (float64 input stays float64).

    Returns:
        (K, B) plan in ``dtype``; over all ranks its entries sum to 1.

    Raises:
        ValueError: if ``scores`` is not 2-D, ``epsilon`` <= 0 or ``num_iters`` < 1.
    """
    if scores.ndim != 2:
        raise ValueError(f"sinkhorn expects scores of shape (B, K), got {tuple(scores.shape)}")
    if not epsilon > 0 or num_iters < 1:
        raise ValueError(f"sinkhorn needs epsilon > 0 and num_iters >= 1, got epsilon={epsilon}, "
                         f"num_iters={num_iters}")
    if dtype is None:
        dtype = torch.float64 if scores.dtype == torch.float64 else torch.float32
    q = scores.detach().to(dtype).t()
    local_max = q.max() if q.numel() else q.new_tensor(float("-inf"))
    top = gather_no_grad(local_max.reshape(1)).max()
    q = torch.exp((q - top) / epsilon)
    q = q / all_reduce_sum(q.sum()).clamp_min(_TINY)
    num_prototypes = q.shape[0]
    num_samples = all_reduce_sum(q.new_tensor(float(q.shape[1])))
    for _ in range(num_iters):
        row_sums = all_reduce_sum(q.sum(dim=1))
        q = q * (1.0 / num_prototypes / row_sums.clamp_min(_TINY)).unsqueeze(1)
        q = q * (1.0 / num_samples / q.sum(dim=0).clamp_min(_TINY)).unsqueeze(0)
    return q


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, *, epsilon: float = 0.05, num_iters: int = 3,
                   hard: bool = False, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """SwAV's codes: each sample's share of every prototype under the equal-partition constraint.

    Paper: [0] SwAV, Caron et al. 2020, https://arxiv.org/abs/2006.09882 (Alg. 1). Collective:
    every rank must call it with the same K (the batch sizes may differ).

    Args:
        scores: (B, K) this rank's prototype scores, e.g. embeddings times prototypes.
        epsilon: entropy weight eps > 0 (``LOSS.swav_loss.epsilon``).
        num_iters: Sinkhorn iterations >= 1 (``LOSS.swav_loss.num_iters``).
        hard: replace each row by the one-hot of its largest entry
            (``temp_hard_assignment_iters``).
        dtype: computation dtype (float64 for ``use_double_precision``); default float32.

    Returns:
        (B, K) codes in ``dtype``, no gradient; every row sums to 1 (the plan's columns times N).

    Raises:
        ValueError: as :func:`sinkhorn_plan`.

    Example:
        >>> codes = sinkhorn_knopp(torch.randn(8, 3), epsilon=0.05, num_iters=3)
        >>> codes.sum(dim=1)  # all ones
    """
    plan = sinkhorn_plan(scores, epsilon=epsilon, num_iters=num_iters, dtype=dtype)
    codes = (plan / plan.sum(dim=0, keepdim=True).clamp_min(_TINY)).t()
    if hard:
        codes = torch.zeros_like(codes).scatter_(1, codes.argmax(dim=1, keepdim=True), 1.0)
    return codes
