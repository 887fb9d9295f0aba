"""Atheris fuzz targets: each asserts that only the target's typed errors escape."""
