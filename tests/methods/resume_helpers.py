"""Rewind a finished run directory to one of its iteration checkpoints, as a killed run leaves it."""

import os
from pathlib import Path


def rewind(run_dir: Path, checkpoint: str) -> None:
    """Drop the final checkpoint(s) and point ``checkpoint.torch`` at ``checkpoint``."""
    for f in Path(run_dir).glob("model_final*"):
        f.unlink()
    os.unlink(Path(run_dir) / "checkpoint.torch")
    os.symlink(checkpoint, Path(run_dir) / "checkpoint.torch")
