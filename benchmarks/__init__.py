"""Benchmarks comparing nbqueue with RQ on one private redis-server: run ``python -m benchmarks.run``."""
