"""Feature extraction (``engine_name=extract_features``).

Runs the trunk (frozen, eval mode) over DATA.TRAIN and DATA.TEST without augmentation beyond the
configured TRANSFORMS, pools the requested layers per
MODEL.FEATURE_EVAL_SETTINGS.LINEAR_EVAL_FEAT_POOL_OPS_MAP (or takes the heads' outputs when
EXTRACT_TRUNK_FEATURES_ONLY is false, saved as layer ``heads``), and writes, per split and
layer, ``<split>_<layer>_{features,targets,inds}.npy`` (float32 N x D, int64 N, int64 N) into
EXTRACT_FEATURES.OUTPUT_DIR, rows sorted by sample index. With several processes each rank
extracts its shard and rank 0 writes the gathered, de-duplicated arrays.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import torch
from omegaconf import DictConfig

from sslcore.config.schema import Key, declare
from sslcore.engine import checkpoint as ckpt
from sslcore.engine.distributed import barrier, get_rank, get_world_size, is_primary
from sslcore.engine.remote import push_dir, staging_dir
from sslcore.storage import is_remote, join_uri

log = logging.getLogger(__name__)

declare("EXTRACT_FEATURES", {
    "OUTPUT_DIR": Key("", str, "where feature files go ('' = CHECKPOINT.DIR/features)"),
    "CHUNK_THRESHOLD": Key(-1, int, "not used yet: features are written as one file per split and layer"),
})


def _splits(cfg: DictConfig) -> List[str]:
    synthetic = lambda s: set(cfg.DATA[s].DATA_SOURCES) == {"synthetic"}  # noqa: E731  (needs no path)
    return [s for s in ("TRAIN", "TEST")
            if cfg.DATA[s].DATA_PATHS or cfg.DATA[s].DATASET_NAMES or synthetic(s)]


@torch.no_grad()
def _extract_split(cfg: DictConfig, model: torch.nn.Module, split: str,
                   device: torch.device) -> Dict[str, Dict[str, np.ndarray]]:
    from sslcore.data import build_dataloader, build_dataset

    dataset = build_dataset(cfg, split)
    loader = build_dataloader(cfg, split, dataset, world_size=get_world_size(), rank=get_rank(),
                              shuffle=False)
    trunk_only = bool(cfg.MODEL.FEATURE_EVAL_SETTINGS.EXTRACT_TRUNK_FEATURES_ONLY)
    feats: Dict[str, List[np.ndarray]] = {}
    targets, inds = [], []
    skipped = 0
    start = time.perf_counter()
    for batch in loader:
        x = batch["data"][0].to(device, non_blocking=True)
        if trunk_only:
            out = model.extract_trunk_features(x)
        else:
            out = {"heads": model(x)[-1]}
        for layer, value in out.items():
            feats.setdefault(layer, []).append(value.float().cpu().numpy())
        targets.append(batch["label"].numpy())
        inds.append(batch["data_idx"].numpy())
        skipped += int(batch.get("num_skipped", 0))
    seconds = time.perf_counter() - start
    n = sum(len(i) for i in inds)
    log.info("%s: %d images in %.1f s (%.0f img/s, rank %d), %d unreadable skipped",
             split, n, seconds, n / max(seconds, 1e-9), get_rank(), skipped)
    return {"targets": np.concatenate(targets).astype(np.int64),
            "inds": np.concatenate(inds).astype(np.int64),
            **{f"feat:{k}": np.concatenate(v).astype(np.float32) for k, v in feats.items()}}


def _gather(part: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    if get_world_size() == 1:
        parts = [part]
    else:
        parts = [None] * get_world_size()
        torch.distributed.all_gather_object(parts, part)
    merged = {k: np.concatenate([p[k] for p in parts]) for k in part}
    _, first = np.unique(merged["inds"], return_index=True)  # sorted by index, padding dropped
    return {k: v[first] for k, v in merged.items()}


def extract_features(cfg: DictConfig, device: torch.device) -> Union[Path, str]:
    """Extract features for every configured split; return the output directory.

    EXTRACT_FEATURES.OUTPUT_DIR (default CHECKPOINT.DIR/features) may be ``s3://``: files are
    written to its staging directory, then uploaded, and the URI is returned.

    Raises:
        StorageError: the output prefix cannot be written.
        ValueError: no split has data configured.
    """
    from sslcore.benchmarks.features import save_features
    from sslcore.models import build_model

    splits = _splits(cfg)
    if not splits:
        raise ValueError("feature extraction needs DATA.TRAIN.DATA_PATHS and/or DATA.TEST.DATA_PATHS")
    out = str(cfg.EXTRACT_FEATURES.OUTPUT_DIR or join_uri(str(cfg.CHECKPOINT.DIR), "features"))
    out_dir = staging_dir(out)
    torch.manual_seed(int(cfg.SEED_VALUE))
    model = build_model(cfg.MODEL).to(device)
    w = cfg.MODEL.WEIGHTS_INIT
    if w.PARAMS_FILE:
        ckpt.init_model_from_weights(model, w.PARAMS_FILE, state_dict_key_name=w.STATE_DICT_KEY_NAME,
                                     skip_layers=list(w.SKIP_LAYERS), remove_prefix=w.REMOVE_PREFIX,
                                     append_prefix=w.APPEND_PREFIX)
    else:
        log.warning("MODEL.WEIGHTS_INIT.PARAMS_FILE is empty: extracting from a randomly "
                    "initialised model (seed %d)", int(cfg.SEED_VALUE))
    model.eval()
    for split in splits:
        arrays = _gather(_extract_split(cfg, model, split, device))
        if not is_primary():
            continue
        for key, value in arrays.items():
            if key.startswith("feat:"):
                layer = key[len("feat:"):]
                save_features(out_dir, split.lower(), layer, value, arrays["targets"], arrays["inds"])
                log.info("wrote %s %s features %s to %s", split.lower(), layer, value.shape, out_dir)
    if is_remote(out):
        if is_primary():
            push_dir(out_dir, out)
            log.info("uploaded features to %s", out)
        barrier()
        return out
    return out_dir


def extract_raw_pixel_features(data_dir: Path, out_dir: Path, *, batch_size: int = 512,
                               num_workers: int = 0) -> Path:
    """Write raw-pixel "features" (layer ``pixels``) for a disk_filelist dataset: the baseline.

    Each image is read through the same data layer as training, converted to one grey channel
    (exact for Fashion-MNIST, whose images are grey), scaled to [0, 1] by ToTensor and flattened
    to (H*W,) float32: 784 values for Fashion-MNIST, the dataset's published baseline input.

    Args:
        data_dir: a dataset with ``{train,test}_images.npy`` and ``{train,test}_labels.npy``.
        out_dir: where ``<split>_pixels_{features,targets,inds}.npy`` go.

    Returns:
        ``out_dir``.

    Raises:
        FileNotFoundError: the dataset has no disk_filelist files.
    """
    from sslcore.benchmarks.features import save_features
    from sslcore.config.loader import compose_config
    from sslcore.data import build_dataloader, build_dataset

    data_dir = Path(data_dir)
    overrides = [f"config.DATA.NUM_DATALOADER_WORKERS={num_workers}"]
    for split in ("TRAIN", "TEST"):
        images = data_dir / f"{split.lower()}_images.npy"
        if not images.exists():
            raise FileNotFoundError(f"{images} not found: raw-pixel features need a disk_filelist "
                                    "dataset (run `sslcore data prepare`)")
        overrides += [f"config.DATA.{split}.DATA_SOURCES=[disk_filelist]",
                      f"config.DATA.{split}.DATA_PATHS=[{images}]",
                      f"config.DATA.{split}.LABEL_SOURCES=[disk_filelist]",
                      f"config.DATA.{split}.LABEL_PATHS=[{data_dir / f'{split.lower()}_labels.npy'}]",
                      f"config.DATA.{split}.BATCHSIZE_PER_REPLICA={batch_size}",
                      f"config.DATA.{split}.TRANSFORMS=[{{name: Grayscale, num_output_channels: 1}},{{name: ToTensor}}]"]
    cfg = compose_config(overrides)
    for split in ("TRAIN", "TEST"):
        dataset = build_dataset(cfg, split)
        loader = build_dataloader(cfg, split, dataset, world_size=1, rank=0, shuffle=False)
        feats, targets, inds = [], [], []
        for batch in loader:
            feats.append(batch["data"][0].flatten(1).numpy())
            targets.append(batch["label"].numpy())
            inds.append(batch["data_idx"].numpy())
        save_features(out_dir, split.lower(), "pixels", np.concatenate(feats).astype(np.float32),
                      np.concatenate(targets).astype(np.int64), np.concatenate(inds).astype(np.int64))
    return Path(out_dir)
