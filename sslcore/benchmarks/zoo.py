"""The method table: every pretraining method, the same budget, one kNN protocol, two baselines.

For each method ``m`` the recipe ``pretrain/<m>/<m>_fashion_mnist`` trains on a class-stratified
subset of Fashion-MNIST for the same number of epochs; the trunk's res5avg features of the train
and test subsets are extracted unaugmented; the kNN benchmark (VISSL/NPID weighted vote, k=200,
T=0.1 and k=20, T=0.07) scores them. Each trunk the methods use (the thin ResNet-18 x0.125 of
most recipes, the full-width ResNet-18 of MoCo, NPID, PIRL, ...) is also scored at random init,
and raw pixels the same way, so each row reads as "how far above its own trunk's floor".

    sslcore zoo --data DIR --out DIR [--methods simclr,moco,...] [--epochs 2] [--baselines-only]

``--data`` is a dataset written by ``sslcore data prepare fashion_mnist --limit-train N``.
Results go to ``<out>/zoo.json`` and a Markdown table to ``<out>/zoo.md``; a method that fails is
reported with its error and the others still run.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import yaml

log = logging.getLogger(__name__)

EXTRACT_RECIPE = "feature_extraction/extract_resnet_fashion_mnist"
# methods with a <m>/<m>_fashion_mnist recipe, in the README's order
METHODS = ("simclr", "multicrop_simclr", "moco", "swav", "swav_momentum", "deepclusterv2", "npid",
           "pirl", "rotnet", "jigsaw", "supervised", "byol", "simsiam", "barlow_twins", "vicreg",
           "dino")
# recipes that do not follow the <m>/<m>_fashion_mnist pattern
RECIPES = {"simclr": "pretrain/simclr/simclr_fashion_mnist_cpu",
           "multicrop_simclr": "pretrain/simclr/multicrop_simclr_fashion_mnist"}


def recipe_for(method: str) -> str:
    """The Fashion-MNIST recipe of ``method`` (``sslcore/config/<name>.yaml``)."""
    return RECIPES.get(method, f"pretrain/{method}/{method}_fashion_mnist")


def _data_overrides(data: Path, splits: Sequence[str]) -> List[str]:
    out = []
    for split in splits:
        prefix = data / split.lower()
        out += [f"config.DATA.{split}.DATA_SOURCES=[disk_filelist]",
                f"config.DATA.{split}.DATA_PATHS=[{prefix}_images.npy]",
                f"config.DATA.{split}.LABEL_SOURCES=[disk_filelist]",
                f"config.DATA.{split}.LABEL_PATHS=[{prefix}_labels.npy]"]
    return out


def _flow(value: Any) -> str:
    """A config subtree as one Hydra override value (YAML flow style)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()


def _scale_milestones(node: Any, factor: float, epochs: int) -> bool:
    """Scale every ``milestones`` list in a scheduler tree in place; True when one changed."""
    changed = False
    if isinstance(node, dict):
        if "milestones" in node:
            scaled = sorted({min(max(1, int(m * factor)), epochs - 1) for m in node["milestones"]})
            if scaled != list(node["milestones"]):
                node["milestones"] = scaled
                node["values"] = list(node["values"])[: len(scaled) + 1]
                changed = True
        changed |= any([_scale_milestones(v, factor, epochs) for v in node.values()])
    elif isinstance(node, list):
        changed |= any([_scale_milestones(v, factor, epochs) for v in node])
    return changed


def schedule_overrides(recipe: str, epochs: int) -> List[str]:
    """Overrides that compress a recipe's step-decay milestones into an ``epochs`` budget.

    A multistep schedule written for the recipe's ``num_epochs`` (e.g. NPID's decays at epochs
    30 and 40 of 50) cannot run for fewer epochs than its milestones; each milestone m becomes
    ``int(m * epochs / num_epochs)``, kept in [1, epochs - 1] and made unique (dropping the
    values of merged steps), so the decays keep their relative place in the shorter run.
    Cosine, linear and constant schedules scale themselves and need nothing.

    Returns:
        ``[]``, or one override of ``config.OPTIMIZER.param_schedulers.lr``.
    """
    from omegaconf import OmegaConf

    from sslcore.config.loader import compose_config

    optimizer = compose_config([f"config={recipe}"]).OPTIMIZER
    lr = OmegaConf.to_container(optimizer.param_schedulers.lr)
    if epochs < 2 or epochs >= int(optimizer.num_epochs):
        return []
    if not _scale_milestones(lr, epochs / int(optimizer.num_epochs), epochs):
        return []
    return [f"config.OPTIMIZER.param_schedulers.lr={_flow(lr)}"]


