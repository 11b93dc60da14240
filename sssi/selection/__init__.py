"""Choosing the regions to label from unlabelled imagery (``python -m sssi.select``).

- :mod:`sssi.selection.selectors`: the selectors, one class each behind one interface
  (scores of region images in, an order out), picked by ``conf/selector/*.yaml``;
- :mod:`sssi.selection.ordering`: orders from scores and features (k-centre greedy,
  TypiClust, clusters taking turns), numpy only;
- :mod:`sssi.selection.outputs`: the GeoJSON and the picture of a choice.

The ranking file itself (what training reads with ``data.label_regions``) belongs to
the data: :mod:`sssi.data.ranking`.
"""

from sssi.selection.selectors import (
    DiversitySelector,
    FeatureEncoder,
    InpainterErrorSelector,
    InstructorSelector,
    RandomSelector,
    Selector,
    TextureSelector,
    TypicalSelector,
)

__all__ = [
    "DiversitySelector",
    "FeatureEncoder",
    "InpainterErrorSelector",
    "InstructorSelector",
    "RandomSelector",
    "Selector",
    "TextureSelector",
    "TypicalSelector",
]
