"""Content-addressed store: artifacts named by the SHA-256 digest of their bytes."""
