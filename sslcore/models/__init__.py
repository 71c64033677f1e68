"""sslcore: models."""
