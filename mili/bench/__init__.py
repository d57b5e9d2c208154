"""Benchmarks: `mili bench <name>` runs `mili.bench.<name>:main`."""
