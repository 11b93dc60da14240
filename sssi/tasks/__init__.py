"""LightningModules: training logic of the tasks (segmentation; the pretext game)."""

from sssi.tasks.segment import SegmentTask

__all__ = ["SegmentTask"]
