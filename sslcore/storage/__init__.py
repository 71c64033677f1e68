"""sslcore.storage: local paths and ``s3://bucket/key`` URIs behind one small interface."""

from sslcore.storage.latest import LATEST_POINTER_NAME, read_latest_pointer, write_latest_pointer
from sslcore.storage.s3 import (
    DEFAULT_PART_SIZE,
    BucketNotFoundError,
    StorageAuthError,
    StorageError,
    StorageUnavailableError,
)
from sslcore.storage.settings import S3Settings, load_s3_settings
from sslcore.storage.uris import (
    cache_dir,
    local_mirror,
    copy_to_local,
    download_dir,
    download_file,
    exists,
    is_remote,
    join_uri,
    list_uris,
    parse_s3_uri,
    read_bytes,
    upload_dir,
    upload_file,
    write_bytes,
)

__all__ = [
    "DEFAULT_PART_SIZE", "LATEST_POINTER_NAME", "BucketNotFoundError", "S3Settings",
    "StorageAuthError", "StorageError", "StorageUnavailableError", "cache_dir", "copy_to_local",
    "local_mirror",
    "download_dir", "download_file", "exists", "is_remote", "join_uri", "list_uris",
    "load_s3_settings", "parse_s3_uri", "read_bytes", "read_latest_pointer", "upload_dir",
    "upload_file", "write_bytes", "write_latest_pointer",
]
