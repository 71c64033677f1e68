"""A benchmark switched off by its pipeline parameter writes an empty metrics.json and reads nothing."""

from pathlib import Path

import pytest
from kfp import dsl

from components.detection import detection
from components.finetune import finetune
from components.linear_eval import linear_eval
from components.low_shot import low_shot
from components.retrieval import retrieval
from components.svm import svm
from sslcore.benchmarks.metrics import read_metrics

# the first input of each: an artifact whose directory does not exist, so any read would fail
SWITCHABLE = {svm: ("features", "svm"), low_shot: ("features", "low_shot"),
              detection: ("dataset", "detection"), retrieval: ("dataset", "retrieval"),
              linear_eval: ("dataset", "linear_eval"), finetune: ("dataset", "finetune")}


@pytest.mark.parametrize("component", list(SWITCHABLE), ids=lambda c: c.name)
def test_switched_off_writes_no_records_and_touches_no_input(component, tmp_path):
    input_name, benchmark = SWITCHABLE[component]
    missing = dsl.Artifact(name=input_name, uri=str(tmp_path / "does-not-exist"), metadata={})
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata={})
    component.python_func(**{input_name: missing}, metrics=metrics, enabled=False)
    written = read_metrics(tmp_path / "metrics")
    assert written["benchmark"] == benchmark and written["records"] == []
    assert "enabled=False" in written["skipped"]
    assert not Path(missing.path).exists()
