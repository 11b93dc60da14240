"""The Dubai aerial imagery dataset ("Semantic segmentation of aerial imagery", Humans in
the Loop / MBRSC) as its archive ships it.

```
Semantic segmentation dataset/
  classes.json
  Tile 1/images/image_part_001.jpg ...   Tile 1/masks/image_part_001.png ...
  ...
  Tile 8/...
```

Each numbered *tile* is a group of overlapping images of one area, so every image is
one sssi tile (id ``{tile}_{part}``, e.g. ``7_003``) and splits name groups: a split
list entry ``7`` stands for every image of ``Tile 7``. Neighbouring images of a group
share content, so splits are by group, never by image. The images are plain JPEG
without georeferencing and differ in size from group to group (509x544 to about
2100x2000 px); masks are colour PNGs, some in palette mode (the reader expands those).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from sssi.data.layouts import RASTER_SUFFIXES, BandSource, Layout, Tile, register_layout
from sssi.data.palettes import DUBAI, Palette
from sssi.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: The folder the archive unpacks to; ``data.root`` may be it or its parent.
ARCHIVE_FOLDER = "Semantic segmentation dataset"
#: sssi's standard split of the groups: validation 6, test 7; every other group is
#: training imagery (``conf/data/dubai.yaml`` names the labelled ones, 1-5).
DUBAI_VAL_GROUPS: tuple[str, ...] = ("6",)
DUBAI_TEST_GROUPS: tuple[str, ...] = ("7",)

_GROUP = re.compile(r"^tile[ _-]?(\d+)$", re.IGNORECASE)
_PART = re.compile(r"(\d+)$")
_warned: set[Path] = set()


@register_layout("dubai")
class DubaiLayout(Layout):
    """``Tile N/images/*.jpg`` + ``Tile N/masks/*.png`` under ``root`` (or under
    ``root/Semantic segmentation dataset``). Any group numbers present are used."""

    name = "dubai"
    palette: Palette = DUBAI

    def __init__(self, root: str | Path, modality: str = "RGB", ndsm: bool = False) -> None:
        super().__init__(root)
        if str(modality).upper() != "RGB":
            raise ConfigError(f"data.modality={modality!r}: the Dubai images are RGB only")
        if ndsm:
            raise ConfigError("data.ndsm=true: the Dubai dataset has no DSM")
        self._found: dict[str, Tile] | None = None
        self._groups: dict[str, list[str]] = {}

    @property
    def band_names(self) -> tuple[str, ...]:
        return ("R", "G", "B")

    @property
    def dataset_dir(self) -> Path:
        """The folder holding ``Tile N/`` (``root`` or its archive subfolder)."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: dataset root not found (expected the folder "
                            f"holding 'Tile 1/', or its parent holding '{ARCHIVE_FOLDER}/')")
        if any(_GROUP.match(p.name) for p in self.root.iterdir() if p.is_dir()):
            return self.root
        inner = self.root / ARCHIVE_FOLDER
        if inner.is_dir():
            return inner
        raise DataError(f"{self.root}: no 'Tile N' folders here nor in '{ARCHIVE_FOLDER}/' "
                        "(the Dubai layout: Tile N/images/*.jpg and Tile N/masks/*.png)")

    # the val/test lists of the base class hold tile ids: derive them from the groups
    @property
    def val_tiles(self) -> tuple[str, ...]:  # type: ignore[override]
        return self._group_ids(DUBAI_VAL_GROUPS)

    @property
    def test_tiles(self) -> tuple[str, ...]:  # type: ignore[override]
        return self._group_ids(DUBAI_TEST_GROUPS)

    def _group_ids(self, groups: Sequence[str]) -> tuple[str, ...]:
        self.find_tiles()
        return tuple(t for g in groups for t in self._groups.get(g, []))

    def expand(self, key: str, found: dict[str, Tile]) -> list[str] | None:
        """``7``, ``Tile 7`` or ``tile7``: every image of group 7."""
        m = _GROUP.match(key)
        group = m.group(1) if m else key if key.isdigit() else None
        if group is None:
            return None
        group = str(int(group))
        if group not in self._groups:
            raise DataError(f"{self.dataset_dir}: no folder 'Tile {group}' (groups found: "
                            f"{', '.join(sorted(self._groups, key=int)) or 'none'})")
        return list(self._groups[group])

    def find_tiles(self) -> dict[str, Tile]:
        if self._found is not None:
            return self._found
        base = self.dataset_dir
        self._check_classes_json(base / "classes.json")
        tiles: dict[str, Tile] = {}
        groups: dict[str, list[str]] = {}
        for folder in sorted(base.iterdir()):
            m = _GROUP.match(folder.name)
            if not (folder.is_dir() and m):
                continue
            group = str(int(m.group(1)))
            images = folder / "images"
            if not images.is_dir():
                raise DataError(f"{images}: folder not found (expected the images of "
                                f"{folder.name})")
            masks = folder / "masks"
            labels = {p.stem: p for p in masks.iterdir() if p.is_file()} if masks.is_dir() \
                else {}
            for path in sorted(images.iterdir()):
                if not path.is_file() or path.suffix.lower() not in RASTER_SUFFIXES:
                    continue
                part = _PART.search(path.stem)
                tid = f"{group}_{part.group(1) if part else path.stem}"
                label = labels.get(path.stem)
                tiles[tid] = Tile(tid, (BandSource(path, (1, 2, 3), ("R", "G", "B")),),
                                  label, label)
                groups.setdefault(group, []).append(tid)
        if not tiles:
            raise DataError(f"{base}: no images in any 'Tile N/images/' folder")
        self._found, self._groups = tiles, groups
        return tiles

    def _check_classes_json(self, path: Path) -> None:
        """Say once per file where the archive's ``classes.json`` disagrees with the
        colours the masks use (it gives road a colour no mask has); keep the palette."""
        if path in _warned or not path.is_file():
            return
        _warned.add(path)
        try:
            entries = json.loads(path.read_text())["classes"]
            listed = {str(e["title"]).split()[0].lower(): str(e["color"]).lstrip("#").lower()
                      for e in entries}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable (%s); using sssi's Dubai palette", path, exc)
            return
        ours = {n: bytes(c).hex() for n, c in zip(self.palette.classes, self.palette.colors,
                                                  strict=True)}
        wrong = [f"{n} #{listed[n]} (masks use #{c})" for n, c in ours.items()
                 if n in listed and listed[n] != c]
        if wrong:
            log.warning("%s disagrees with the masks for %s; using the colours the masks "
                        "use", path, ", ".join(wrong))
