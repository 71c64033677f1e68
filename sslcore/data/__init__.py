"""sslcore: data."""
