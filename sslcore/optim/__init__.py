"""sslcore: optim."""
