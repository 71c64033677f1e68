"""sslcore: trunks."""
