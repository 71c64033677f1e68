"""sslcore: heads."""
