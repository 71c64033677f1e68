"""sslcore: methods."""
