"""Config: VISSL's schema and override syntax (see :mod:`sslcore.config.loader`)."""

from sslcore.config.loader import ConfigError, compose_config, save_config, to_yaml
from sslcore.config.schema import Key, declare, defaults

__all__ = ["ConfigError", "Key", "compose_config", "declare", "defaults", "save_config", "to_yaml"]
