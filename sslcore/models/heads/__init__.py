"""Heads. Importing this package fills :data:`HEADS` with every head listed here."""

from sslcore.models.heads.registry import HEADS, build_head, build_heads
from sslcore.models.heads import mlp, eval_mlp  # noqa: F401,E402  (register "mlp", "eval_mlp")
from sslcore.models.heads import dino_head  # noqa: F401,E402  (registers "dino_head")
from sslcore.models.heads import siamese_concat_view  # noqa: F401,E402  (registers "siamese_concat_view")
from sslcore.models.heads import swav_head  # noqa: F401,E402  (registers "swav_head")

__all__ = ["HEADS", "build_head", "build_heads"]
