"""``sslcore pipelines``: parameter parsing, the stale-YAML check, usage errors."""

from pathlib import Path

import pytest

from pipelines import runner
from sslcore import cli


@pytest.fixture(scope="module")
def pipeline():
    return runner.load_pipeline("ssl_pretrain_eval")


def test_params_are_typed_by_the_pipeline_declaration(pipeline):
    params = runner.parse_params(pipeline, [
        "limit_train=512", "dataset_source=/data/x=y", "linear_epochs=3",
        "extra_overrides=config.OPTIMIZER.num_epochs=1",
        "extra_overrides=config.DATA.TRAIN.TRANSFORMS=[{name: ToTensor}]",
    ])
    assert params == {
        "limit_train": 512, "dataset_source": "/data/x=y", "linear_epochs": 3,
        "extra_overrides": ["config.OPTIMIZER.num_epochs=1",
                            "config.DATA.TRAIN.TRANSFORMS=[{name: ToTensor}]"],
    }


def test_list_param_accepts_a_json_list(pipeline):
    params = runner.parse_params(pipeline, ['extra_overrides=["config.A=1", "config.B=2"]'])
    assert params == {"extra_overrides": ["config.A=1", "config.B=2"]}


@pytest.mark.parametrize("pair, message", [
    ("limit_train", "KEY=VALUE"),
    ("epochs=3", "no such parameter.*linear_epochs"),
    ("limit_train=many", "expected integer"),
])
def test_bad_params_are_usage_errors(pipeline, pair, message):
    with pytest.raises(runner.UsageError, match=message):
        runner.parse_params(pipeline, [pair])


def test_unknown_pipeline_suggests_close_names(capsys):
    assert runner.main(["run", "ssl_pretrain_evl"]) == 2
    assert "Did you mean ssl_pretrain_eval" in capsys.readouterr().err


def test_compile_check_passes_on_the_checked_in_yaml(capsys):
    assert runner.main(["compile", "--check"]) == 0


def test_compile_check_fails_on_a_stale_yaml_and_compile_fixes_it(tmp_path, monkeypatch, capsys):
    targets = {name: tmp_path / f"{name}.yaml" for name in runner.PIPELINES}
    for target in targets.values():
        target.write_text("stale: true\n")
    monkeypatch.setattr(runner, "yaml_path", lambda name: targets[name])
    assert runner.main(["compile", "--check"]) == 1
    err = capsys.readouterr().err
    assert all(str(target) in err for target in targets.values())
    assert runner.main(["compile"]) == 0
    assert runner.main(["compile", "--check"]) == 0
    for name, target in targets.items():
        golden = Path(runner.__file__).parent / f"{name}.yaml"
        assert runner.strip_versions(target.read_text()) == runner.strip_versions(golden.read_text())


def test_sslcore_cli_delegates_to_the_runner(capsys):
    assert cli.main(["pipelines", "compile", "--check"]) == 0
    assert cli.main(["pipelines", "list"]) == 0
    assert "ssl_pretrain_eval" in capsys.readouterr().out


def test_defaults_are_typed_like_params(pipeline):
    defaults = runner.pipeline_defaults(pipeline)
    assert defaults["limit_train"] == 0 and isinstance(defaults["limit_train"], int)
    assert defaults["dataset_source"] == "fashion_mnist"
    assert defaults["extra_overrides"] == []


def test_compile_for_another_registry_swaps_only_the_image(tmp_path, capsys):
    from components import SSLCORE_IMAGE

    assert runner.main(["compile", "--image", "registry.example.com/ml/sslcore:1.2",
                        "--out-dir", str(tmp_path)]) == 0
    for name in runner.PIPELINES:
        text = (tmp_path / f"{name}.yaml").read_text()
        golden = runner.yaml_path(name).read_text()
        assert SSLCORE_IMAGE not in text and "registry.example.com/ml/sslcore:1.2" in text
        assert runner.strip_versions(text).replace("registry.example.com/ml/sslcore:1.2",
                                                   SSLCORE_IMAGE) == runner.strip_versions(golden)
    assert runner.main(["compile", "--image", "sslcore", "--out-dir", str(tmp_path)]) == 2
    assert "tagged image" in capsys.readouterr().err
