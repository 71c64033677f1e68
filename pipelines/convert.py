"""convert: turn an existing checkpoint into another library's format, as one pipeline run.

    import_checkpoint(checkpoint_uri) ── convert(source -> target) ──> converted (Model)

For handing a trunk pretrained here to torchvision, detectron2 or ClassyVision users (or the
reverse: ``source`` torchvision / timm / classy_vision / caffe2, ``target`` sslcore). The
converted file lands in the run's artifacts under the pipeline root (MinIO console: the
``sslcore`` bucket, ``pipeline-root/<run>/convert/converted/``). Supported pairs and key mappings:
:mod:`sslcore.convert`.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Model

from components.convert import convert as convert_component
from components.import_checkpoint import import_checkpoint
from pipelines.cluster import PIPELINE_ROOT, named

PIPELINE_NAME = "convert"

Outputs = NamedTuple("Outputs", [("converted", Model)])


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Convert a checkpoint (s3:// or path) between sslcore/VISSL and torchvision, "
                "detectron2, ClassyVision, timm or caffe2.",
    pipeline_root=PIPELINE_ROOT,
)
def convert(
    checkpoint_uri: str,
    target: str = "torchvision",
    source: str = "sslcore",
    allow_pickle: bool = False,
    caffe2_variant: str = "alexnet_bvlc",
    node_selector: dict = {},
    tolerations: list = [],
) -> Outputs:
    """Convert one checkpoint.

    Args:
        checkpoint_uri: the file to convert: ``s3://bucket/.../file`` or a path in the pod.
        target: ``torchvision``, ``detectron2`` (standard 7x7 stem only), ``classy_vision`` or
            ``sslcore``.
        source: ``sslcore``, ``torchvision``, ``timm``, ``classy_vision`` or ``caffe2``.
        allow_pickle: caffe2 only: unpickle the file, which can run arbitrary code; only for
            files you trust.
        caffe2_variant: caffe2 only: ``alexnet_jigsaw``, ``alexnet_colorization`` or
            ``alexnet_bvlc``.
        node_selector, tolerations: placement of every pod (see ssl_pretrain_eval).
    """
    where = dict(node_selector=node_selector, tolerations=tolerations)
    imported = named(import_checkpoint(checkpoint_uri=checkpoint_uri), "import checkpoint",
                     **where)
    converted = named(convert_component(checkpoint=imported.outputs["model"], target=target,
                                        source=source, allow_pickle=allow_pickle,
                                        caffe2_variant=caffe2_variant),
                      "convert", **where)
    return Outputs(converted=converted.outputs["converted"])
