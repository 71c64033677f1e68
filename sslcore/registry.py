"""One registry mechanism for every named part of sslcore (trunks, heads, losses, methods, ...).

A registry maps VISSL's registry keys (``"resnet"``, ``"mlp"``, ``"simclr_info_nce_loss"``) to
constructors. It refuses duplicate names and, on a failed lookup, names the closest valid keys.
Registries are filled by explicit imports in each package's ``__init__``; nothing is scanned.
"""

from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterator, List, TypeVar

T = TypeVar("T")


def close_matches(name: str, choices: List[str], n: int = 3) -> List[str]:
    """Return up to ``n`` entries of ``choices`` closest to ``name`` (case-insensitive first).

    Args:
        name: the misspelt name.
        choices: valid names.
        n: how many suggestions at most.

    Returns:
        Suggestions, best first; empty when nothing is close.
    """
    lowered = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(name.lower(), list(lowered), n=n, cutoff=0.5)
    return [lowered[h] for h in hits]


class Registry(Generic[T]):
    """A named table of constructors.

    Args:
        kind: what the registry holds, used in error messages (``"trunk"``, ``"loss"``).

    Example:
        >>> TRUNKS = Registry("trunk")
        >>> @TRUNKS.register("resnet")
        ... def build_resnet(**kwargs): ...
        >>> TRUNKS.get("resnet")
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers ``obj`` under ``name``.

        Raises:
            ValueError: if ``name`` is already registered.
        """

        def _add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._entries[name] = obj
            return obj

        return _add

    def get(self, name: str) -> T:
        """Look up ``name``.

        Raises:
            KeyError: if ``name`` is unknown; the message lists the closest registered names.
        """
        if name not in self._entries:
            hint = close_matches(name, list(self._entries))
            suggestion = f" Did you mean: {', '.join(hint)}?" if hint else ""
            raise KeyError(
                f"unknown {self.kind} '{name}'.{suggestion} Registered: {', '.join(sorted(self._entries))}"
            )
        return self._entries[name]

    def names(self) -> List[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
