"""LightningModules: training logic of the tasks (segmentation; the pretext game)."""

from sssi.tasks.pretrain import PretrainTask
from sssi.tasks.segment import SegmentTask

__all__ = ["PretrainTask", "SegmentTask"]
