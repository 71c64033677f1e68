"""sslcore: report."""
