"""The labelme-examples photos (Debian package ``labelme-examples``) copied into a test directory."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest

LABELME_EXAMPLES = Path("/usr/share/doc/labelme-examples/examples")


def copy_labelme_examples(dest: Path) -> Path:
    """Copy the examples to ``dest`` and gunzip any ``*.gz`` there (Debian may compress docs).

    Fails (never skips) when the package is missing: the loaders' only real-photo tests need it.
    """
    if not LABELME_EXAMPLES.is_dir():
        pytest.fail(f"{LABELME_EXAMPLES} not found: install the real annotated photos with "
                    "`sudo apt-get install labelme-examples` (or `make data`)")
    root = dest / "examples"
    shutil.copytree(LABELME_EXAMPLES, root)
    for packed in root.rglob("*.gz"):
        with gzip.open(packed, "rb") as src, open(packed.with_suffix(""), "wb") as out:
            shutil.copyfileobj(src, out)
        packed.unlink()
    return root


def labelme_class_names(dataset_dir: Path) -> list:
    """``class_names.txt`` of a labelme export: line k is class id k (0 = ``_background_``)."""
    return [line.strip() for line in (dataset_dir / "class_names.txt").read_text().splitlines() if line.strip()]
