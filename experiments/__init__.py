"""Experiments of sssi: benchmarks (:mod:`experiments.benchmarks`), the label-efficiency
study, SLURM scripts and recorded results. Run from the repository root, e.g.
``python -m experiments.benchmarks.game_step``."""
