"""Imports every module that declares config keys, so the schema is complete.

Explicit on purpose (house style): a module that declares keys is listed here, nothing is scanned.
"""

# isort: off
from sslcore.engine import distributed  # noqa: F401
# isort: on
