"""sslcore: losses."""
