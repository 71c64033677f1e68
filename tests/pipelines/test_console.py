"""Local runs keep the terminal readable: everything goes to pipeline.log, progress is echoed."""

import subprocess
import sys

import pytest

from pipelines.console import is_progress_line, progress_only


def test_progress_filter():
    assert is_progress_line("01:13:25.846 - INFO - Executing task 'data-copy'")
    assert is_progress_line("    01:17:29 I [rank 0] phase 3/4 iter 160/312 loss 4.13 lr 0.29")
    assert is_progress_line("Task 'pretrain' finished with status SUCCESS")
    assert not is_progress_line('            "outputFile": "/tmp/x/executor_output.json"')
    assert not is_progress_line("[KFP Executor 2026-11-22 01:23:05,885 INFO]: Loading faiss.")


def test_subprocess_output_goes_to_log_and_only_progress_to_terminal(tmp_path, capfd):
    log = tmp_path / "pipeline.log"
    with progress_only(log):
        subprocess.run([sys.executable, "-c",
                        "print('noise line'); print('Executing task build'); "
                        "import sys; print('phase 1/2 iter 3/8 loss 1.0', file=sys.stderr)"],
                       check=True)
        print("more noise")
    out = capfd.readouterr().out
    assert "Executing task build" in out and "phase 1/2 iter 3/8" in out
    assert "noise" not in out
    text = log.read_text()
    for line in ("noise line", "Executing task build", "phase 1/2 iter 3/8", "more noise"):
        assert line in text


def test_failure_echoes_the_log_tail(tmp_path, capfd):
    with pytest.raises(RuntimeError):
        with progress_only(tmp_path / "pipeline.log"):
            print("the detail that explains it")
            raise RuntimeError("task failed")
    assert "the detail that explains it" in capfd.readouterr().err
