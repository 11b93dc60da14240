"""Lightning's CSV logger for runs that resume in their own folder.

Lightning's writer deletes an existing ``metrics.csv`` when it starts, so resuming a
run in its folder (``hydra.run.dir=DIR ckpt_path=last``, a requeued SLURM job, a
restarted sweep) lost every row logged before the interruption. This one appends.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger as LightningCSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class AppendingWriter(ExperimentWriter):
    """Keeps an existing ``metrics.csv`` and goes on with its columns (a new column
    rewrites the file with the wider header, as Lightning's writer does)."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as fh:
                self.metrics_keys = list(csv.DictReader(fh).fieldnames or [])


class CSVLogger(LightningCSVLogger):
    """``lightning.pytorch.loggers.CSVLogger`` with :class:`AppendingWriter`
    (``conf/logger/csv.yaml``). Steps that a killed leg logged after its last
    checkpoint appear twice; the later row is the resumed run's."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = AppendingWriter(log_dir=self.log_dir)
        return self._experiment