def _knn(features: Path, out: Path, layer: str) -> Dict[str, float]:
    from sslcore.benchmarks.knn import run_knn_benchmark

    metrics = run_knn_benchmark(features, out, layer=layer)
    return {f"k{r['params']['k']}_T{r['params']['T']}": r["value"]
            for r in metrics["records"] if r["name"] == "top1"}


def _extract(data: Path, out: Path, trunk: Optional[Dict[str, Any]], weights: str,
             workers: int) -> Path:
    from sslcore.engine.launcher import run_engine

    overrides = [f"config={EXTRACT_RECIPE}", *_data_overrides(data, ("TRAIN", "TEST")),
                 f"config.DATA.NUM_DATALOADER_WORKERS={workers}", "config.MACHINE.DEVICE=cpu",
                 f"config.MODEL.WEIGHTS_INIT.PARAMS_FILE={weights}",
                 f"config.EXTRACT_FEATURES.OUTPUT_DIR={out}", f"config.CHECKPOINT.DIR={out}"]
    if trunk is not None:
        overrides.append(f"config.MODEL.TRUNK={_flow(trunk)}")
    run_engine(overrides, "extract_features")
    return out


def _recipe_trunk(recipe: str) -> Dict[str, Any]:
    from omegaconf import OmegaConf

    from sslcore.config.loader import compose_config

    return OmegaConf.to_container(compose_config([f"config={recipe}"]).MODEL.TRUNK, resolve=True)


def trunk_of(method: str) -> Dict[str, Any]:
    """``MODEL.TRUNK`` of ``method``'s Fashion-MNIST recipe (composed, not trained)."""
    return _recipe_trunk(recipe_for(method))


def trunk_label(trunk: Dict[str, Any]) -> str:
    """A short name of a trunk config, e.g. ``ResNet-18 x0.125`` or ``ResNet-50``."""
    if trunk.get("NAME") != "resnet":
        return str(trunk.get("NAME"))
    resnet = trunk.get("RESNETS", {})
    width = float(resnet.get("WIDTH_MULTIPLIER", 1))
    return f"ResNet-{resnet.get('DEPTH', 50)}" + ("" if width == 1 else f" x{width:g}")


def run_method(method: str, data: Path, out: Path, *, epochs: int, workers: int = 0,
               device: str = "cpu", extra: Sequence[str] = ()) -> Dict[str, Any]:
    """Pretrain ``method`` on ``data``, extract res5avg features and run kNN.

    Returns:
        ``{"method", "recipe", "trunk", "epochs", "train_seconds", "final_loss",
        "top1": {setting: %}}`` (``trunk``: :func:`trunk_label`).

    Raises:
        Whatever training or extraction raises (the caller records it).
    """
    import torch

    from sslcore.engine.launcher import run_engine

    run_dir = out / method
    start = time.monotonic()
    final = run_engine([f"config={recipe_for(method)}", *_data_overrides(data, ("TRAIN",)),
                        f"config.OPTIMIZER.num_epochs={epochs}", f"config.MACHINE.DEVICE={device}",
                        f"config.DATA.NUM_DATALOADER_WORKERS={workers}",
                        "config.DATA.TRAIN.DATA_LIMIT=-1",
                        "config.HOOKS.TENSORBOARD_SETUP.USE_TENSORBOARD=false",
                        f"config.CHECKPOINT.DIR={run_dir / 'train'}",
                        *schedule_overrides(recipe_for(method), epochs), *extra])
    seconds = time.monotonic() - start
    trunk = torch.load(final, map_location="cpu", weights_only=True)["config"]["MODEL"]["TRUNK"]
    log_lines = (run_dir / "train" / "stdout.json").read_text().splitlines()
    features = _extract(data, run_dir / "features", trunk, str(final), workers)
    return {"method": method, "recipe": recipe_for(method), "trunk": trunk_label(trunk), "epochs": epochs,
            "train_seconds": round(seconds, 1),
            "final_loss": json.loads(log_lines[-1])["loss"] if log_lines else None,
            "top1": _knn(features, run_dir / "knn", "res5avg")}


