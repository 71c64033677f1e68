"""sslcore: engine."""
