"""Compose a run's config from a recipe file and command-line overrides, VISSL style.

Syntax (Hydra's override grammar, as VISSL uses it)::

    config=pretrain/simclr/quick_simclr          # recipe: sslcore/config/<name>.yaml or a path
    config.OPTIMIZER.num_epochs=2                # change a declared key
    +config.NEW_KEY=1                            # add a key the schema does not declare
    ++config.OPTIMIZER.num_epochs=2              # add or change
    ~config.CHECKPOINT.DIR                       # reset a key to its default

Recipes are YAML files whose top level is ``config:`` (VISSL's ``# @package _global_`` files).
Every key of a recipe or an override must be declared in the schema (``+`` adds one on purpose);
every value must have the declared type. Errors name the key and the closest valid keys.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml
from omegaconf import DictConfig, OmegaConf

from sslcore.config.schema import Key, defaults, iter_keys, lookup, schema
from sslcore.registry import close_matches

CONFIG_ROOT = Path(__file__).resolve().parent


class ConfigError(ValueError):
    """A recipe or override that does not fit the schema; the message names the key and a fix."""


def find_recipe(name: str) -> Path:
    """Resolve ``config=<name>`` to a YAML file.

    Looks for ``<name>`` and ``<name>.yaml`` as a path, then under ``sslcore/config/``.

    Raises:
        ConfigError: if no file matches; lists the closest recipe names.
    """
    candidates = [Path(name), Path(f"{name}.yaml"), CONFIG_ROOT / name, CONFIG_ROOT / f"{name}.yaml"]
    for path in candidates:
        if path.is_file():
            return path
    known = [str(p.relative_to(CONFIG_ROOT).with_suffix("")) for p in CONFIG_ROOT.rglob("*.yaml")]
    hint = close_matches(name, known, n=5)
    raise ConfigError(
        f"config={name}: no such recipe file. Closest recipes: {', '.join(hint) or 'none'}. "
        f"Recipes live under {CONFIG_ROOT} or can be given as a path to a .yaml file."
    )


def _unknown_key_error(path: str, origin: str) -> ConfigError:
    parent, _, _ = path.rpartition(".")
    siblings = lookup(parent) if parent else schema()
    if isinstance(siblings, dict):
        names = [f"{parent}.{k}" if parent else k for k in siblings]
        hint = close_matches(path, names) or close_matches(path.rsplit(".", 1)[-1], list(siblings))
        hint = [h if "." in h or not parent else f"{parent}.{h}" for h in hint]
    else:
        hint = []
    if not hint:
        hint = close_matches(path, [p for p, _ in iter_keys()])
    msg = f"unknown config key 'config.{path}' ({origin})."
    if hint:
        msg += " Closest valid keys: " + ", ".join(f"config.{h}" for h in hint) + "."
    msg += " To add a key the schema does not declare, use '+config.<KEY>=<value>'."
    return ConfigError(msg)


def _inside_free_form(path: str) -> bool:
    """True when an ancestor of ``path`` is a ``dict`` Key: its content is free-form."""
    parts = path.split(".")
    for i in range(1, len(parts)):
        spec = lookup(".".join(parts[:i]))
        if isinstance(spec, Key):
            return spec.type is dict
    return False


def _set(tree: Dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _get(tree: Dict[str, Any], path: str) -> Tuple[bool, Any]:
    node: Any = tree
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _check_value(path: str, value: Any, origin: str) -> None:
    spec = lookup(path)
    if isinstance(spec, Key):
        error = spec.check(value)
        if error:
            raise ConfigError(f"config.{path} ({origin}): {error}. {spec.doc}")
    elif isinstance(spec, dict):
        if not isinstance(value, dict):
            raise ConfigError(
                f"config.{path} ({origin}) is a section; set one of its keys instead: "
                + ", ".join(f"config.{path}.{k}" for k in list(spec)[:8])
            )
        for name, sub in value.items():
            _check_value(f"{path}.{name}", sub, origin)


def _merge_recipe(tree: Dict[str, Any], recipe: Dict[str, Any], prefix: str, origin: str,
                  added: set) -> None:
    for name, value in recipe.items():
        path = f"{prefix}.{name}" if prefix else name
        spec = lookup(path)
        if spec is None and not any(path == a or path.startswith(a + ".") for a in added):
            raise _unknown_key_error(path, origin)
        if isinstance(spec, dict) and isinstance(value, dict):
            _merge_recipe(tree, value, path, origin, added)
        else:
            if spec is not None:
                _check_value(path, value, origin)
            _set(tree, path, copy.deepcopy(value))


def load_recipe(path: Path) -> Dict[str, Any]:
    """Read a recipe YAML and return the mapping under its top-level ``config:`` key.

    Raises:
        ConfigError: if the file is not a mapping with a ``config`` key.
    """
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or "config" not in data or not isinstance(data["config"], dict):
        raise ConfigError(f"{path}: a recipe must be a YAML mapping with a top-level 'config:' key")
    return data["config"]


def compose_config(overrides: Sequence[str]) -> DictConfig:
    """Build the user config (before inference) from VISSL-style override strings.

    Args:
        overrides: e.g. ``["config=pretrain/simclr/quick_simclr", "config.OPTIMIZER.num_epochs=2"]``.

    Returns:
        The config as an OmegaConf DictConfig (defaults, then the recipe, then the overrides).

    Raises:
        ConfigError: unknown key, wrong type, missing recipe, or malformed override.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(f"cannot parse overrides {list(overrides)}: {exc}") from exc

    tree = defaults()
    added: set = set()
    for ov in [o for o in parsed if o.key_or_group == "config"]:
        path = find_recipe(str(ov.value()))
        _merge_recipe(tree, load_recipe(path), "", f"recipe {path}", added)
    for ov in parsed:
        key = ov.key_or_group
        if key == "config":
            continue
        if not key.startswith("config."):
            raise ConfigError(
                f"override '{ov.input_line}': keys are written 'config.<KEY>', e.g. config.{key}"
            )
        path = key[len("config."):]
        origin = f"override '{ov.input_line}'"
        exists, _ = _get(tree, path)
        if ov.is_delete():
            spec = lookup(path)
            if not isinstance(spec, Key):
                raise _unknown_key_error(path, origin)
            _set(tree, path, copy.deepcopy(spec.default))
            continue
        value = ov.value()
        if ov.is_add() and exists:
            raise ConfigError(f"{origin}: config.{path} already exists; drop the '+' to change it")
        if ov.is_add() or ov.is_force_add():
            added.add(path)
        elif (lookup(path) is None and not _inside_free_form(path)
              and not any(path.startswith(a + ".") for a in added)):
            raise _unknown_key_error(path, origin)
        if lookup(path) is not None:
            _check_value(path, value, origin)
        _set(tree, path, value)
    return OmegaConf.create(tree)


def to_yaml(cfg: DictConfig) -> str:
    """Serialise a config as a VISSL recipe (``config:`` at the top)."""
    return OmegaConf.to_yaml(OmegaConf.create({"config": OmegaConf.to_container(cfg)}))


def save_config(cfg: DictConfig, path: Path) -> None:
    """Write ``cfg`` as YAML to ``path`` (creates the parent directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_yaml(cfg))


def load_config_file(path: Path, overrides: Optional[List[str]] = None) -> DictConfig:
    """Load a saved (resolved) config file and validate it like a recipe."""
    return compose_config([f"config={path}"] + list(overrides or []))
