"""Image sets of the instance retrieval benchmark: queries, database, whitening images, ground truth.

Two kinds of set:

- **Fashion-MNIST retrieval** (built from a dataset prepared by ``sslcore data prepare
  fashion_mnist``, disk_filelist layout): queries drawn from the test split, the database and a
  disjoint whitening slice from the train split, each class-stratified with a seeded generator;
  a database image is relevant to a query when it shows the same class (protocol ``"class"``).
- **Revisited Oxford/Paris layout** ([0], https://arxiv.org/abs/1803.11285), as VISSL reads it:
  ``<root>/jpg/<name>.jpg`` and a ground-truth file ``<root>/gnd_<dataset>.json`` (or ``.pkl``)
  holding ``{"imlist": [db names], "qimlist": [query names], "gnd": [{"easy": [ids], "hard":
  [ids], "junk": [ids], "bbx": [x1, y1, x2, y2]}, ...]}``, ids indexing ``imlist``. Queries are
  cropped to their ``bbx``. The ``.pkl`` form is read only with ``allow_pickle=True``:
  unpickling a file can run arbitrary code, so only do it for files you trust.
"""

from __future__ import annotations

import json
import logging
import os
import pickle  # nosec B403 - only behind allow_pickle=True, see load_revisited_ground_truth
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from sslcore.benchmarks.retrieval_metrics import PROTOCOLS

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
BBox = Optional[Tuple[float, float, float, float]]
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class RetrievalSet:
    """Everything a retrieval run needs besides the model.

    Attributes:
        name: the set's name (``"fashion_mnist"`` or the revisited dataset, e.g. ``"roxford5k"``).
        queries: Q ``(image path, bbox or None)`` pairs; bbox ``(x1, y1, x2, y2)`` in pixels.
        database: N image paths; a database id is a position in this list.
        ground_truth: protocol name -> Q dicts ``{"ok": [ids], "junk": [ids]}``.
        whiten: image paths for fitting PCA whitening (disjoint from queries and database).
        query_names, database_names: display names (file stems).
        indices: what was chosen, JSON-ready (saved with the results).
    """

    name: str
    queries: List[Tuple[Path, BBox]]
    database: List[Path]
    ground_truth: Dict[str, List[Dict[str, List[int]]]]
    whiten: List[Path] = field(default_factory=list)
    query_names: List[str] = field(default_factory=list)
    database_names: List[str] = field(default_factory=list)
    indices: Dict[str, Any] = field(default_factory=dict)


def stratified_sample(labels: np.ndarray, count: int, rng: np.random.Generator,
                      exclude: Optional[np.ndarray] = None, what: str = "count") -> np.ndarray:
    """Pick ``count`` rows, the same number per class (remainder to the lowest class ids), at random.

    Args:
        labels: (N,) int class per row.
        count: how many rows, >= 1.
        rng: the seeded generator that draws them.
        exclude: rows that must not be picked.
        what: the argument name for error messages.

    Returns:
        (count,) int64 sorted row indices.

    Raises:
        ValueError: count < 1, or a class has fewer free rows than its share.
    """
    if count < 1:
        raise ValueError(f"{what} must be >= 1, got {count}")
    free = np.ones(len(labels), dtype=bool)
    if exclude is not None:
        free[np.asarray(exclude, dtype=np.int64)] = False
    classes = np.unique(labels)
    quota = np.full(len(classes), count // len(classes))
    quota[: count % len(classes)] += 1
    chosen = []
    for cls, take in zip(classes, quota):
        members = np.flatnonzero((labels == cls) & free)
        if len(members) < take:
            raise ValueError(f"{what}={count}: class {cls} has {len(members)} free images, fewer than its "
                             f"share {take}; lower {what} or prepare more images")
        chosen.append(rng.choice(members, size=int(take), replace=False))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def load_filelist(data_dir: PathLike, split: str) -> Tuple[List[Path], np.ndarray]:
    """Image paths and labels of one split of a disk_filelist dataset.

    Args:
        data_dir: directory with ``<split>_images.npy`` (paths, relative to it or absolute) and
            ``<split>_labels.npy`` (int, (N,)).
        split: ``"train"`` or ``"test"``.

    Returns:
        ``(paths, labels)``: N absolute paths and (N,) int64 labels.

    Raises:
        FileNotFoundError: a file is missing (the message says how to prepare the dataset).
        ValueError: the two files have different lengths.
    """
    root = Path(data_dir)
    images, labels = root / f"{split}_images.npy", root / f"{split}_labels.npy"
    for path in (images, labels):
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: the retrieval set needs a disk_filelist dataset; "
                                    f"run `sslcore data prepare fashion_mnist --out {root}`")
    names = np.load(images, allow_pickle=False)
    targets = np.load(labels, allow_pickle=False).reshape(-1).astype(np.int64)
    if len(names) != len(targets):
        raise ValueError(f"{images} lists {len(names)} images but {labels} has {len(targets)} labels")
    return [Path(n) if os.path.isabs(str(n)) else root / str(n) for n in names], targets


