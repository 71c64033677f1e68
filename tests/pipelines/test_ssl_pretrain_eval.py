"""Every pipeline compiles into a valid PipelineSpec that matches its checked-in golden YAML;
ssl_pretrain_eval has the documented tasks, dependencies, wiring, parameters and outputs."""

from pathlib import Path
from typing import Any, Dict

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components import DEFAULT_EXTRACT_CONFIG, DEFAULT_PRETRAIN_CONFIG, SSLCORE_IMAGE
from pipelines import runner


def _compile(name: str, tmp_path: Path) -> str:
    return runner.compile_pipeline(name, tmp_path / f"{name}.yaml").read_text()


def _parse(text: str) -> pipeline_spec_pb2.PipelineSpec:
    spec = pipeline_spec_pb2.PipelineSpec()
    json_format.ParseDict(yaml.safe_load(text), spec)  # raises on any unknown field
    return spec


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> pipeline_spec_pb2.PipelineSpec:
    return _parse(_compile("ssl_pretrain_eval", tmp_path_factory.mktemp("compiled")))


@pytest.fixture(scope="module")
def tasks(spec) -> Dict[str, Any]:
    """Root DAG tasks keyed by display name."""
    return {task.task_info.name: task for task in spec.root.dag.tasks.values()}


def _display(spec, key: str) -> str:
    return spec.root.dag.tasks[key].task_info.name


@pytest.mark.parametrize("name", list(runner.PIPELINES))
def test_pipeline_compiles_to_a_valid_pipeline_spec(name, tmp_path):
    spec = _parse(_compile(name, tmp_path))
    assert spec.pipeline_info.name
    assert spec.root.dag.tasks
    for executor in spec.deployment_spec["executors"].values():
        assert executor["container"]["image"] == SSLCORE_IMAGE


@pytest.mark.parametrize("name", list(runner.PIPELINES))
def test_checked_in_yaml_equals_a_fresh_compile(name, tmp_path):
    golden = runner.yaml_path(name)
    assert golden.is_file(), f"{golden} is missing: run `sslcore pipelines compile`"
    fresh = _compile(name, tmp_path)
    assert runner.strip_versions(golden.read_text()) == runner.strip_versions(fresh), (
        f"{golden} is stale: run `sslcore pipelines compile` and commit the result")


def test_strip_versions_hides_only_the_sdk_version():
    text = "a: 1\nsdkVersion: kfp-2.17.0\n"
    assert runner.strip_versions(text) == runner.strip_versions("a: 1\nsdkVersion: kfp-9.9.9\n")
    assert runner.strip_versions(text) != runner.strip_versions("a: 2\nsdkVersion: kfp-2.17.0\n")


def test_tasks_and_dependencies(spec, tasks):
    dependencies = {name: sorted(_display(spec, d) for d in task.dependent_tasks)
                    for name, task in tasks.items()}
    benchmarks = [f"{b} ({m})" for m in ("pretrained", "random_init", "raw_pixels")
                  for b in ("knn", "linear")]
    expected = {
        "data copy": [],
        "pretrain": ["data copy"],
        "extract features (pretrained)": ["data copy", "pretrain"],
        "extract features (random_init)": ["data copy"],
        "extract features (raw_pixels)": ["data copy"],
        **{f"{b} ({m})": [f"extract features ({m})"]
           for m in ("pretrained", "random_init", "raw_pixels") for b in ("knn", "linear")},
        "report": sorted(benchmarks + ["pretrain"]),
    }
    assert dependencies == expected


def _component(spec, task) -> pipeline_spec_pb2.ComponentSpec:
    return spec.components[task.component_ref.name]


def test_each_task_runs_the_intended_component(spec, tasks):
    for name, task in tasks.items():
        label = _component(spec, task).executor_label
        function = spec.deployment_spec["executors"][label]["container"]["args"][-1]
        stage = {"data copy": "data_copy", "extract features": "extract_features"}.get(
            name.split(" (")[0], name.split(" (")[0])
        assert function == stage, name


def test_extract_sources_and_checkpoint_wiring(tasks):
    for model, source in (("pretrained", "checkpoint"), ("random_init", "random_init"),
                          ("raw_pixels", "raw_pixels")):
        task = tasks[f"extract features ({model})"]
        assert task.inputs.parameters["source"].runtime_value.constant.string_value == source
        has_checkpoint = "checkpoint" in task.inputs.artifacts
        assert has_checkpoint == (source == "checkpoint"), model
    ckpt = tasks["extract features (pretrained)"].inputs.artifacts["checkpoint"]
    assert ckpt.task_output_artifact.output_artifact_key == "model"


def test_benchmarks_read_the_right_layer(tasks):
    for model, layer in (("pretrained", "res5avg"), ("random_init", "res5avg"),
                         ("raw_pixels", "pixels")):
        for bench in ("knn", "linear"):
            params = tasks[f"{bench} ({model})"].inputs.parameters
            assert params["layer"].runtime_value.constant.string_value == layer


