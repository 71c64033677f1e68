"""The entry point every way of running shares: the CLI, KFP components, torchrun and PyTorchJobs.

``run_engine(overrides, engine_name)`` composes the config from VISSL-style overrides, joins the
process group torchrun described (if any), fills in derived values in one logged step, saves the
resolved config next to the run, and runs the engine.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable, Dict, Sequence, Union

import torch
from omegaconf import DictConfig

from sslcore.config.infer import infer_config
from sslcore.config.loader import compose_config, save_config
from sslcore.engine.distributed import (
    init_distributed,
    is_primary,
    select_device,
    shutdown_distributed,
)

from sslcore.engine.remote import staging_dir
from sslcore.storage import is_remote, join_uri, upload_file

log = logging.getLogger(__name__)

ENGINES = ("train", "extract_features", "extract_cluster")
_CONFIG_FILE = {"train": "train_config.yaml", "extract_features": "extract_config.yaml",
                "extract_cluster": "cluster_config.yaml"}


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr as ``time level [rank] message``; other ranks log warnings only."""
    rank = os.environ.get("RANK", "0")
    level = logging.DEBUG if verbose else logging.INFO
    if rank != "0":
        level = logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr, force=True,
                        format=f"%(asctime)s %(levelname).1s [rank {rank}] %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its AVX probing is noise


def resolve(overrides: Sequence[str], engine_name: str = "train") -> DictConfig:
    """Compose + infer, from the overrides and this process's launch environment (logged)."""
    cfg = compose_config(overrides)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    cfg, changes = infer_config(cfg, world_size=world, local_world_size=local,
                                cuda_available=torch.cuda.is_available(), engine_name=engine_name)
    for change in changes:
        log.info("inferred %s", change)
    return cfg


def run_engine(overrides: Sequence[str], engine_name: str = "train") -> Union[Path, str]:
    """Run ``engine_name`` with the config composed from ``overrides``.

    CHECKPOINT.DIR and EXTRACT_FEATURES.OUTPUT_DIR may be ``s3://`` URIs: the engine then works
    in a local staging directory and uploads (:mod:`sslcore.engine.remote`).

    Args:
        overrides: e.g. ``["config=pretrain/simclr/quick_simclr", "config.OPTIMIZER.num_epochs=2"]``.
        engine_name: ``"train"`` (returns the final checkpoint) or ``"extract_features"``
            (returns the features directory).

    Returns:
        A local path, or the ``s3://`` URI of the result when its directory is remote.

    Raises:
        StorageError: an ``s3://`` directory cannot be read or written.
        ValueError: unknown engine, or any config error (ConfigError is a ValueError).
    """
    engines: Dict[str, Callable[[DictConfig, torch.device], Path]] = _engines()
    if engine_name not in engines:
        raise ValueError(f"engine_name={engine_name} is unknown; use one of {', '.join(ENGINES)}")
    cfg = resolve(overrides, engine_name)
    setup_logging(bool(cfg.VERBOSE))
    device = select_device(cfg.MACHINE.DEVICE)
    init_distributed(device, cfg.DISTRIBUTED.BACKEND)
    try:
        if is_primary():
            path = staging_dir(str(cfg.CHECKPOINT.DIR)) / _CONFIG_FILE[engine_name]
            save_config(cfg, path)
            log.info("resolved config saved to %s", path)
        result = engines[engine_name](cfg, device)
        return _publish(cfg, engine_name, result)
    finally:
        shutdown_distributed()


def _publish(cfg: DictConfig, engine_name: str, result: Union[Path, str]) -> Union[Path, str]:
    """Upload the resolved config of a remote run dir; map a staged checkpoint to its URI."""
    run_dir = str(cfg.CHECKPOINT.DIR)
    if not is_remote(run_dir):
        return result
    if is_primary():
        name = _CONFIG_FILE[engine_name]
        upload_file(staging_dir(run_dir) / name, join_uri(run_dir, name))
    if engine_name == "train":
        return join_uri(run_dir, Path(result).name)
    return result


def _engines() -> Dict[str, Callable[[DictConfig, torch.device], Path]]:
    from sslcore.engine.clusterfit import extract_cluster
    from sslcore.engine.extract import extract_features
    from sslcore.engine.trainer import train

    return {"train": train, "extract_features": extract_features, "extract_cluster": extract_cluster}
