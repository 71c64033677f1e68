"""import_checkpoint: a checkpoint from a path or from a real S3 server on loopback becomes a Model."""

from pathlib import Path

import pytest
from kfp import dsl

from components.import_checkpoint import import_checkpoint
from sslcore import storage


def _model(path: Path) -> dsl.Model:
    return dsl.Model(name="model", uri=str(path), metadata={})


def _run_dir(root: Path, with_companions: bool) -> Path:
    root.mkdir(parents=True)
    (root / "model_final_checkpoint_phase1.torch").write_bytes(b"weights")
    if with_companions:
        (root / "stdout.json").write_text('{"iteration": 1, "loss": 2.0}\n')
        (root / "train_config.yaml").write_text("config: {}\n")
    return root / "model_final_checkpoint_phase1.torch"


@pytest.mark.parametrize("with_companions", [True, False])
def test_a_local_checkpoint_and_what_sits_beside_it(tmp_path, with_companions):
    source = _run_dir(tmp_path / "run", with_companions)
    model = _model(tmp_path / "model")
    import_checkpoint.python_func(checkpoint_uri=str(source), model=model)
    names = sorted(p.name for p in Path(model.path).iterdir())
    expected = ["model_final_checkpoint_phase1.torch"] + (
        ["stdout.json", "train_config.yaml"] if with_companions else [])
    assert names == expected
    assert (Path(model.path) / names[0]).read_bytes() == b"weights"
    assert model.metadata == {"checkpoint_file": "model_final_checkpoint_phase1.torch",
                              "checkpoint_uri": str(source), "framework": "pytorch"}


def test_an_s3_checkpoint(s3_env, tmp_path):
    source = _run_dir(tmp_path / "run", True)
    for path in source.parent.iterdir():
        storage.upload_file(path, f"s3://runs/imported/{path.name}")
    model = _model(tmp_path / "model")
    import_checkpoint.python_func(checkpoint_uri="s3://runs/imported/" + source.name, model=model)
    assert (Path(model.path) / "train_config.yaml").read_text() == "config: {}\n"
    assert model.metadata["checkpoint_uri"] == "s3://runs/imported/" + source.name


def test_missing_or_empty_uri(tmp_path):
    with pytest.raises(ValueError, match="checkpoint_uri is empty"):
        import_checkpoint.python_func(checkpoint_uri="", model=_model(tmp_path / "m"))
    with pytest.raises(FileNotFoundError):
        import_checkpoint.python_func(checkpoint_uri=str(tmp_path / "none.torch"),
                                      model=_model(tmp_path / "m"))
