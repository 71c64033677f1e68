"""S3 settings from the environment and from a mounted secret; the secret is never shown."""

import json

import pytest

from sslcore.storage import load_s3_settings


def test_env_settings_and_masking():
    s = load_s3_settings({
        "SSLCORE_S3_ENDPOINT": "https://minio.example:9000", "MINIO_ACCESS_KEY": "ak",
        "MINIO_SECRET_KEY": "very-secret", "SSLCORE_S3_REGION": "eu-1",
        "SSLCORE_S3_INSECURE": "true", "SSLCORE_S3_MAX_ATTEMPTS": "2",
    })
    assert (s.endpoint, s.secure, s.access_key, s.secret_key, s.region) == (
        "minio.example:9000", True, "ak", "very-secret", "eu-1")
    assert not s.cert_check and s.max_attempts == 2
    assert "very-secret" not in repr(s) and "very-secret" not in str(s)
    assert "***" in repr(s)


def test_aws_vars_take_precedence_over_minio_vars():
    s = load_s3_settings({"SSLCORE_S3_ENDPOINT": "http://h:1", "AWS_ACCESS_KEY_ID": "aws",
                          "AWS_SECRET_ACCESS_KEY": "s", "MINIO_ACCESS_KEY": "minio"})
    assert s.access_key == "aws" and not s.secure


def test_missing_endpoint_names_the_variables():
    with pytest.raises(ValueError, match="SSLCORE_S3_ENDPOINT.*SSLCORE_S3_SECRET_FILE"):
        load_s3_settings({})


@pytest.mark.parametrize("kind", ["yaml", "json", "dir"])
def test_secret_file(tmp_path, kind):
    values = {"endpoint": "http://10.0.0.1:9000", "access_key": "k", "secret_key": "s3cr3t",
              "region": "us-east-1"}
    if kind == "dir":  # as a Kubernetes Secret volume mounts it: one file per key
        path = tmp_path / "secret"
        path.mkdir()
        for k, v in values.items():
            (path / k).write_text(v + "\n")
    else:
        path = tmp_path / f"secret.{kind}"
        path.write_text(json.dumps(values) if kind == "json"
                        else "".join(f"{k}: {v}\n" for k, v in values.items()))
    s = load_s3_settings({"SSLCORE_S3_SECRET_FILE": str(path)})
    assert (s.endpoint, s.access_key, s.secret_key, s.region) == (
        "10.0.0.1:9000", "k", "s3cr3t", "us-east-1")
    assert "s3cr3t" not in repr(s)
