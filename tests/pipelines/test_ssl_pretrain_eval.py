"""Every pipeline compiles into a valid PipelineSpec (and kfp-kubernetes PlatformSpec) that matches
its checked-in golden YAML; ssl_pretrain_eval and ssl_benchmark have the documented tasks,
dependencies, wiring, parameters, outputs and cluster settings."""

from pathlib import Path
from typing import Any, Dict

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

from components import DEFAULT_EXTRACT_CONFIG, DEFAULT_PRETRAIN_CONFIG, SSLCORE_IMAGE
from pipelines import runner
from pipelines.cluster import DATASET_MOUNT, PIPELINE_ROOT, S3_SECRET, S3_SECRET_KEYS


def _compile(name: str, tmp_path: Path) -> str:
    return runner.compile_pipeline(name, tmp_path / f"{name}.yaml").read_text()


def _parse(text: str) -> pipeline_spec_pb2.PipelineSpec:
    return _parse_both(text)[0]


def _parse_both(text: str):
    """(PipelineSpec, PlatformSpec): the YAML's two documents, parsed strictly."""
    pipeline_doc, platform_doc = yaml.safe_load_all(text)
    spec, platform = pipeline_spec_pb2.PipelineSpec(), pipeline_spec_pb2.PlatformSpec()
    json_format.ParseDict(pipeline_doc, spec)  # raises on any unknown field
    json_format.ParseDict(platform_doc, platform)
    return spec, platform


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    return _parse_both(_compile("ssl_pretrain_eval", tmp_path_factory.mktemp("compiled")))


@pytest.fixture(scope="module")
def spec(compiled) -> pipeline_spec_pb2.PipelineSpec:
    return compiled[0]


@pytest.fixture(scope="module")
def k8s_config(compiled, spec) -> Dict[str, Dict[str, Any]]:
    """kfp-kubernetes executor configs keyed by task display name."""
    executors = json_format.MessageToDict(compiled[1])["platforms"]["kubernetes"][
        "deploymentSpec"]["executors"]
    out = {}
    for task in spec.root.dag.tasks.values():
        label = spec.components[task.component_ref.name].executor_label
        out[task.task_info.name] = executors[label]
    return out


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
    assert spec.default_pipeline_root == PIPELINE_ROOT
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


MODELS = ("pretrained", "random init", "raw pixels")
TRUNK_MODELS = MODELS[:2]
SCENE_BENCHMARKS = [f"{b} ({m})" for m in TRUNK_MODELS for b in ("svm", "low-shot")]
TRUNK_BENCHMARKS = [f"{b} ({m})" for m in TRUNK_MODELS for b in ("detection", "retrieval")] + [
    "linear eval (pretrained)", "finetune (pretrained)"]


def test_tasks_and_dependencies(spec, tasks):
    dependencies = {name: sorted(_display(spec, d) for d in task.dependent_tasks)
                    for name, task in tasks.items()}
    feature_benchmarks = [f"{b} ({m})" for m in MODELS for b in ("knn", "linear")]
    trained = ["pretrain"]
    expected = {
        "data copy": [],
        "data copy (scenes)": [],
        "pretrain": ["data copy"],
        "extract features (pretrained)": ["data copy", "pretrain"],
        "extract features (random init)": ["data copy"],
        "extract features (raw pixels)": ["data copy"],
        "extract scene features (pretrained)": ["data copy (scenes)", "pretrain"],
        "extract scene features (random init)": ["data copy (scenes)"],
        **{f"{b} ({m})": [f"extract features ({m})"] for m in MODELS for b in ("knn", "linear")},
        **{f"{b} ({m})": [f"extract scene features ({m})"]
           for m in TRUNK_MODELS for b in ("svm", "low-shot")},
        "detection (pretrained)": ["data copy (scenes)", "pretrain"],
        "detection (random init)": ["data copy (scenes)"],
        "retrieval (pretrained)": ["data copy", "pretrain"],
        "retrieval (random init)": ["data copy"],
        "linear eval (pretrained)": ["data copy", "pretrain"],
        "finetune (pretrained)": ["data copy", "pretrain"],
        "report": sorted(feature_benchmarks + SCENE_BENCHMARKS + TRUNK_BENCHMARKS + trained),
    }
    assert dependencies == expected


