"""convert: a checkpoint in another framework's format (torchvision, detectron2, ClassyVision, sslcore)."""

from kfp import dsl
from kfp.dsl import Input, Model, Output

from components import SSLCORE_IMAGE


@dsl.component(base_image=SSLCORE_IMAGE, install_kfp_package=False)
def convert(
    checkpoint: Input[Model],
    converted: Output[Model],
    target: str = "torchvision",
    source: str = "sslcore",
    allow_pickle: bool = False,
    caffe2_variant: str = "alexnet_bvlc",
):
    """Convert a checkpoint between sslcore/VISSL and torchvision, detectron2, ClassyVision, timm, caffe2.

    Adapter for ``sslcore.convert.convert_checkpoint_file`` (supported pairs: see
    ``sslcore.convert``; e.g. sslcore -> torchvision, detectron2, classy_vision; torchvision, timm,
    classy_vision, caffe2 -> sslcore).

    Args:
        checkpoint: the file to convert, or a directory (the pretrain output) holding it: the file
            named by ``metadata["checkpoint_file"]``, else ``checkpoint.torch``. sslcore: a VISSL-layout
            checkpoint (``torch.save`` dict with ``classy_state_dict``); torchvision/timm/classy_vision:
            a ``torch.save`` state dict; caffe2: a pickle of numpy blobs.
        converted: output directory with one file, named in ``metadata["checkpoint_file"]``:
            ``converted.pth`` (torchvision ``ResNet`` state dict without ``fc``, ``torch.save``),
            ``converted.pkl`` (detectron2: pickle of ``{"model": {name: np.ndarray},
            "__author__": "sslcore", "matching_heuristics": True}``) or ``converted.torch``
            (sslcore checkpoint or ClassyVision state, ``torch.save``). ``metadata`` also holds
            ``source``, ``format`` (the target), ``num_tensors`` and ``num_elements``.
        target: ``torchvision``, ``detectron2``, ``classy_vision`` or ``sslcore``.
        source: ``sslcore``, ``torchvision``, ``timm``, ``classy_vision`` or ``caffe2``.
        allow_pickle: caffe2 only: unpickle the file (it can run arbitrary code; trusted files only).
        caffe2_variant: caffe2 only: ``alexnet_jigsaw``, ``alexnet_colorization`` or ``alexnet_bvlc``.

    Raises:
        ValueError: an unsupported (source, target) pair (the message lists the supported ones), a
            caffe2 file without ``allow_pickle``, or a file that does not fit ``source``.
    """
    import json
    import os

    from sslcore.convert import convert_checkpoint_file

    path = checkpoint.path
    if os.path.isdir(path):
        path = os.path.join(path, checkpoint.metadata.get("checkpoint_file", "checkpoint.torch"))
    suffix = {"torchvision": ".pth", "detectron2": ".pkl"}.get(target, ".torch")
    os.makedirs(converted.path, exist_ok=True)
    summary = convert_checkpoint_file(path, os.path.join(converted.path, "converted" + suffix),
                                      source=source, target=target, allow_pickle=allow_pickle,
                                      caffe2_variant=caffe2_variant)
    converted.metadata.update({"checkpoint_file": "converted" + suffix, "source": source,
                               "format": target, "num_tensors": summary["num_tensors"],
                               "num_elements": summary["num_elements"], "framework": "pytorch"})
    print(json.dumps(summary, indent=2))
