"""The instance retrieval benchmark: GeM / R-MAC descriptors, optional PCA whitening, revisited mAP.

Protocol (design.md section 9), as VISSL's instance retrieval benchmark runs it:

- descriptors from the spatial map of one trunk layer (``res5`` by default): GeM pooling
  (p = 3; Radenović et al. 2018, https://arxiv.org/abs/1711.02512) or R-MAC (L = 3 levels,
  40% region overlap; Tolias et al. 2016, https://arxiv.org/abs/1511.05879), L2-normalised;
- optional PCA whitening fitted on a separate image set, then L2 again
  (:mod:`sslcore.benchmarks.retrieval_descriptors`);
- queries rank the database by cosine similarity; mAP and mean precision@k (k = 1, 5, 10) with
  junk removed, per protocol (Radenović et al. 2018, https://arxiv.org/abs/1803.11285;
  :mod:`sslcore.benchmarks.retrieval_metrics`).

Sets: Fashion-MNIST retrieval (relevant = same class) or any set in the revisited Oxford/Paris
layout (easy/medium/hard); see :mod:`sslcore.benchmarks.retrieval_data`.

Files written to ``out_dir``: ``metrics.json`` (benchmark ``"retrieval"``: records ``mAP`` and
``precision@k`` in percent, one set per protocol), ``indices.json`` (the chosen queries,
database and whitening images), ``examples.json`` (a few queries with their top-5 database
images and whether each is relevant) and ``thumbnails/*.png`` (those images, small, for the
report).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from sslcore.benchmarks.features import PathLike
from sslcore.benchmarks.metrics import make_record, read_metrics, write_metrics
from sslcore.benchmarks.retrieval_data import (
    BBox,
    RetrievalSet,
    build_fashion_mnist_set,
    build_revisited_set,
    load_image,
)
from sslcore.benchmarks.retrieval_descriptors import DESCRIPTORS, describe, fit_pca_whitening
from sslcore.benchmarks.retrieval_metrics import DEFAULT_KAPPAS, compute_map

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "feature_extraction/extract_resnet_fashion_mnist"
EXAMPLES_FILENAME = "examples.json"
INDICES_FILENAME = "indices.json"
THUMBNAIL_SIZE = 96


def load_retrieval_model(config: str = DEFAULT_CONFIG, checkpoint: Optional[str] = None, *,
                         overrides: Sequence[str] = (), device: str = "cpu"
                         ) -> Tuple[torch.nn.Module, Callable[[Any], torch.Tensor]]:
    """Build the recipe's model (trunk), load a checkpoint, and the recipe's test-time transform.

    Args:
        config: an extraction recipe (e.g. ``feature_extraction/extract_resnet_fashion_mnist``)
            whose MODEL.TRUNK matches the checkpoint and whose DATA.TEST.TRANSFORMS turn a PIL
            image into a normalised (3, H, W) tensor.
        checkpoint: a VISSL-style checkpoint file (or ``s3://`` URI); None = random init with
            the recipe's SEED_VALUE (the baseline a pretrained trunk must beat).
        overrides: more ``config.KEY=VALUE`` overrides.
        device: ``"cpu"`` or ``"cuda"``.

    Returns:
        ``(model in eval mode on device, transform: PIL image -> (3, H, W) float tensor)``.

    Raises:
        ValueError: config errors or a checkpoint that does not match the trunk.
        FileNotFoundError: the checkpoint does not exist.
    """
    from sslcore.config.loader import compose_config
    from sslcore.data.transforms import build_transforms
    from sslcore.engine import checkpoint as ckpt
    from sslcore.models import build_model

    cfg = compose_config([f"config={config}", *overrides])
    torch.manual_seed(int(cfg.SEED_VALUE))
    model = build_model(cfg.MODEL)
    if checkpoint:
        w = cfg.MODEL.WEIGHTS_INIT
        ckpt.init_model_from_weights(model, str(checkpoint), state_dict_key_name=w.STATE_DICT_KEY_NAME,
                                     skip_layers=list(w.SKIP_LAYERS), remove_prefix=w.REMOVE_PREFIX,
                                     append_prefix=w.APPEND_PREFIX)
    else:
        log.warning("retrieval: no checkpoint, the trunk is randomly initialised (seed %d)",
                    int(cfg.SEED_VALUE))
    model.eval().to(device)
    sample_transform = build_transforms(cfg.DATA.TEST.TRANSFORMS)

    def transform(img: Any) -> torch.Tensor:
        out = sample_transform({"data": [img], "label": [0], "data_idx": [0], "data_valid": [True]})
        tensor = out["data"][0]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(f"config {config}: DATA.TEST.TRANSFORMS must end in a tensor (add ToTensor)")
        return tensor

    return model, transform


@torch.no_grad()
def compute_descriptors(model: torch.nn.Module, transform: Callable[[Any], torch.Tensor],
                        images: Sequence[Tuple[PathLike, BBox]], *, layer: str = "res5",
                        descriptor: str = "gem", p: float = 3.0, levels: int = 3,
                        image_size: int = 0, batch_size: int = 256, device: str = "cpu") -> np.ndarray:
    """Descriptors of images: load (crop, resize), transform, trunk layer map, pool, normalise.

    Consecutive images of equal size are batched; others (full-size photos) go one at a time.

    Args:
        model: from :func:`load_retrieval_model` (``model.trunk(x, out_feat_keys=[layer])``).
        transform: PIL image -> (3, H, W) tensor.
        images: ``(path, bbox or None)`` pairs.
        layer: a spatial trunk feature, e.g. ``res5`` or ``res4``.
        descriptor: ``"gem"`` or ``"rmac"``.
        p: GeM exponent; levels: R-MAC levels.
        image_size: longer image side in pixels before the transform (0 = as stored).
        batch_size: images per forward pass.
        device: where the trunk runs.

    Returns:
        (N, C) float32 descriptors with unit L2 norm.

    Raises:
        ValueError: ``layer`` is not a trunk feature or is not spatial; unknown descriptor.
    """
    names = list(model.trunk.feature_names)
    if layer not in names:
        raise ValueError(f"layer {layer!r} is not a feature of the trunk; use one of {names} "
                         "(a spatial one such as res4 or res5)")
    out: List[np.ndarray] = []
    batch: List[torch.Tensor] = []

    def flush() -> None:
        (fmap,) = model.trunk(torch.stack(batch).to(device), out_feat_keys=[layer])
        out.append(describe(fmap.float(), descriptor, p=p, levels=levels).cpu().numpy())
        batch.clear()

    for path, bbox in images:
        tensor = transform(load_image(path, bbox, image_size))
        if batch and (tensor.shape != batch[0].shape or len(batch) == batch_size):
            flush()
        batch.append(tensor)
    if batch:
        flush()
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def rank_database(queries: np.ndarray, database: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Rank the database for each query by inner product (cosine for unit descriptors).

    Args:
        queries: (Q, D) float; database: (N, D) float.

    Returns:
        ``(rankings (Q, N) int64 best first, similarities (Q, N) float32)``; ties keep database order.
    """
    sims = (queries.astype(np.float32) @ database.astype(np.float32).T)
    return np.argsort(-sims, axis=1, kind="stable").astype(np.int64), sims


def _pick_examples(rset: RetrievalSet, count: int) -> List[int]:
    labels = rset.indices.get("queries", {}).get("labels")
    if labels is None:
        return list(range(min(count, len(rset.queries))))
    first: Dict[int, int] = {}
    for q, label in enumerate(labels):
        first.setdefault(int(label), q)
    return sorted(first.values())[:count]


def _save_thumbnail(path: Path, bbox: BBox, out: Path) -> str:
    from PIL import Image

    img = load_image(path, bbox)
    scale = THUMBNAIL_SIZE / max(img.size)
    resample = Image.NEAREST if scale > 1 else Image.BILINEAR
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), resample)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return str(out.relative_to(out.parent.parent))


