"""Benchmarks: each prints its table and, last, one summary line a script can read
(``name key=value ...``), with ratios from one run. Shared timing helpers live in
:mod:`experiments.benchmarks.common`; run a benchmark as
``python -m experiments.benchmarks.NAME`` from the repository root."""
