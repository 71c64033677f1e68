"""Checkpoints and AUTO_RESUME: a killed run resumes from its last checkpoint without repeating work."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sslcore.engine.launcher import run_engine

QUICK = ["config=pretrain/simclr/quick_simclr", "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false"]


def _records(ckpt_dir):
    return [json.loads(line) for line in (ckpt_dir / "stdout.json").read_text().splitlines()]


def _weights(path):
    return torch.load(path, weights_only=True)["classy_state_dict"]["base_model"]["model"]["trunk"]


@pytest.mark.slow
def test_killed_run_resumes_without_repeating_an_epoch(tmp_path):
    ckpt_dir = tmp_path / "run"
    overrides = QUICK + [f"config.CHECKPOINT.DIR={ckpt_dir}", "config.OPTIMIZER.num_epochs=3",
                         "config.DATA.TRAIN.SYNTHETIC.NUM_SAMPLES=128"]
    cmd = [sys.executable, "-m", "sslcore.cli", "train", *overrides]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    deadline = time.time() + 300
    while not (ckpt_dir / "model_phase0.torch").exists():
        assert proc.poll() is None, "training ended before its first checkpoint"
        assert time.time() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _records(ckpt_dir)
    latest = torch.load(ckpt_dir / "checkpoint.torch", weights_only=True)
    assert latest["phase_complete"] and latest["phase_idx"] < 2
    done_phases = latest["phase_idx"] + 1

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from" in resumed.stderr
    after = _records(ckpt_dir)[len(first):]
    iters_per_phase = 8
    assert [r["iteration"] for r in after] == list(range(done_phases * iters_per_phase + 1, 25))
    assert min(r["phase_idx"] for r in after) == done_phases  # no finished epoch runs again
    final = torch.load(ckpt_dir / "checkpoint.torch", weights_only=True)
    assert final["iteration"] == 24 and final["phase_idx"] == 2
    assert (ckpt_dir / "model_final_checkpoint_phase2.torch").exists()


def test_mid_epoch_resume_is_exact(tmp_path):
    """Resuming from an iteration checkpoint inside an epoch reproduces the uninterrupted run."""
    straight = tmp_path / "straight"
    run_engine(QUICK + [f"config.CHECKPOINT.DIR={straight}"])
    interrupted = tmp_path / "interrupted"
    run_engine(QUICK + [f"config.CHECKPOINT.DIR={interrupted}",
                        "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3"])
    mid = interrupted / "model_iteration6.torch"  # phase 1, 2 of its 4 iterations done
    state = torch.load(mid, weights_only=True)
    assert state["phase_idx"] == 1 and not state["phase_complete"]
    assert state["iteration_in_phase"] == 2
    for f in interrupted.glob("model_final*"):
        f.unlink()
    os.replace(interrupted / "checkpoint.torch", interrupted / "old_link")
    os.symlink(mid.name, interrupted / "checkpoint.torch")
    logged = len(_records(interrupted))
    final = run_engine(QUICK + [f"config.CHECKPOINT.DIR={interrupted}",
                                "config.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY=3"])
    assert [r["iteration"] for r in _records(interrupted)[logged:]] == [7, 8]
    a, b = _weights(straight / "checkpoint.torch"), _weights(final)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_checkpoint_layout_is_vissl_and_safe_to_load(tmp_path):
    final = run_engine(QUICK + [f"config.CHECKPOINT.DIR={tmp_path}", "config.OPTIMIZER.num_epochs=1"])
    state = torch.load(final, weights_only=True)
    model = state["classy_state_dict"]["base_model"]["model"]
    assert any(k.startswith("_feature_blocks.conv1") for k in model["trunk"])
    assert any(k.startswith("0.") for k in model["heads"])
    assert state["iteration"] == 4 and state["config"]["OPTIMIZER"]["num_epochs"] == 1
    assert (tmp_path / "train_config.yaml").read_text().startswith("config:")
    assert not list(tmp_path.glob(".*.torch.*")), "temporary checkpoint files left behind"