def write_examples(out_dir: Path, rset: RetrievalSet, rankings: np.ndarray, sims: np.ndarray,
                   protocol: str, count: int = 5, top: int = 5) -> Path:
    """Write ``examples.json`` and the thumbnails of a few queries and their ``top`` matches.

    Returns:
        The path of ``examples.json``: ``{"protocol", "examples": [{"query": {"id", "name",
        "thumbnail"}, "top": [{"id", "name", "similarity", "relevant", "junk", "thumbnail"}]}]}``.
    """
    gnd = rset.ground_truth[protocol]
    examples = []
    for q in _pick_examples(rset, count):
        ok, junk = set(gnd[q]["ok"]), set(gnd[q]["junk"])
        query_path, bbox = rset.queries[q]
        entry = {"query": {"id": q, "name": rset.query_names[q],
                           "thumbnail": _save_thumbnail(query_path, bbox, out_dir / "thumbnails" / f"q{q}.png")},
                 "top": []}
        for db in rankings[q, :top].tolist():
            thumb = _save_thumbnail(rset.database[db], None, out_dir / "thumbnails" / f"d{db}.png")
            entry["top"].append({"id": db, "name": rset.database_names[db], "similarity": float(sims[q, db]),
                                 "relevant": db in ok, "junk": db in junk, "thumbnail": thumb})
        examples.append(entry)
    path = out_dir / EXAMPLES_FILENAME
    path.write_text(json.dumps({"set": rset.name, "protocol": protocol, "examples": examples}, indent=1))
    return path