def _component(spec, task) -> pipeline_spec_pb2.ComponentSpec:
    return spec.components[task.component_ref.name]


def test_each_task_runs_the_intended_component(spec, tasks):
    for name, task in tasks.items():
        label = _component(spec, task).executor_label
        function = spec.deployment_spec["executors"][label]["container"]["args"][-1]
        stage = {"data copy": "data_copy", "extract features": "extract_features",
                 "extract scene features": "extract_features", "low-shot": "low_shot",
                 "linear eval": "linear_eval"}.get(name.split(" (")[0], name.split(" (")[0])
        assert function == stage, name


def test_extract_sources_and_checkpoint_wiring(tasks):
    for model, source in (("pretrained", "checkpoint"), ("random init", "random_init"),
                          ("raw pixels", "raw_pixels")):
        task = tasks[f"extract features ({model})"]
        assert task.inputs.parameters["source"].runtime_value.constant.string_value == source
        has_checkpoint = "checkpoint" in task.inputs.artifacts
        assert has_checkpoint == (source == "checkpoint"), model
    ckpt = tasks["extract features (pretrained)"].inputs.artifacts["checkpoint"]
    assert ckpt.task_output_artifact.output_artifact_key == "model"


def test_benchmarks_read_the_right_layer(tasks):
    for model, layer in (("pretrained", "res5avg"), ("random init", "res5avg"),
                         ("raw pixels", "pixels")):
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
    for model in TRUNK_MODELS:
        for extract in ("extract features", "extract scene features"):
            assert source_of(f"{extract} ({model})", "config") == "extract_config"
            assert source_of(f"{extract} ({model})", "overrides") == "extra_overrides"
        assert source_of(f"retrieval ({model})", "config") == "extract_config"
    for model in MODELS:
        assert source_of(f"linear ({model})", "epochs") == "linear_epochs"
    assert source_of("data copy (scenes)", "source") == "scenes_source"
    assert source_of("data copy (scenes)", "limit_train") == "scenes_limit_train"
    switches = {"svm": "run_svm", "low-shot": "run_low_shot", "detection": "run_detection",
                "retrieval": "run_retrieval"}
    for model in TRUNK_MODELS:
        for bench, switch in switches.items():
            assert source_of(f"{bench} ({model})", "enabled") == switch
        assert source_of(f"svm ({model})", "layers") == "svm_layers"
        assert source_of(f"low-shot ({model})", "k_values") == "low_shot_k_values"
        assert source_of(f"detection ({model})", "iterations") == "detection_iterations"
        assert source_of(f"retrieval ({model})", "descriptor") == "retrieval_descriptor"
        assert source_of(f"retrieval ({model})", "num_queries") == "retrieval_queries"
    assert source_of("linear eval (pretrained)", "enabled") == "run_linear_eval"
    assert source_of("finetune (pretrained)", "enabled") == "run_finetune"
    assert source_of("finetune (pretrained)", "mode") == "finetune_mode"
    assert source_of("finetune (pretrained)", "fraction") == "finetune_fraction"


STAGE_DEFAULTS = {
    "scenes_source": "fashion_mnist_scenes", "scenes_limit_train": 0.0, "scenes_limit_test": 0.0,
    "run_svm": True, "svm_layers": ["res5avg"], "run_low_shot": True,
    "low_shot_k_values": [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 96.0], "run_detection": True,
    "detection_iterations": 300.0, "run_retrieval": True, "retrieval_descriptor": "gem",
    "retrieval_whiten": False, "retrieval_queries": 500.0, "retrieval_database": 5000.0,
    "run_linear_eval": False, "linear_eval_epochs": 0.0, "run_finetune": False,
    "finetune_mode": "semi_supervised", "finetune_fraction": 0.1, "finetune_epochs": 0.0}


