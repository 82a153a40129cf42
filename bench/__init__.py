"""Benchmarks that report ratios against a baseline measured in the same run.

Each is run from the repository root as ``python -m bench.<name>``: ``bench.core`` (parts a-d:
``bench.intake``, ``bench.delivery``, ``bench.latency``, ``bench.memory``, each also runnable
alone), ``bench.keys``, ``bench.targets`` and ``bench.windows``. What they share lives in
:mod:`bench.harness`. See docs/benchmarks.md.
"""
