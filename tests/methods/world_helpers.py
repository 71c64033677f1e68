"""Train a recipe on 1 and on 2 gloo processes (torchrun, env://) over the same global batch.

The method tests use this to check that a method's distributed parts (gathered embeddings, global
queues and memory banks, DDP's gradient averaging, momentum targets) train exactly like one
process. The caller makes the forward pass independent of the batch split (GroupNorm trunk, heads
without BatchNorm): torch's SyncBatchNorm does not run on CPU.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslcore.engine.launcher import run_engine


def train_processes(nproc: int, ckpt_dir: Path, overrides: list, batch_per_replica: int):
    """Run ``sslcore train`` on ``nproc`` processes; return (stdout.json records, final checkpoint).

    One process trains in this interpreter on one thread, like each torchrun worker (a fresh
    interpreter spends ~9 s importing torch; the suite runs a dozen of these comparisons).
    """
    args = list(overrides) + [f"config.CHECKPOINT.DIR={ckpt_dir}",
                              f"config.DATA.TRAIN.BATCHSIZE_PER_REPLICA={batch_per_replica}"]
    if nproc == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            run_engine(args)
        finally:
            torch.set_num_threads(threads)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", "-m", "sslcore.cli", "train", *args]
        done = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]
    return records, torch.load(ckpt_dir / "checkpoint.torch", weights_only=True)


def _tensors(state, prefix=""):
    if torch.is_tensor(state):
        return {prefix: state}
    if isinstance(state, dict):
        return {k: v for key, sub in state.items() for k, v in _tensors(sub, f"{prefix}/{key}").items()}
    return {}


def relative_distance(a: dict, b: dict) -> float:
    """||a - b|| / ||a|| over all floating tensors of two (nested) state dicts with the same keys."""
    ta, tb = _tensors(a), _tensors(b)
    assert ta.keys() == tb.keys()
    keys = [k for k in ta if ta[k].is_floating_point()]
    flat_a = torch.cat([ta[k].flatten().double() for k in keys])
    flat_b = torch.cat([tb[k].flatten().double() for k in keys])
    return ((flat_a - flat_b).norm() / flat_a.norm()).item()


def assert_same_training(one, two, iterations: int, *, weight_rel: float = 1e-4) -> None:
    """Same logged iterations and losses, and the trunk's and heads' weights within ``weight_rel``.

    Float summation order differs between the runs, so the weights agree to ~1e-6 relative after
    a few SGD steps; a real bug (no gather, a wrong shard, unaveraged gradients) moves them by
    percents.
    """
    (one_log, one_ckpt), (two_log, two_ckpt) = one, two
    assert [r["iteration"] for r in one_log] == [r["iteration"] for r in two_log] \
        == list(range(1, iterations + 1))
    for a, b in zip(one_log, two_log):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-6)
    assert two_ckpt["config"]["DISTRIBUTED"]["NUM_PROC_PER_NODE"] == 2
    w1 = one_ckpt["classy_state_dict"]["base_model"]["model"]
    w2 = two_ckpt["classy_state_dict"]["base_model"]["model"]
    for part in ("trunk", "heads"):
        assert relative_distance(w1[part], w2[part]) < weight_rel, part


def assert_two_processes_train_like_one(tmp_path: Path, overrides: list, global_batch: int, *,
                                        iterations: int = 4, method_state: bool = False):
    """Train on 1 process at ``global_batch`` and on 2 at half of it; assert the same training.

    ``method_state`` also compares the method's checkpointed state (momentum teacher, center,
    queue, memory bank) within 1e-4 relative. Returns both runs for further checks.
    """
    one = train_processes(1, tmp_path / "one", overrides, global_batch)
    two = train_processes(2, tmp_path / "two", overrides, global_batch // 2)
    assert_same_training(one, two, iterations=iterations)
    if method_state:
        state1, state2 = (run[1]["classy_state_dict"]["loss"] for run in (one, two))
        assert relative_distance(state1, state2) < 1e-4
    return one, two
