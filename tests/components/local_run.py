"""Run one component through ``kfp.local`` (SubprocessRunner, no venv) on files from disk.

Each input artifact is brought in with ``dsl.importer`` inside a one-task pipeline, so the
component runs exactly as it does in a pipeline: KFP's executor, its artifact directories, its
metrics. The returned dict maps each output name to its local path (artifacts) or value.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Mapping, Tuple, Type

from kfp import dsl, local


def run_component_locally(component: Any, root: Path, *,
                          artifacts: Mapping[str, Tuple[Type[dsl.Artifact], Path]] = (),
                          **params: Any) -> Dict[str, Any]:
    """Run ``component`` once with ``artifacts`` (name -> (class, path)) imported and ``params``.

    Returns:
        output name -> local path of an output artifact (a file or a directory under the run's
        pipeline root), or the value of an output parameter.
    """
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "pipeline-root"),
               raise_on_error=True)
    artifacts = dict(artifacts)

    @dsl.pipeline(name="one-component")
    def one_component():
        inputs = {name: dsl.importer(artifact_uri=str(path), artifact_class=cls, reimport=False).output
                  for name, (cls, path) in artifacts.items()}
        component(**inputs, **params)

    one_component()
    runs = sorted((root / "pipeline-root").glob("one-component-*"), key=lambda p: p.stat().st_mtime)
    task_dir, = [d for d in runs[-1].iterdir() if d.is_dir() and not d.name.startswith("importer")]
    out: Dict[str, Any] = {path.name: path for path in task_dir.iterdir()
                           if path.name != "executor_output.json"}
    executor_output = json.loads((task_dir / "executor_output.json").read_text())
    out.update(executor_output.get("parameterValues", {}))
    return out
