"""Models: trunks (:mod:`sslcore.models.trunks`), heads (:mod:`sslcore.models.heads`), the model builder."""

from sslcore.models.model import BaseSSLMultiInputOutputModel, build_model

__all__ = ["BaseSSLMultiInputOutputModel", "build_model"]
