"""Benchmarks that start foxctl's real processes on PostgreSQL and Redis.

Run each one from the repository root, for example ``.venv/bin/python -m bench.ingress``.
docs/benchmarks.md lists the commands, the machine and the last results.
"""
