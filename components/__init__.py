"""KFP components: one folder per pipeline stage, each a thin adapter onto one sslcore call.

Every ``<stage>/component.py`` imports only the standard library and kfp at module level; the
function body imports sslcore, so compiling a pipeline needs neither torch nor sslcore's
dependencies, and the body runs wherever the sslcore image (or, locally, this environment) is.

Artifacts are directories at ``artifact.path`` in the formats of design.md section 5 (each
component's README lists them); the HTML report is a single file so the KFP UI can render it.
"""

# The image every component runs in on a cluster. images/Dockerfile builds it
# (`docker build -f images/Dockerfile -t ghcr.io/sslcore/sslcore:0.1.0 .`); keep the tag in step
# with the project version in pyproject.toml. Locally, kfp.local.SubprocessRunner(use_venv=False)
# ignores the image and runs the bodies in the current Python environment.
SSLCORE_IMAGE = "ghcr.io/sslcore/sslcore:0.1.0"

# The recipes used when a pipeline does not name them (sslcore/config/<name>.yaml): pretraining,
# and feature extraction (no augmentation, the same trunk as the pretraining recipe).
DEFAULT_PRETRAIN_CONFIG = "pretrain/simclr/simclr_fashion_mnist_cpu"
DEFAULT_EXTRACT_CONFIG = "feature_extraction/extract_resnet_fashion_mnist"

__all__ = ["DEFAULT_EXTRACT_CONFIG", "DEFAULT_PRETRAIN_CONFIG", "SSLCORE_IMAGE"]
