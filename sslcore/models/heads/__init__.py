"""Heads. Importing this package fills :data:`HEADS` with every head listed here."""

from sslcore.models.heads.registry import HEADS, build_head, build_heads
from sslcore.models.heads import mlp, eval_mlp  # noqa: F401,E402  (register "mlp", "eval_mlp")

__all__ = ["HEADS", "build_head", "build_heads"]
