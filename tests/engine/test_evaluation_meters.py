"""The accuracy_list_meter against plain per-sample computations, its errors, the test loader's
sharding, and 2 gloo processes summing to the 1-process counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from sslcore.benchmarks.metrics import topk_accuracy
from sslcore.config import compose_config
from sslcore.engine import evaluation
from sslcore.engine.evaluation import build_test_loader, evaluation_hooks
from sslcore.engine.meters import AccuracyListMeter


def plain_topk_correct(scores: torch.Tensor, target: torch.Tensor, k: int) -> int:
    """Per sample: classes ranked by (score descending, class index ascending); target in the
    first min(k, C)? Rows with a negative target are skipped."""
    correct = 0
    for row, label in zip(scores.tolist(), target.tolist()):
        if label < 0:
            continue
        ranked = sorted(range(len(row)), key=lambda c: (-row[c], c))
        correct += int(label in ranked[:min(k, len(row))])
    return correct


def plain_rank_correct(scores: torch.Tensor, target: torch.Tensor, k: int) -> int:
    """Tie-free definition: fewer than k classes score strictly higher than the target."""
    return sum(int((row > row[label]).sum()) < k for row, label in zip(scores, target.tolist()))


@pytest.mark.parametrize("classes", [3, 10])
def test_counts_match_plain_computation_for_several_outputs_with_ties(classes):
    gen = torch.Generator().manual_seed(classes)
    target = torch.randint(0, classes, (40,), generator=gen)
    target[:3] = -1  # ignore_index rows are not counted
    # integer scores in a small range: many ties inside a row
    outputs = [torch.randint(0, 4, (40, classes), generator=gen).float() for _ in range(3)]
    meter = AccuracyListMeter(3, [1, 2, 5], ["a", "b", "c"])
    meter.update([o[:25] for o in outputs], target[:25])
    meter.update([o[25:] for o in outputs], target[25:])
    value = meter.value()
    assert meter.num_samples == 37
    for name, out in zip("abc", outputs):
        for k in (1, 2, 5):
            expected = 100.0 * plain_topk_correct(out, target, k) / 37
            assert value[name][f"top{k}"] == pytest.approx(expected)
    assert value["a"]["top5"] >= value["a"]["top2"] >= value["a"]["top1"]
    # the project's numpy top-k (stable argsort) agrees on the kept rows
    kept = target >= 0
    assert value["b"]["top2"] == pytest.approx(
        topk_accuracy(outputs[1][kept].numpy(), target[kept].numpy(), ks=(2,))["top2"])


def test_tie_free_scores_agree_with_rank_definition():
    gen = torch.Generator().manual_seed(1)
    scores = torch.randn(64, 10, generator=gen)
    target = torch.randint(0, 10, (64,), generator=gen)
    meter = AccuracyListMeter(1, [1, 5])
    meter.update([scores], target)
    assert meter.names == ["output0"]
    for k in (1, 5):
        assert meter.value()["output0"][f"top{k}"] == pytest.approx(
            100.0 * plain_rank_correct(scores, target, k) / 64)


def test_errors_name_the_config_key():
    with pytest.raises(ValueError, match="num_meters"):
        AccuracyListMeter(0, [1])
    with pytest.raises(ValueError, match="meter_names"):
        AccuracyListMeter(2, [1], ["only_one"])
    with pytest.raises(ValueError, match="topk_values"):
        AccuracyListMeter(1, [0])
    meter = AccuracyListMeter(2, [1])
    with pytest.raises(ValueError, match="num_meters=2"):
        meter.update([torch.randn(4, 3)], torch.zeros(4, dtype=torch.long))
    cfg = compose_config(["config.TEST_MODEL=true"])
    with pytest.raises(ValueError, match="METERS.name=accuracy_list_meter"):
        evaluation_hooks(cfg)
    with pytest.raises(ValueError, match="DATA.TEST.DATA_SOURCES"):
        build_test_loader(cfg)
    with pytest.raises(ValueError, match="METERS.accuracy_list_meter"):
        compose_config(["config.METERS.accuracy_list_meter.num_meter=2"])


def test_test_loader_shards_every_sample_exactly_once(monkeypatch):
    cfg = compose_config(["config.DATA.TEST.DATA_SOURCES=[synthetic]",
                          "config.DATA.TEST.SYNTHETIC.NUM_SAMPLES=11",
                          "config.DATA.TEST.BATCHSIZE_PER_REPLICA=4",
                          "config.DATA.NUM_DATALOADER_WORKERS=0",
                          "config.DATA.TEST.TRANSFORMS=[{name: ToTensor}]"])
    seen = []
    for rank in range(3):
        monkeypatch.setattr(evaluation, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(evaluation, "get_world_size", lambda: 3)
        seen += [int(i) for batch in build_test_loader(cfg) for i in batch["data_idx"]]
    assert sorted(seen) == list(range(11))


_WORKER = textwrap.dedent("""
    import json, os, sys
    import torch, torch.distributed as dist
    from sslcore.engine.meters import AccuracyListMeter
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(7)
    target = torch.randint(0, 6, (50,), generator=gen)
    outputs = [torch.randint(0, 3, (50, 6), generator=gen).float() for _ in range(2)]
    meter = AccuracyListMeter(2, [1, 5], ["x", "y"])
    rows = list(range(rank, 50, world))  # uneven shares: 25/25 or 50
    meter.update([o[rows] for o in outputs], target[rows])
    meter.sync()
    if rank == 0:
        json.dump({"counts": meter.counts.tolist(), "value": meter.value()}, open(sys.argv[1], "w"))
    dist.destroy_process_group()
""")


def _run_worker(tmp_path, nproc):
    script = tmp_path / "meter_worker.py"
    script.write_text(_WORKER)
    out = tmp_path / f"meter_{nproc}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", str(script), str(out)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow  # torchrun starts two interpreters that import torch: ~1 min on 2 busy cores
def test_two_gloo_processes_sum_to_one_process(tmp_path):
    two = _run_worker(tmp_path, 2)
    gen = torch.Generator().manual_seed(7)  # the worker's data, measured by this one process
    target = torch.randint(0, 6, (50,), generator=gen)
    outputs = [torch.randint(0, 3, (50, 6), generator=gen).float() for _ in range(2)]
    one = AccuracyListMeter(2, [1, 5], ["x", "y"])
    one.update(outputs, target)
    one.sync()
    assert two["counts"] == one.counts.tolist()
    assert two["counts"][0][-1] == 50  # every sample counted once over both ranks
    assert two["value"] == one.value()


def test_resumed_run_keeps_only_the_finished_epochs_records(tmp_path):
    from types import SimpleNamespace

    from sslcore.engine.evaluation import METERS_LOG, AccuracyTestHook

    cfg = compose_config(["config.METERS.name=accuracy_list_meter"])
    log_file = tmp_path / METERS_LOG
    log_file.write_text("".join(json.dumps({"phase_idx": p, "epoch": p + 1}) + "\n" for p in range(3)))
    hook = AccuracyTestHook(cfg)
    hook.on_start(SimpleNamespace(ckpt_dir=tmp_path, start_phase=2))  # epoch 3 is redone
    assert [r["epoch"] for r in hook.history] == [1, 2]
    assert [json.loads(line)["epoch"] for line in log_file.read_text().splitlines()] == [1, 2]
    fresh = AccuracyTestHook(cfg)
    fresh.on_start(SimpleNamespace(ckpt_dir=tmp_path, start_phase=0))
    assert fresh.history == [] and log_file.read_text() == ""
