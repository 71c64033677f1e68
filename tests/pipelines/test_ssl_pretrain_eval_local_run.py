"""ssl_pretrain_eval end to end on a small Fashion-MNIST subset, through kfp.local's
SubprocessRunner(use_venv=False), exactly as `sslcore pipelines run` does it: every component
body runs as a subprocess of this environment with the real sslcore calls."""

import json
from pathlib import Path

import pytest

from pipelines import runner

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")

# the default recipe's thin trunk, one short epoch, small scenes and retrieval sets, a few
# detection steps: the point is the wiring, not the accuracy
SMALL_RUN = [
    "limit_train=512",
    "limit_test=256",
    "linear_epochs=5",
    "extra_overrides=config.OPTIMIZER.num_epochs=1",
    "extra_overrides=config.DATA.NUM_DATALOADER_WORKERS=0",
    "scenes_limit_train=200",
    "scenes_limit_test=100",
    "low_shot_k_values=[1, 2]",
    "detection_iterations=2",
    "retrieval_queries=50",
    "retrieval_database=200",
]
MODELS = ("pretrained", "random init", "raw pixels")
# run by default: the feature benchmarks for all three, the trunk ones for the two trunks
EXPECTED = sorted([(m, b) for m in MODELS for b in ("knn", "linear")]
                  + [(m, b) for m in MODELS[:2] for b in ("svm", "low_shot", "detection", "retrieval")])


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not FASHION_MNIST.exists(),
                    reason="needs the Debian package dataset-fashion-mnist (`make data`)")
def test_small_local_run_writes_report_and_metrics(tmp_path, capsys):
    argv = ["run", "ssl_pretrain_eval", "--run-dir", str(tmp_path)]
    for pair in SMALL_RUN:
        argv += ["--param", pair]
    assert runner.main(argv) == 0
    printed = capsys.readouterr().out

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["pipeline"] == "ssl_pretrain_eval"
    assert results["parameters"]["limit_train"] == 512

    report = Path(results["report_html"])
    assert report == tmp_path / "report.html"
    assert "<html" in report.read_text().lower()
    assert Path(results["outputs"]["report"]).is_file()
    assert f"HTML report: {report}" in printed
    assert results["table"] and results["table"] in printed

    rows = results["rows"]
    assert sorted((r["model"], r["benchmark"]) for r in rows) == EXPECTED
    for row in rows:
        assert row["records"], row
        for record in row["records"]:
            if record["unit"] == "%":
                assert 0 <= record["value"] <= 100, (row["model"], row["benchmark"], record)
    low_shot_ks = {rec["params"]["k"] for r in rows if r["benchmark"] == "low_shot"
                   for rec in r["records"]}
    assert low_shot_ks == {1, 2}
    page = report.read_text()
    for section in ("svm: details", "low_shot: details", "detection: details",
                    "retrieval: details"):
        assert section in page
    knn_pixels = next(r for r in rows if r["model"] == "raw pixels" and r["benchmark"] == "knn")
    top1 = {(r["params"]["k"], r["params"]["T"]): r["value"]
            for r in knn_pixels["records"] if r["name"] == "top1"}
    assert set(top1) == {(200, 0.1), (20, 0.07)}
    assert min(top1.values()) > 40, "raw-pixel kNN on Fashion-MNIST is far above chance (10%)"
    linear_rows = [r for r in rows if r["benchmark"] == "linear"]
    assert all(rec["params"]["epochs"] == 5 for r in linear_rows for rec in r["records"])

    run_root = Path(results["pipeline_root"])
    # linear eval and finetune are off by default: their metrics have no records
    assert len(list(run_root.glob("*/*/metrics/metrics.json"))) == len(EXPECTED) + 2
    checkpoint_dir = next(run_root.glob("*/pretrain/model"))
    assert (checkpoint_dir / "train_config.yaml").is_file()
    assert (checkpoint_dir / "stdout.json").is_file()
    # the KFP metrics the UI shows, as the executor recorded them
    knn_outputs = [json.loads(p.read_text()) for p in run_root.glob("*/knn*/executor_output.json")]
    assert len(knn_outputs) == 3
    for output in knn_outputs:
        logged = output["artifacts"]["metrics"]["artifacts"][0]["metadata"]
        assert {"top1_k200_T0.1", "top1_k20_T0.07"} <= set(logged)