def run_baselines(data: Path, out: Path, trunks: Sequence[Dict[str, Any]], *,
                  workers: int = 0) -> List[Dict[str, Any]]:
    """kNN of each distinct trunk in ``trunks`` at random init, and of raw pixels, on ``data``."""
    from sslcore.engine.extract import extract_raw_pixel_features

    rows = []
    distinct = {trunk_label(t): t for t in trunks}
    for label, trunk in distinct.items():
        slug = label.lower().replace(" ", "_").replace(".", "")
        features = _extract(data, out / "random_init" / slug / "features", trunk, "", workers)
        rows.append({"method": "random init (baseline)", "trunk": label, "epochs": 0,
                     "top1": _knn(features, out / "random_init" / slug / "knn", "res5avg")})
    pixels = extract_raw_pixel_features(data, out / "raw_pixels" / "features")
    rows.append({"method": "raw pixels (baseline)", "trunk": "", "epochs": 0,
                 "top1": _knn(pixels, out / "raw_pixels" / "knn", "pixels")})
    return rows


def format_zoo_table(rows: Sequence[Dict[str, Any]], *, note: str) -> str:
    """A Markdown table: method, trunk, epochs, kNN top-1 at both settings, train time, final loss."""
    lines = [note, "",
             "| method | trunk | epochs | kNN top-1 (k=200, T=0.1) | kNN top-1 (k=20, T=0.07) | "
             "train s | final loss |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['method']} | {row.get('trunk', '')} | {row.get('epochs', '')} | "
                         f"failed: {row['error'].splitlines()[0][:80]} | | | |")
            continue
        top1 = row["top1"]
        loss = row.get("final_loss")
        lines.append(
            f"| {row['method']} | {row.get('trunk', '')} | {row['epochs']} | "
            f"{top1.get('k200_T0.1', float('nan')):.2f} | "
            f"{top1.get('k20_T0.07', float('nan')):.2f} | {row.get('train_seconds', '')} | "
            f"{'' if loss is None else f'{loss:.3f}'} |")
    return "\n".join(lines) + "\n"


def run_zoo(data: Path, out: Path, *, methods: Sequence[str] = METHODS, epochs: int = 2,
            workers: int = 0, device: str = "cpu", baselines_only: bool = False) -> List[Dict[str, Any]]:
    """Run every method and the baselines; write ``zoo.json`` and ``zoo.md`` under ``out``.

    ``baselines_only`` skips training: only the methods' trunks at random init and raw pixels.

    Raises:
        FileNotFoundError: ``data`` has no disk_filelist files.
    """
    data, out = Path(data), Path(out)
    if not (data / "train_images.npy").exists():
        raise FileNotFoundError(f"{data} has no train_images.npy: run `sslcore data prepare "
                                "fashion_mnist --out DIR --limit-train N --limit-test M` first")
    out.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    for method in [] if baselines_only else methods:
        log.info("zoo: %s", method)
        try:
            rows.append(run_method(method, data, out, epochs=epochs, workers=workers, device=device))
        except Exception as exc:  # one broken method must not hide the others' numbers
            log.error("zoo: %s failed:\n%s", method, traceback.format_exc())
            rows.append({"method": method, "epochs": epochs, "error": f"{type(exc).__name__}: {exc}"})
        (out / "zoo.json").write_text(json.dumps(rows, indent=2) + "\n")
    trunks = []
    for method in methods:
        try:
            trunks.append(trunk_of(method))
        except Exception:  # an unknown method is already reported in its row
            log.warning("zoo: no recipe for %s, so no random-init baseline for its trunk", method)
    rows += run_baselines(data, out, trunks or [_recipe_trunk(EXTRACT_RECIPE)], workers=workers)
    from sslcore.data.manifest import MANIFEST_NAME, read_manifest

    manifest = read_manifest(data) if (data / MANIFEST_NAME).exists() else {}
    sizes = {s: v.get("num_images") for s, v in manifest.get("splits", {}).items()}
    note = (f"Fashion-MNIST subset (train {sizes.get('train', '?')}, test {sizes.get('test', '?')} "
            f"images), {epochs} epochs per method on {device.upper()}, each method's "
            "<m>_fashion_mnist recipe; kNN on res5avg features (VISSL/NPID weighted vote).")
    (out / "zoo.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "zoo.md").write_text(format_zoo_table(rows, note=note))
    return rows