def score_rankings(rankings: np.ndarray, ground_truth: Dict[str, List[Dict[str, List[int]]]], *, layer: str,
                   params: Dict[str, Any]) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """Metrics records of rankings under every protocol: ``mAP`` and ``precision@k`` in percent.

    Args:
        rankings: (Q, N) int database ids per query, best first.
        ground_truth: protocol -> Q dicts ``{"ok", "junk"}``.
        layer: the layer the records name.
        params: protocol parameters shared by all records (``protocol`` and ``k`` are added).

    Returns:
        ``(records, queries without positives per protocol)``; a protocol under which no query
        has a positive gives no record.
    """
    records, empty = [], {}
    for protocol, gnd in ground_truth.items():
        result = compute_map(rankings, gnd, DEFAULT_KAPPAS)
        empty[protocol] = result["num_empty"]
        if result["num_evaluated"] == 0:
            log.warning("retrieval: no query has a positive under protocol %s; no record", protocol)
            continue
        records.append(make_record("mAP", 100.0 * result["mAP"], unit="%", layer=layer,
                                   params={**params, "protocol": protocol}))
        for k, value in zip(DEFAULT_KAPPAS, result["precision"]):
            records.append(make_record(f"precision@{k}", 100.0 * value, unit="%", layer=layer,
                                       params={**params, "protocol": protocol, "k": k}))
    return records, empty


def _build_set(data_dir, revisited_root, dataset, allow_pickle, whiten_root, sizes) -> RetrievalSet:
    if (data_dir is None) == (revisited_root is None):
        raise ValueError("give exactly one set: data_dir (a prepared Fashion-MNIST, --data) or "
                         "revisited_root with dataset (--revisited-root DIR --dataset roxford5k)")
    if revisited_root is not None:
        if not dataset:
            raise ValueError("revisited_root needs dataset, the name in gnd_<dataset>.json (--dataset)")
        return build_revisited_set(revisited_root, dataset, allow_pickle=allow_pickle,
                                   whiten_root=whiten_root, num_whiten=sizes["num_whiten"])
    return build_fashion_mnist_set(data_dir, **sizes)


