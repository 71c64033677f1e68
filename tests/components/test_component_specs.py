"""Every component: its signature, its KFP spec, its README and the import guard.

The import guard is kubeflow/pipelines-components' rule: a component.py imports only the
standard library and kfp at module level (plus this package's own constants), so compiling a
pipeline never needs torch or sslcore; the body imports what it calls.
"""

import ast
import inspect
import sys
from pathlib import Path
from typing import List, Optional

import pytest
from kfp.dsl import HTML, Artifact, Dataset, Input, Metrics, Model, Output

import components
from components.data_copy import data_copy
from components.extract_features import extract_features
from components.import_checkpoint import import_checkpoint
from components.knn import knn
from components.linear import linear
from components.linear_eval import linear_eval
from components.finetune import finetune
from components.low_shot import low_shot
from components.pretrain import pretrain
from components.report import report
from components.retrieval import retrieval
from components.clusterfit import clusterfit
from components.svm import svm
from components.convert import convert
from components.detection import detection

COMPONENTS_DIR = Path(components.__file__).parent

# component -> {parameter: annotation}, in signature order: the documented interface
EXPECTED_SIGNATURES = {
    data_copy: {"source": str, "dataset": Output[Dataset], "limit_train": int, "limit_test": int},
    pretrain: {"dataset": Input[Dataset], "config": str, "model": Output[Model],
               "overrides": Optional[List[str]], "num_nodes": int, "gpus_per_node": int,
               "checkpoint_uri": str, "dataset_pvc": str, "dataset_mount": str, "image": str,
               "namespace": str, "job_timeout_s": int, "job_poll_s": float,
               "labels": Optional[Input[Artifact]]},
    extract_features: {"source": str, "dataset": Input[Dataset], "features": Output[Artifact],
                       "config": str, "overrides": Optional[List[str]],
                       "checkpoint": Optional[Input[Model]], "checkpoint_uri": str},
    knn: {"features": Input[Artifact], "metrics": Output[Metrics], "layer": str},
    import_checkpoint: {"checkpoint_uri": str, "model": Output[Model]},
    retrieval: {"dataset": Input[Dataset], "metrics": Output[Metrics], "checkpoint": Optional[Input[Model]],
                "descriptor": str, "whiten": bool, "layer": str, "config": str, "num_queries": int,
                "num_database": int, "num_whiten": int, "seed": int, "enabled": bool},
    clusterfit: {"features": Input[Artifact], "labels": Output[Artifact], "metrics": Output[Metrics],
                 "num_clusters": int, "n_iter": int, "layer": str, "seed": int},
    linear: {"features": Input[Artifact], "metrics": Output[Metrics], "layer": str, "epochs": int},
    linear_eval: {"dataset": Input[Dataset], "metrics": Output[Metrics],
                  "checkpoint": Optional[Input[Model]], "epochs": int, "recipe": str,
                  "overrides": Optional[List[str]], "seed": int, "enabled": bool},
    finetune: {"dataset": Input[Dataset], "metrics": Output[Metrics],
               "checkpoint": Optional[Input[Model]], "mode": str, "fraction": float, "epochs": int,
               "recipe": str, "overrides": Optional[List[str]], "seed": int, "enabled": bool},
    svm: {"features": Input[Artifact], "metrics": Output[Metrics], "layers": list, "enabled": bool},
    convert: {"checkpoint": Input[Model], "converted": Output[Model], "target": str, "source": str,
              "allow_pickle": bool, "caffe2_variant": str},
    low_shot: {"features": Input[Artifact], "metrics": Output[Metrics], "layer": str, "k_values": list,
               "num_samples": int, "enabled": bool},
    report: {"pretrained_knn": Input[Metrics], "pretrained_linear": Input[Metrics],
             "html": Output[HTML], "summary": Output[Artifact],
             **{f"{m}_{b}": Optional[Input[Metrics]] for m in ("random_init", "raw_pixels")
                for b in ("knn", "linear")},
             **{f"{m}_{b}": Optional[Input[Metrics]]
                for b in ("svm", "low_shot", "detection", "retrieval")
                for m in ("pretrained", "random_init")},
             **{f"pretrained_{b}": Optional[Input[Metrics]]
                for b in ("linear_eval", "finetune", "clusterfit")},
             "checkpoint": Optional[Input[Model]], "title": str, "checkpoint_uri": str,
             "results_uri": str},
    detection: {"dataset": Input[Dataset], "metrics": Output[Metrics], "checkpoint": Optional[Input[Model]],
                "iterations": int, "batch_size": int, "lr": float, "num_train": int, "num_test": int,
                "seed": int, "enabled": bool},
}
ALL = list(EXPECTED_SIGNATURES)
FOLDERS = sorted(p.name for p in COMPONENTS_DIR.iterdir() if (p / "component.py").is_file())


def _id(component) -> str:
    return component.python_func.__name__


def test_every_component_folder_is_covered():
    assert FOLDERS == sorted(_id(c) for c in ALL)


@pytest.mark.parametrize("component", ALL, ids=_id)
def test_python_func_is_callable_with_documented_signature(component):
    assert callable(component.python_func)
    params = inspect.signature(component.python_func).parameters
    assert {name: p.annotation for name, p in params.items()} == EXPECTED_SIGNATURES[component]


@pytest.mark.parametrize("component", ALL, ids=_id)
def test_runs_in_the_sslcore_image_without_installing_anything(component):
    container = component.component_spec.implementation.container
    assert container.image == components.SSLCORE_IMAGE
    command = " ".join(container.command or [])
    assert "pip install" not in command


@pytest.mark.parametrize("component", ALL, ids=_id)
def test_spec_types_follow_the_signature(component):
    spec = component.component_spec
    for name, annotation in EXPECTED_SIGNATURES[component].items():
        if "OutputAnnotation" in repr(annotation):
            assert spec.outputs[name].type.startswith("system."), name
        else:
            assert name in spec.inputs, name
    assert spec.description, "the docstring's summary becomes the component's description"


@pytest.mark.parametrize("folder", FOLDERS)
def test_folder_has_init_component_and_readme_naming_every_io(folder):
    path = COMPONENTS_DIR / folder
    assert (path / "__init__.py").is_file()
    readme = (path / "README.md").read_text()
    component = next(c for c in ALL if _id(c) == folder)
    for name in EXPECTED_SIGNATURES[component]:
        assert f"`{name}`" in readme, f"{folder}/README.md does not document `{name}`"


@pytest.mark.parametrize("folder", FOLDERS)
def test_component_module_imports_only_stdlib_and_kfp_at_top_level(folder):
    tree = ast.parse((COMPONENTS_DIR / folder / "component.py").read_text())
    allowed = set(sys.stdlib_module_names) | {"kfp", "components"}
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
        else:
            continue
        for name in names:
            root = name.split(".")[0]
            assert root in allowed, f"{folder}/component.py imports {name} at module level"
            if root == "components":
                assert name == "components", "only the package's constants may be imported"


@pytest.mark.parametrize("folder", FOLDERS)
def test_component_body_imports_sslcore_inside_the_function(folder):
    tree = ast.parse((COMPONENTS_DIR / folder / "component.py").read_text())
    functions = [n for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert [f.name for f in functions] == [folder]
    inner = [n for n in ast.walk(functions[0]) if isinstance(n, ast.ImportFrom)]
    assert any((n.module or "").startswith("sslcore") for n in inner)
