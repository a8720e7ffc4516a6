"""Chat model clients. Only workers import this package."""
