"""sslcore on Kubernetes: PyTorchJob rendering (and, next, launching) for multi-node training."""
