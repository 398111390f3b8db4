"""Benchmarks: `make bench` runs every scenario and prints one table of measured figures."""