def run_retrieval_benchmark(
    out_dir: PathLike,
    *,
    data_dir: Optional[PathLike] = None,
    revisited_root: Optional[PathLike] = None,
    dataset: str = "",
    allow_pickle: bool = False,
    checkpoint: Optional[str] = None,
    config: str = DEFAULT_CONFIG,
    overrides: Sequence[str] = (),
    layer: str = "res5",
    descriptor: str = "gem",
    gem_p: float = 3.0,
    rmac_levels: int = 3,
    whiten: bool = False,
    whiten_root: Optional[PathLike] = None,
    whiten_dims: Optional[int] = None,
    num_queries: int = 500,
    num_database: int = 5000,
    num_whiten: int = 5000,
    image_size: int = 0,
    seed: int = 0,
    batch_size: int = 256,
    num_examples: int = 5,
    device: str = "cpu",
) -> Dict[str, Any]:
    """Run the retrieval benchmark on one set and write its files to ``out_dir``.

    Args:
        out_dir: where metrics.json, indices.json, examples.json and thumbnails/ go.
        data_dir: a prepared Fashion-MNIST directory (Fashion-MNIST retrieval), or
        revisited_root: a set in the revisited layout, with ``dataset`` its ground-truth name
            and ``allow_pickle`` to permit a ``.pkl`` ground truth.
        checkpoint: trunk weights; None = random init.
        config, overrides: the extraction recipe giving the trunk and the test transform.
        layer: spatial trunk layer (``res5``, ``res4``, ...).
        descriptor: ``"gem"`` (exponent ``gem_p``) or ``"rmac"`` (``rmac_levels`` levels).
        whiten: fit PCA whitening on the whitening images (Fashion-MNIST: ``num_whiten`` train
            images outside the database; revisited: ``whiten_root``) and apply it.
        whiten_dims: keep this many whitened dimensions (None = all).
        num_queries, num_database, num_whiten, seed: Fashion-MNIST set sizes and draw seed.
        image_size: longer image side before the transform (0 = as stored: 28 for Fashion-MNIST).
        batch_size, device: descriptor extraction settings.
        num_examples: queries shown in examples.json.

    Returns:
        The metrics dict as written (``{"benchmark": "retrieval", "records": [...], ...}``).

    Raises:
        ValueError: no set or two sets, an unknown descriptor, whitening without whitening
            images, a set too large for the prepared data, or a layer that is not spatial.
        FileNotFoundError: data, ground truth or checkpoint missing.

    Example:
        >>> run_retrieval_benchmark("out/retrieval", data_dir="data/fmnist", checkpoint="ckpt.torch")
    """
    if descriptor not in DESCRIPTORS:
        raise ValueError(f"descriptor={descriptor!r} is unknown; use one of {list(DESCRIPTORS)}")
    sizes = {"num_queries": num_queries, "num_database": num_database,
             "num_whiten": num_whiten if whiten else 0, "seed": seed}
    rset = _build_set(data_dir, revisited_root, dataset, allow_pickle, whiten_root, sizes)
    if whiten and not rset.whiten:
        raise ValueError("whiten needs whitening images apart from queries and database: set num_whiten "
                         "> 0 (Fashion-MNIST) or whiten_root (--whiten-root, revisited sets)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model, transform = load_retrieval_model(config, checkpoint, overrides=overrides, device=device)
    options = dict(layer=layer, descriptor=descriptor, p=gem_p, levels=rmac_levels, image_size=image_size,
                   batch_size=batch_size, device=device)
    timings: Dict[str, float] = {}
    start = time.perf_counter()
    query_desc = compute_descriptors(model, transform, rset.queries, **options)
    database_desc = compute_descriptors(model, transform, [(p, None) for p in rset.database], **options)
    timings["describe_s"] = time.perf_counter() - start
    if whiten:
        start = time.perf_counter()
        whitening = fit_pca_whitening(
            compute_descriptors(model, transform, [(p, None) for p in rset.whiten], **options), dims=whiten_dims)
        query_desc, database_desc = whitening.apply(query_desc), whitening.apply(database_desc)
        timings["whiten_s"] = time.perf_counter() - start
    start = time.perf_counter()
    rankings, sims = rank_database(query_desc, database_desc)
    params = {"set": rset.name, "descriptor": descriptor, "layer": layer, "whitening": bool(whiten),
              "whiten_size": len(rset.whiten) if whiten else 0, "image_size": image_size,
              "num_queries": len(rset.queries), "num_database": len(rset.database),
              "model": "checkpoint" if checkpoint else "random_init",
              **({"p": gem_p} if descriptor == "gem" else {"levels": rmac_levels, "overlap": 0.4})}
    records, empty = score_rankings(rankings, rset.ground_truth, layer=layer, params=params)
    timings["rank_and_score_s"] = time.perf_counter() - start
    (out / INDICES_FILENAME).write_text(json.dumps({"set": rset.name, **rset.indices}))
    write_examples(out, rset, rankings, sims, "medium" if "medium" in rset.ground_truth
                   else next(iter(rset.ground_truth)), count=num_examples)
    images = len(rset.queries) + len(rset.database)
    extra = {"protocol": "revisited Oxford/Paris mAP (junk removed), Radenovic et al. 2018",
             "sizes": {"queries": len(rset.queries), "database": len(rset.database),
                       "whiten": len(rset.whiten) if whiten else 0, "descriptor_dim": int(query_desc.shape[1])},
             "queries_without_positives": empty, "timings": {**timings,
                                                             "images_per_s": images / max(timings["describe_s"], 1e-9)}}
    log.info("retrieval %s (%s, %s, whiten %s): %s", rset.name, descriptor, layer, whiten,
             ", ".join(f"{r['name']}[{r['params']['protocol']}]={r['value']:.2f}" for r in records))
    return read_metrics(write_metrics(out, "retrieval", records, extra=extra))
