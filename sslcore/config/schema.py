"""The config schema: every key's default, type and meaning, declared next to the part it configures.

Each module that reads config keys declares them once with :func:`declare`; the full default tree is
the union of those declarations. Key paths and names follow VISSL's ``defaults.yaml`` so a VISSL
user's configs and habits carry over. A key declared twice is a programming error.

Example:
    >>> declare("LOSS.simclr_info_nce_loss", {
    ...     "temperature": Key(0.1, float, "softmax temperature T of NT-Xent"),
    ... })
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

# a leaf type: int, float, bool, str, list or dict ("dict" leaves hold free-form content)
_TYPE_NAMES = {int: "int", float: "float", bool: "bool", str: "str", list: "list", dict: "dict"}


@dataclass(frozen=True)
class Key:
    """One config key.

    Args:
        default: the documented default value.
        type: one of int, float, bool, str, list, dict. ``dict`` keys hold free-form content
            that the configured part validates itself.
        doc: what the key means, with units.
        nullable: whether ``None`` (YAML ``null``) is allowed.
        choices: the allowed values, if the key is an enumeration.
    """

    default: Any
    type: type
    doc: str
    nullable: bool = False
    choices: Optional[Tuple[Any, ...]] = None

    def __post_init__(self) -> None:
        if self.type not in _TYPE_NAMES:
            raise TypeError(f"Key type must be one of {list(_TYPE_NAMES.values())}, got {self.type}")
        error = self.check(self.default)
        if error:
            raise TypeError(f"default {self.default!r} does not fit its own key: {error}")

    def check(self, value: Any) -> Optional[str]:
        """Return why ``value`` is not valid for this key, or None when it is."""
        if value is None:
            return None if self.nullable else f"expected {_TYPE_NAMES[self.type]}, got null"
        ok = isinstance(value, self.type)
        if self.type is int or self.type is float:
            ok = ok and not isinstance(value, bool)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            return f"expected {_TYPE_NAMES[self.type]}, got {type(value).__name__} {value!r}"
        if self.choices is not None and value not in self.choices:
            return f"expected one of {list(self.choices)}, got {value!r}"
        return None

    @property
    def type_name(self) -> str:
        """The type's name as shown in docs and errors (``"float | null"``)."""
        return _TYPE_NAMES[self.type] + (" | null" if self.nullable else "")


_SCHEMA: Dict[str, Any] = {}


def declare(path: str, spec: Dict[str, Any]) -> Dict[str, Any]:
    """Declare the keys under ``path`` (dotted, e.g. ``"MODEL.TRUNK.RESNETS"``).

    Args:
        path: where the section sits in the tree; ``""`` for top-level keys.
        spec: nested dict whose leaves are :class:`Key`.

    Returns:
        ``spec``, so a module can keep a handle on its own section.

    Raises:
        ValueError: if a key under ``path`` is already declared.
    """
    node = _SCHEMA
    for part in [p for p in path.split(".") if p]:
        child = node.setdefault(part, {})
        if isinstance(child, Key):
            raise ValueError(f"config key '{path}' is a leaf, cannot hold a section")
        node = child
    _merge_spec(node, spec, path)
    return spec


def _merge_spec(node: Dict[str, Any], spec: Dict[str, Any], path: str) -> None:
    for name, value in spec.items():
        full = f"{path}.{name}" if path else name
        if isinstance(value, Key):
            if name in node:
                raise ValueError(f"config key '{full}' is declared twice")
            node[name] = value
        elif isinstance(value, dict):
            child = node.setdefault(name, {})
            if isinstance(child, Key):
                raise ValueError(f"config key '{full}' is declared twice")
            _merge_spec(child, value, full)
        else:
            raise TypeError(f"config spec '{full}' must be a Key or a dict, got {type(value).__name__}")


def schema() -> Dict[str, Any]:
    """The whole schema tree (sections as dicts, leaves as :class:`Key`), every part loaded."""
    from sslcore.config import sections  # noqa: F401  (explicit imports fill the schema)

    return _SCHEMA


def defaults() -> Dict[str, Any]:
    """The default config as a plain nested dict (a fresh copy each call)."""

    def _build(node: Dict[str, Any]) -> Dict[str, Any]:
        return {
            k: copy.deepcopy(v.default) if isinstance(v, Key) else _build(v) for k, v in node.items()
        }

    return _build(schema())


def iter_keys(node: Optional[Dict[str, Any]] = None, prefix: str = "") -> Iterator[Tuple[str, Key]]:
    """Yield ``(dotted_path, Key)`` for every leaf, in declaration order."""
    node = schema() if node is None else node
    for name, value in node.items():
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(value, Key):
            yield full, value
        else:
            yield from iter_keys(value, full)


def lookup(path: str) -> Any:
    """Return the :class:`Key` or section dict at ``path``, or None if it is not declared."""
    node: Any = schema()
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