def build_fashion_mnist_set(data_dir: PathLike, *, num_queries: int = 500, num_database: int = 5000,
                            num_whiten: int = 5000, seed: int = 0) -> RetrievalSet:
    """The Fashion-MNIST retrieval set: test queries, train database, disjoint train whitening slice.

    Args:
        data_dir: a prepared Fashion-MNIST directory (disk_filelist files).
        num_queries: queries from the test split, class-stratified.
        num_database: database images from the train split, class-stratified.
        num_whiten: whitening images from the train rows not in the database (0 = none).
        seed: seed of the draws (equal seeds give equal sets).

    Returns:
        A :class:`RetrievalSet` with protocol ``"class"`` (relevant = same class) and
        ``indices`` = the chosen rows of ``test_images.npy`` / ``train_images.npy``.

    Raises:
        FileNotFoundError, ValueError: see :func:`load_filelist` and :func:`stratified_sample`.
    """
    train_paths, train_labels = load_filelist(data_dir, "train")
    test_paths, test_labels = load_filelist(data_dir, "test")
    rng = np.random.default_rng(seed)
    queries = stratified_sample(test_labels, num_queries, rng, what="num_queries")
    database = stratified_sample(train_labels, num_database, rng, what="num_database")
    whiten = (stratified_sample(train_labels, num_whiten, rng, exclude=database, what="num_whiten")
              if num_whiten else np.zeros(0, dtype=np.int64))
    db_labels = train_labels[database]
    members = {int(c): np.flatnonzero(db_labels == c).tolist() for c in np.unique(db_labels)}
    gnd = [{"ok": members.get(int(test_labels[q]), []), "junk": []} for q in queries]
    return RetrievalSet(
        name="fashion_mnist",
        queries=[(test_paths[q], None) for q in queries],
        database=[train_paths[i] for i in database],
        ground_truth={"class": gnd},
        whiten=[train_paths[i] for i in whiten],
        query_names=[f"test/{q}" for q in queries],
        database_names=[f"train/{i}" for i in database],
        indices={"queries": {"split": "test", "rows": queries.tolist(),
                             "labels": test_labels[queries].tolist()},
                 "database": {"split": "train", "rows": database.tolist(), "labels": db_labels.tolist()},
                 "whiten": {"split": "train", "rows": whiten.tolist()}, "seed": seed})


def load_revisited_ground_truth(root: PathLike, dataset: str, *, allow_pickle: bool = False) -> Dict[str, Any]:
    """Read ``gnd_<dataset>.json``, or ``gnd_<dataset>.pkl`` when ``allow_pickle`` is set.

    Args:
        root: the set's directory.
        dataset: e.g. ``"roxford5k"``.
        allow_pickle: permit unpickling the ``.pkl`` file (it can run arbitrary code: trust it first).

    Returns:
        The dict with ``imlist``, ``qimlist`` and ``gnd``.

    Raises:
        FileNotFoundError: neither file exists.
        ValueError: only the ``.pkl`` exists and ``allow_pickle`` is False, or the content is
            malformed (missing keys, ids out of range, lengths that differ).
    """
    root = Path(root)
    json_path, pkl_path = root / f"gnd_{dataset}.json", root / f"gnd_{dataset}.pkl"
    if json_path.is_file():
        data = json.loads(json_path.read_text())
    elif pkl_path.is_file():
        if not allow_pickle:
            raise ValueError(f"{pkl_path} is a pickle: loading it can execute arbitrary code. Convert it to "
                             f"{json_path.name} (same structure), or pass allow_pickle=True "
                             "(--allow-pickle) if you trust the file")
        with open(pkl_path, "rb") as fh:
            data = pickle.load(fh)  # nosec B301 - explicitly allowed by the caller
    else:
        raise FileNotFoundError(f"no ground truth in {root}: expected {json_path.name} (or {pkl_path.name} "
                                "with --allow-pickle)")
    _check_revisited(data, json_path if json_path.is_file() else pkl_path)
    return data


