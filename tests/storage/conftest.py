"""The S3 fixtures now live in tests/s3_server.py (registered by tests/conftest.py)."""

from s3_server import BUCKET, s3_env, s3_server  # noqa: F401  (re-exported for loaders by path)
