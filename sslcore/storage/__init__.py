"""sslcore: storage."""