def test_pipeline_parameters_and_defaults(spec):
    params = spec.root.input_definitions.parameters
    defaults = {name: json_format.MessageToDict(p.default_value) for name, p in params.items()}
    assert defaults == {"dataset_source": "fashion_mnist", "limit_train": 0.0, "limit_test": 0.0,
                        "pretrain_config": DEFAULT_PRETRAIN_CONFIG,
                        "extract_config": DEFAULT_EXTRACT_CONFIG, "extra_overrides": [],
                        "linear_epochs": 0.0, "num_nodes": 1.0, "gpus_per_node": 1.0,
                        "pod_gpus": 0.0, "gpu_type": "nvidia.com/gpu", "checkpoint_uri": "",
                        "results_uri": "", "dataset_pvc": "sslcore-datasets",
                        "node_selector": {}, "tolerations": [], **STAGE_DEFAULTS}
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


def test_report_receives_every_benchmark_and_the_checkpoint(spec, tasks):
    artifacts = tasks["report"].inputs.artifacts
    wired = {f"{m}_{b}": f"{b} ({m})" for m in MODELS for b in ("knn", "linear")}
    wired.update({f"{m}_{b.replace('-', '_')}": f"{b} ({m})" for m in TRUNK_MODELS
                  for b in ("svm", "low-shot", "detection", "retrieval")})
    wired.update({"pretrained_linear_eval": "linear eval (pretrained)",
                  "pretrained_finetune": "finetune (pretrained)"})
    assert set(artifacts) == {key.replace(" ", "_") for key in wired} | {"checkpoint"}
    for key, task in wired.items():
        producer = artifacts[key.replace(" ", "_")].task_output_artifact
        assert _display(spec, producer.producer_task) == task
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


def test_every_task_gets_placement_and_the_s3_secret(k8s_config):
    for name, config in k8s_config.items():
        assert config["nodeSelector"] == {"nodeSelectorJson": {"componentInputParameter":
                                                               "node_selector"}}, name
        assert config["tolerations"] == [{"tolerationJson": {"componentInputParameter":
                                                             "tolerations"}}], name
        (secret,) = config["secretAsEnv"]
        assert secret["secretName"] == S3_SECRET and secret["optional"] is True
        assert {(k["secretKey"], k["envVar"]) for k in secret["keyToEnv"]} == \
            {(k, k) for k in S3_SECRET_KEYS}


def test_dataset_pvc_where_data_is_read_or_staged(k8s_config):
    for name, config in k8s_config.items():
        mounts = config.get("pvcMount", [])
        if name in ("data copy", "data copy (scenes)", "pretrain"):
            (mount,) = mounts
            assert mount["mountPath"] == DATASET_MOUNT
            assert mount["componentInputParameter"] == "dataset_pvc"
        else:
            assert mounts == [], name


def test_gpus_on_the_pods_that_run_the_trunk(spec, tasks):
    executors = json_format.MessageToDict(spec.deployment_spec)["executors"]
    for name, task in tasks.items():
        label = spec.components[task.component_ref.name].executor_label
        accelerator = executors[label]["container"].get("resources", {}).get("accelerator")
        wants_gpu = name in ("pretrain", *[f"{e} ({m})" for m in TRUNK_MODELS for e in (
            "extract features", "extract scene features")], *TRUNK_BENCHMARKS)
        assert (accelerator is not None) == wants_gpu, name
        if wants_gpu:
            assert "pipelinechannel--pod_gpus" in accelerator["resourceCount"]
            assert "pipelinechannel--gpu_type" in accelerator["resourceType"]


def test_pretrain_gets_the_multi_node_settings(tasks):
    params = tasks["pretrain"].inputs.parameters
    for name, source in (("num_nodes", "num_nodes"), ("gpus_per_node", "gpus_per_node"),
                         ("checkpoint_uri", "checkpoint_uri"), ("dataset_pvc", "dataset_pvc")):
        assert params[name].component_input_parameter == source
    assert params["dataset_mount"].runtime_value.constant.string_value == DATASET_MOUNT
    assert tasks["report"].inputs.parameters["results_uri"].component_input_parameter == \
        "results_uri"