def test_pipeline_parameters_reach_their_tasks(tasks):
    def source_of(task_name, input_name):
        return tasks[task_name].inputs.parameters[input_name].component_input_parameter

    assert source_of("data copy", "source") == "dataset_source"
    assert source_of("data copy", "limit_train") == "limit_train"
    assert source_of("data copy", "limit_test") == "limit_test"
    assert source_of("pretrain", "config") == "pretrain_config"
    assert source_of("pretrain", "overrides") == "extra_overrides"
    for model in ("pretrained", "random_init"):
        assert source_of(f"extract features ({model})", "config") == "extract_config"
        assert source_of(f"extract features ({model})", "overrides") == "extra_overrides"
    for model in ("pretrained", "random_init", "raw_pixels"):
        assert source_of(f"linear ({model})", "epochs") == "linear_epochs"


def test_pipeline_parameters_and_defaults(spec):
    params = spec.root.input_definitions.parameters
    defaults = {name: json_format.MessageToDict(p.default_value) for name, p in params.items()}
    assert defaults == {"dataset_source": "fashion_mnist", "limit_train": 0.0, "limit_test": 0.0,
                        "pretrain_config": DEFAULT_PRETRAIN_CONFIG,
                        "extract_config": DEFAULT_EXTRACT_CONFIG, "extra_overrides": [],
                        "linear_epochs": 0.0}
    types = pipeline_spec_pb2.ParameterType
    assert params["extra_overrides"].parameter_type == types.LIST
    assert params["limit_train"].parameter_type == types.NUMBER_INTEGER


def test_pipeline_returns_the_report_summary_and_html(spec):
    outputs = spec.root.output_definitions.artifacts
    assert outputs["summary"].artifact_type.schema_title == "system.Artifact"
    assert outputs["report"].artifact_type.schema_title == "system.HTML"
    selectors = spec.root.dag.outputs.artifacts
    assert _display(spec, selectors["report"].artifact_selectors[0].producer_subtask) == "report"
    assert selectors["report"].artifact_selectors[0].output_artifact_key == "html"
    assert selectors["summary"].artifact_selectors[0].output_artifact_key == "summary"


def test_report_receives_all_six_metrics_and_the_checkpoint(spec, tasks):
    artifacts = tasks["report"].inputs.artifacts
    for model in ("pretrained", "random_init", "raw_pixels"):
        for bench in ("knn", "linear"):
            producer = artifacts[f"{model}_{bench}"].task_output_artifact
            assert _display(spec, producer.producer_task) == f"{bench} ({model})"
            assert producer.output_artifact_key == "metrics"
    assert _display(spec, artifacts["checkpoint"].task_output_artifact.producer_task) == "pretrain"


def _resolve(recipe, tmp_path, *overrides):
    """The config the pipeline's engine run gets (extraction recipes by the extraction engine)."""
    from sslcore.engine.launcher import resolve

    engine = "train" if recipe == DEFAULT_PRETRAIN_CONFIG else "extract_features"
    return resolve([f"config={recipe}", *overrides, f"config.CHECKPOINT.DIR={tmp_path}"], engine)


def test_default_extraction_recipe_reads_every_image_unaugmented_with_class_labels(tmp_path):
    cfg = _resolve(DEFAULT_EXTRACT_CONFIG, tmp_path,
                   "config.MODEL.FEATURE_EVAL_SETTINGS.EVAL_MODE_ON=true",
                   "config.MODEL.FEATURE_EVAL_SETTINGS.EXTRACT_TRUNK_FEATURES_ONLY=true")
    for split in ("TRAIN", "TEST"):
        data = cfg.DATA[split]
        assert (data.LABEL_TYPE, data.DATA_LIMIT, data.DROP_LAST) == ("standard", -1, False)
        names = {t["name"] for t in data.TRANSFORMS}
        assert not {"ImgReplicatePil", "RandomResizedCrop", "ImgPilColorDistortion"} & names


def test_default_recipes_build_the_same_trunk_with_the_same_input_normalisation(tmp_path):
    overrides = ["config.MODEL.TRUNK.RESNETS.WIDTH_MULTIPLIER=0.125"]  # reaches both
    for extra in ([], overrides):
        pretrain = _resolve(DEFAULT_PRETRAIN_CONFIG, tmp_path, *extra)
        extract = _resolve(DEFAULT_EXTRACT_CONFIG, tmp_path, *extra)
        assert extract.MODEL.TRUNK == pretrain.MODEL.TRUNK

    def normalize(transforms):
        return [dict(t) for t in transforms if t["name"] == "Normalize"]

    pretrain = _resolve(DEFAULT_PRETRAIN_CONFIG, tmp_path)
    extract = _resolve(DEFAULT_EXTRACT_CONFIG, tmp_path)
    assert normalize(extract.DATA.TRAIN.TRANSFORMS) == normalize(pretrain.DATA.TRAIN.TRANSFORMS)
    assert normalize(extract.DATA.TEST.TRANSFORMS) == normalize(pretrain.DATA.TRAIN.TRANSFORMS)
