"""Fuzz targets, one module per family of parsers; each registers with ``harness.target``."""