def _check_revisited(data: Any, path: Path) -> None:
    if not isinstance(data, dict) or not all(k in data for k in ("imlist", "qimlist", "gnd")):
        raise ValueError(f"{path}: ground truth must be a dict with 'imlist', 'qimlist' and 'gnd'")
    if len(data["gnd"]) != len(data["qimlist"]):
        raise ValueError(f"{path}: {len(data['qimlist'])} queries in qimlist but {len(data['gnd'])} gnd entries")
    size = len(data["imlist"])
    for q, gnd in enumerate(data["gnd"]):
        for key in ("easy", "hard", "junk"):
            ids = list(gnd.get(key, []))
            if any(not 0 <= int(i) < size for i in ids):
                raise ValueError(f"{path}: gnd[{q}]['{key}'] holds ids outside [0, {size}) (imlist)")


def list_images(directory: PathLike) -> List[Path]:
    """Image files (jpg, jpeg, png) of ``directory/jpg`` if it exists, else of ``directory``, sorted."""
    root = Path(directory)
    root = root / "jpg" if (root / "jpg").is_dir() else root
    if not root.is_dir():
        raise FileNotFoundError(f"image directory {root} does not exist")
    return sorted(p for p in root.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)


def build_revisited_set(root: PathLike, dataset: str, *, allow_pickle: bool = False,
                        whiten_root: Optional[PathLike] = None, num_whiten: int = 5000) -> RetrievalSet:
    """A set in the revisited Oxford/Paris layout, with the easy/medium/hard protocols.

    Args:
        root: directory with ``jpg/`` and ``gnd_<dataset>.json`` (or ``.pkl``).
        dataset: the ground-truth file's dataset name, e.g. ``"roxford5k"``.
        allow_pickle: see :func:`load_revisited_ground_truth`.
        whiten_root: another image set (its ``jpg/`` or the directory itself) to fit PCA
            whitening on, e.g. rParis6k for rOxford5k; None = no whitening images.
        num_whiten: at most this many whitening images (the first in name order).

    Returns:
        A :class:`RetrievalSet` with protocols ``"easy"``, ``"medium"``, ``"hard"``.

    Raises:
        FileNotFoundError: ground truth or an image file missing.
        ValueError: see :func:`load_revisited_ground_truth`; ``whiten_root`` is ``root``.
    """
    root = Path(root)
    data = load_revisited_ground_truth(root, dataset, allow_pickle=allow_pickle)
    image_dir = root / "jpg"
    database = [image_dir / f"{n}.jpg" for n in data["imlist"]]
    queries = [(image_dir / f"{n}.jpg", _bbox(g.get("bbx"))) for n, g in zip(data["qimlist"], data["gnd"])]
    missing = [p for p in database + [q for q, _ in queries] if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images of {dataset} are missing, e.g. {missing[0]}")
    whiten: List[Path] = []
    if whiten_root is not None:
        if Path(whiten_root).resolve() == root.resolve():
            raise ValueError("whiten_root must be a different image set than the benchmark's own "
                             "(whitening on the database would leak test data)")
        whiten = list_images(whiten_root)[:num_whiten]
    gnd = {p: _protocol(data["gnd"], p) for p in PROTOCOLS}
    return RetrievalSet(name=dataset, queries=queries, database=database, ground_truth=gnd,
                        whiten=whiten, query_names=list(data["qimlist"]),
                        database_names=list(data["imlist"]),
                        indices={"whiten": [p.name for p in whiten]})


def _protocol(gnd: Sequence[Dict[str, Any]], protocol: str) -> List[Dict[str, List[int]]]:
    from sslcore.benchmarks.retrieval_metrics import protocol_ground_truth

    full = [{"easy": g.get("easy", []), "hard": g.get("hard", []), "junk": g.get("junk", [])} for g in gnd]
    return protocol_ground_truth(full, protocol)


def _bbox(value: Any) -> BBox:
    if value is None or len(value) == 0:
        return None
    if len(value) != 4:
        raise ValueError(f"bbx must be [x1, y1, x2, y2], got {list(value)}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def load_image(path: PathLike, bbox: BBox = None, image_size: int = 0) -> Image.Image:
    """Read an image as RGB, crop it to ``bbox``, and resize its longer side to ``image_size``.

    Args:
        path: image file.
        bbox: ``(x1, y1, x2, y2)`` pixels, or None for the whole image.
        image_size: longer side in pixels after resizing (aspect kept); 0 keeps the size.

    Returns:
        A PIL RGB image.

    Raises:
        ValueError: an empty crop box.
    """
    with Image.open(path) as img:
        img = img.convert("RGB")
    if bbox is not None:
        x1, y1, x2, y2 = bbox
        if not (x2 > x1 and y2 > y1):
            raise ValueError(f"{path}: empty crop box {bbox}")
        img = img.crop((int(round(x1)), int(round(y1)), int(round(x2)), int(round(y2))))
    if image_size and max(img.size) != image_size:
        scale = image_size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.BILINEAR)
    return img
