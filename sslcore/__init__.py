"""sslcore: self-supervised learning for computer vision, VISSL-compatible, shipped as Kubeflow Pipelines."""

__version__ = "0.1.0"
