"""Run directories in object storage: CHECKPOINT.DIR (and feature outputs) as ``s3://`` URIs.

Engines write to a local staging directory (:func:`sslcore.storage.local_mirror` of the URI)
and this module keeps the remote prefix in step with it:

- before training, :func:`pull_latest` downloads the checkpoint named by the remote
  ``checkpoint.latest`` pointer (and the training log), so AUTO_RESUME works in a fresh pod;
- during training, :class:`RemoteSyncHook` uploads new and changed files after every hook
  point that may have written a checkpoint: logs and TensorBoard events first, then the new
  checkpoint, then the pointer, so a reader never follows the pointer to a partial upload;
- after extraction, :func:`push_dir` uploads the output directory;
- benchmarks read remote inputs through :func:`fetch_dir`.

Only the primary rank uploads; every rank may download (all read the same objects).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from sslcore.engine import checkpoint as ckpt
from sslcore.engine.distributed import barrier, is_primary
from sslcore.engine.hooks import Hook
from sslcore.storage import (download_file, exists, join_uri, read_latest_pointer, upload_file,
                             write_latest_pointer)

log = logging.getLogger(__name__)

# files that follow a checkpoint across a restart: the JSON-lines log keeps growing
_RESUME_COMPANIONS = ("stdout.json",)


def pull_latest(remote: str, local: Path) -> Optional[Path]:
    """Download the remote latest checkpoint into ``local`` and point ``checkpoint.torch`` at it.

    Args:
        remote: the run's ``s3://`` prefix (CHECKPOINT.DIR).
        local: its staging directory.

    Returns:
        The local checkpoint path, or None when the remote holds no checkpoint yet.

    Raises:
        StorageError: remote failure (bad credentials and a missing bucket included).
        FileNotFoundError: the pointer names a checkpoint that is gone.
    """
    local.mkdir(parents=True, exist_ok=True)
    name = read_latest_pointer(remote)
    if name is None:
        return None
    path = local / name
    if not path.exists():
        download_file(join_uri(remote, name), path)
    for companion in _RESUME_COMPANIONS:
        uri = join_uri(remote, companion)
        if exists(uri):
            download_file(uri, local / companion)
    ckpt.point_latest(local, path)
    log.info("pulled %s from %s for resume", name, remote)
    return path


def push_dir(local: Path, remote: str, uploaded: Optional[Dict[str, Tuple[int, int]]] = None) -> int:
    """Upload files under ``local`` that are new or changed since ``uploaded`` (size, mtime).

    Checkpoint files (``*.torch``), the ``checkpoint.torch`` link and hidden temporary files are
    left out: :class:`RemoteSyncHook` uploads checkpoints itself, in order.

    Args:
        local: staging directory.
        remote: ``s3://`` prefix.
        uploaded: relative path -> (size, mtime_ns) of what was uploaded; updated in place.

    Returns:
        The number of files uploaded.

    Raises:
        StorageError: remote failure.
    """
    uploaded = {} if uploaded is None else uploaded
    count = 0
    for path in sorted(p for p in local.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(local).as_posix()
        if path.suffix == ".torch" or any(part.startswith(".") for part in rel.split("/")):
            continue
        stat = path.stat()
        key = (stat.st_size, stat.st_mtime_ns)
        if uploaded.get(rel) == key:
            continue
        upload_file(path, join_uri(remote, rel))
        uploaded[rel] = key
        count += 1
    return count


class RemoteSyncHook(Hook):
    """Mirror the local staging directory of a training run to its ``s3://`` CHECKPOINT.DIR.

    Runs after the checkpoint hook at the same hook points. A checkpoint is uploaded once, after
    the logs, and ``checkpoint.latest`` is rewritten only when its upload returned.

    Args:
        local: the staging directory the engine writes to.
        remote: the run's ``s3://`` prefix.
    """

    def __init__(self, local: Path, remote: str) -> None:
        self.local = local
        self.remote = remote
        self.uploaded: Dict[str, Tuple[int, int]] = {}
        self.pushed_checkpoint: Optional[str] = None

    def sync(self) -> None:
        """Upload changed files, then a new checkpoint and its pointer (primary rank only)."""
        if is_primary():
            push_dir(self.local, self.remote, self.uploaded)
            latest = ckpt.find_latest_checkpoint(self.local)
            if latest is not None and latest.name != self.pushed_checkpoint:
                upload_file(latest, join_uri(self.remote, latest.name))
                write_latest_pointer(self.remote, latest.name)
                self.pushed_checkpoint = latest.name
                log.info("uploaded %s to %s", latest.name, self.remote)
        barrier()

    def on_start(self, task: object) -> None:
        """Remember the checkpoint a resume started from: it is already remote."""
        latest = ckpt.find_latest_checkpoint(self.local)
        self.pushed_checkpoint = latest.name if latest is not None else None

    def on_step(self, task: object) -> None:
        """Sync when the checkpoint hook just wrote an iteration checkpoint."""
        every = int(task.cfg.CHECKPOINT.CHECKPOINT_ITER_FREQUENCY)  # type: ignore[attr-defined]
        if every > 0 and task.iteration % every == 0:  # type: ignore[attr-defined]
            self.sync()

    def on_phase_end(self, task: object) -> None:
        """Sync after every phase (checkpoint or not: the log and TensorBoard events grew)."""
        self.sync()

    def on_end(self, task: object) -> None:
        """Final sync."""
        self.sync()


def fetch_dir(uri: str) -> Path:
    """A local directory holding everything under ``uri`` (downloaded when ``s3://``).

    Raises:
        FileNotFoundError: the prefix holds no object.
        StorageError: remote failure.
    """
    from sslcore.storage import download_dir, is_remote, local_mirror

    if not is_remote(uri):
        return Path(uri)
    local = local_mirror(uri)
    if not download_dir(uri, local):
        raise FileNotFoundError(f"nothing under {uri}: check the URI (list it with `mc ls`)")
    return local


def staging_dir(run_dir: str) -> Path:
    """The local directory an engine writes to for ``run_dir`` (itself when it is local)."""
    from sslcore.storage import is_remote, local_mirror

    return local_mirror(run_dir) if is_remote(run_dir) else Path(os.path.expanduser(run_dir))


RUN_FILES = ("stdout.json", "train_config.yaml")


def fetch_run(checkpoint: str, out_dir: Path) -> List[Path]:
    """Copy a final checkpoint, and its run's log and config when they sit beside it, to ``out_dir``.

    Args:
        checkpoint: ``s3://.../<run>/<checkpoint file>`` or a local checkpoint file.
        out_dir: local directory (a Model artifact: the pretrain or import_checkpoint output).

    Returns:
        The local files written (checkpoint first, then those of :data:`RUN_FILES` found).

    Raises:
        FileNotFoundError: the checkpoint does not exist.
        StorageError: remote failure.
    """
    run_dir, _, name = str(checkpoint).rpartition("/")
    out_dir = Path(out_dir)
    written = [out_dir / name]
    download_file(checkpoint, written[0])
    for companion in RUN_FILES:
        uri = join_uri(run_dir, companion)
        if exists(uri):
            download_file(uri, out_dir / companion)
            written.append(out_dir / companion)
    return written
