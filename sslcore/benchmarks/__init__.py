"""sslcore: benchmarks."""
