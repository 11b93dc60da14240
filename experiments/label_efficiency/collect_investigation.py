"""Tabulate the Dubai investigation (dubai_investigation.sh): validation-tile scores only.

    python experiments/label_efficiency/collect_investigation.py OUT [--out FILE.md]

Reads ``OUT/{probe,finetune}/<name>/seed_<s>/metrics.json`` (``val/mIoU`` on tile 6) and,
for the pretext runs ``OUT/pretext/<name>/csv/metrics.csv``, the last validation's hole
errors (with OpenCV Telea's on the same random holes and the ratio, when logged) and the
instructor's edge vs inner erase frequency. Prints markdown tables.

The scores go through :mod:`sssi.aggregate` (its runs, groups and mean ± sample std over
seeds), with one difference in how runs are named: here a run's method is its folder's
``<name>``. To its config every run of the investigation is the same experiment (one
``study.label`` or ``task_name``, one fraction), so ``read_run``'s method would put them
all in one group and ``find_runs`` would keep one run per seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

from sssi.aggregate import Group, Run, group_runs, metric_value, read_run
from sssi.errors import SssiError

METRIC = "val/mIoU"
#: the label fraction of every score of dubai_investigation.sh (``dubai_finetune``'s
#: ``data.label_fraction``): that of a run folder without ``.hydra/config.yaml``
DEFAULT_FRACTION = 0.1
#: optional pretext columns: (csv key, header), shown when some run logged them
TELEA_COLUMNS = (("val/hole_error_telea", "hole error, Telea (random masks)"),
                 ("val/hole_error_vs_telea", "random / Telea"))


def _seed(folder: Path) -> int | str:
    seed = folder.name.removeprefix("seed_")
    return int(seed) if seed.isdigit() else seed


def read_runs(folder: Path) -> list[Run]:
    """The finished runs under ``folder`` (``<name>/seed_<s>/metrics.json``) that scored
    ``val/mIoU``: method ``<name>``, the seed of the folder, the label fraction of the
    run's ``.hydra/config.yaml`` (read by ``sssi.aggregate.read_run``), or
    :data:`DEFAULT_FRACTION` without one."""
    runs = []
    for metrics in sorted(folder.glob("*/seed_*/metrics.json")):
        path = metrics.parent
        if (path / ".hydra" / "config.yaml").is_file():
            run = read_run(path)
        else:  # no config (copied or hand-made scores): the metrics alone
            values = json.loads(metrics.read_text())
            if not isinstance(values, dict):
                continue
            run = Run(path=path, method="", fraction=DEFAULT_FRACTION, seed=_seed(path),
                      metrics={k: float(v) for k, v in values.items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool)})
        if run is not None and not math.isnan(metric_value(run.metrics, METRIC)):
            runs.append(replace(run, method=path.parent.name, seed=_seed(path)))
    return runs


def scores(folder: Path) -> list[Group]:
    """The runs under ``folder`` grouped by name and label fraction (``sssi.aggregate``)."""
    return group_runs(read_runs(folder), [METRIC])


def pretext_rows(folder: Path) -> tuple[list[list[str]], list[str]]:
    """One row per pretext run (its last validation), and the headers of the optional
    columns that some run logged (Telea's hole error and the ratio), which end each row."""
    lasts: list[tuple[str, dict[str, str]]] = []
    for log in sorted(folder.glob("*/csv/metrics.csv")):
        last: dict[str, str] = {}
        with log.open() as f:
            for row in csv.DictReader(f):
                if row.get("val/hole_error_random"):
                    last = row
        if last:
            lasts.append((log.parent.parent.name, last))
    extra = [(key, head) for key, head in TELEA_COLUMNS
             if any(last.get(key) for _, last in lasts)]
    rows = []
    for name, last in lasts:
        def cell(key: str, last: dict[str, str] = last) -> str:
            return f"{float(last[key]):.3f}" if last.get(key) else "–"

        rows.append([name, str(int(float(last["epoch"])) + 1),
                     cell("val/hole_error_random"), cell("val/hole_error_instructor"),
                     cell("val/border_freq"), cell("val/inner_freq"), cell("val/border_ratio"),
                     *(cell(key) for key, _ in extra)])
    return rows, [head for _, head in extra]


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def _fmt(group: Group) -> str:
    """``mean ± std (s<seed> value, ...)`` as ``sssi.aggregate`` computes them (sample std
    over seeds), or the value and its seed for one run."""
    pairs = sorted(zip(group.seeds, group.values[METRIC], strict=True),
                   key=lambda p: (isinstance(p[0], str), p[0]))
    mean, std = group.stats(METRIC)
    if len(pairs) == 1:
        return f"{_pct(mean)} (s{pairs[0][0]})"
    each = ", ".join(f"s{s} {_pct(v)}" for s, v in pairs)
    return f"{_pct(mean)} ± {_pct(std)} ({each})"


def _fraction(f: float) -> str:
    return "? %" if math.isnan(f) else f"{100 * f:g} %"


def table(out: Path) -> str:
    rows, extra = pretext_rows(out / "pretext")
    telea = ("; Telea: OpenCV's inpainting of the same random holes, random / Telea: the "
             "inpainter's hole error over Telea's, below 1 when the inpainter is the better"
             if extra else "")
    head = ["run", "epochs", "hole error, random masks", "hole error, instructor masks",
            "edge freq", "inner freq", "edge/inner", *extra]
    lines = ["Pretext runs (last validation on tile 6 windows; erase frequency of edge vs "
             f"inner cells of the instructor's hard masks, 0.25 each when unbiased{telea}):",
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]

    protocols = {p: {(g.method, g.fraction): g for g in scores(out / p)}
                 for p in ("probe", "finetune")}
    keys = sorted(set(protocols["probe"]) | set(protocols["finetune"]),
                  key=lambda k: (k[0], math.isnan(k[1]), k[1]))
    # one label fraction (the script's): named in the header; several: in each row
    fractions = sorted({_fraction(f) for _, f in keys}) or [_fraction(DEFAULT_FRACTION)]
    several = len(fractions) > 1
    fraction = ("the fraction of the labelled pixels in each row" if several
                else f"{fractions[0]} of the labelled pixels")
    lines += ["", f"val/mIoU on tile 6 (%, mean ± std over seeds (seed: value)), {fraction}:",
              "", "| setting | probe | fine-tune |", "|---|---|---|"]
    for name, f in keys:
        label = f"{name} ({_fraction(f)})" if several else name
        probe, finetune = (protocols[p].get((name, f)) for p in ("probe", "finetune"))
        lines.append(f"| {label} | {_fmt(probe) if probe else '–'} | "
                     f"{_fmt(finetune) if finetune else '–'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--out", dest="file", type=Path, default=None)
    args = parser.parse_args()
    try:
        text = table(args.out)
    except SssiError as err:  # a run's config or metrics.json that cannot be read
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(text)
    if args.file:
        args.file.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