def test_ssl_benchmark_evaluates_a_checkpoint_uri(tmp_path):
    spec = _parse(_compile("ssl_benchmark", tmp_path))
    tasks = {t.task_info.name: t for t in spec.root.dag.tasks.values()}
    pretrained = [f"{b} (pretrained)" for b in ("knn", "linear", "svm", "low-shot", "detection",
                                                "retrieval", "linear eval", "finetune")]
    assert set(tasks) == {"data copy", "data copy (scenes)", "import checkpoint",
                          "extract features", "extract scene features", "report", *pretrained}
    params = spec.root.input_definitions.parameters
    assert not params["checkpoint_uri"].is_optional, "the checkpoint is required"
    assert {name: json_format.MessageToDict(params[name].default_value)
            for name in STAGE_DEFAULTS} == STAGE_DEFAULTS
    imported = tasks["import checkpoint"].inputs.parameters
    assert imported["checkpoint_uri"].component_input_parameter == "checkpoint_uri"
    for name in ("extract features", "extract scene features", "detection (pretrained)",
                 "retrieval (pretrained)", "linear eval (pretrained)", "finetune (pretrained)"):
        producer = tasks[name].inputs.artifacts["checkpoint"].task_output_artifact
        assert _display(spec, producer.producer_task) == "import checkpoint", name
    report = tasks["report"].inputs
    assert set(report.artifacts) == {"checkpoint", *[
        f"pretrained_{b}" for b in ("knn", "linear", "svm", "low_shot", "detection", "retrieval",
                                    "linear_eval", "finetune")]}
    assert report.parameters["results_uri"].component_input_parameter == "results_uri"
    assert report.parameters["checkpoint_uri"].component_input_parameter == "checkpoint_uri"


def test_clusterfit_trains_on_the_cluster_labels_of_the_imported_trunk(tmp_path):
    spec = _parse(_compile("clusterfit", tmp_path))
    tasks = {t.task_info.name: t for t in spec.root.dag.tasks.values()}
    dependencies = {name: sorted(_display(spec, d) for d in task.dependent_tasks)
                    for name, task in tasks.items()}
    assert dependencies == {
        "data copy": [], "import checkpoint": [],
        "extract features (source trunk)": ["data copy", "import checkpoint"],
        "clusterfit (k-means labels)": ["extract features (source trunk)"],
        "train on cluster labels": ["clusterfit (k-means labels)", "data copy"],
        "extract features (ClusterFit trunk)": ["data copy", "train on cluster labels"],
        "knn (pretrained)": ["extract features (ClusterFit trunk)"],
        "linear (pretrained)": ["extract features (ClusterFit trunk)"],
        "report": ["clusterfit (k-means labels)", "knn (pretrained)", "linear (pretrained)",
                   "train on cluster labels"]}
    labels = tasks["train on cluster labels"].inputs.artifacts["labels"].task_output_artifact
    assert labels.output_artifact_key == "labels"
    train = tasks["train on cluster labels"].inputs.parameters
    assert train["config"].component_input_parameter == "clusterfit_config"
    assert train["overrides"].component_input_parameter == "clusterfit_overrides"
    assert tasks["clusterfit (k-means labels)"].inputs.parameters[
        "num_clusters"].component_input_parameter == "num_clusters"
    assert "pretrained_clusterfit" in tasks["report"].inputs.artifacts


def test_convert_imports_then_converts(tmp_path):
    spec = _parse(_compile("convert", tmp_path))
    tasks = {t.task_info.name: t for t in spec.root.dag.tasks.values()}
    assert set(tasks) == {"import checkpoint", "convert"}
    params = tasks["convert"].inputs.parameters
    for name in ("target", "source", "allow_pickle", "caffe2_variant"):
        assert params[name].component_input_parameter == name
    defaults = spec.root.input_definitions.parameters
    assert json_format.MessageToDict(defaults["target"].default_value) == "torchvision"
    assert json_format.MessageToDict(defaults["allow_pickle"].default_value) is False
    assert spec.root.output_definitions.artifacts["converted"].artifact_type.schema_title == \
        "system.Model"
