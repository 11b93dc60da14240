"""Tabulate the Dubai investigation (dubai_investigation.sh): validation-tile scores only.

    python experiments/label_efficiency/collect_investigation.py OUT [--out FILE.md]

Reads ``OUT/{probe,finetune}/<name>/seed_<s>/metrics.json`` (``val/mIoU`` on tile 6) and,
for the pretext runs ``OUT/pretext/<name>/csv/metrics.csv``, the last validation's hole
errors and the instructor's edge vs inner erase frequency. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path


def scores(folder: Path) -> dict[str, dict[int, float]]:
    """``{name: {seed: val/mIoU}}`` of the finished runs under ``folder``."""
    out: dict[str, dict[int, float]] = {}
    for metrics in sorted(folder.glob("*/seed_*/metrics.json")):
        value = json.loads(metrics.read_text()).get("val/mIoU")
        if value is not None:
            seed = int(metrics.parent.name.removeprefix("seed_"))
            out.setdefault(metrics.parent.parent.name, {})[seed] = float(value)
    return out


def pretext_rows(folder: Path) -> list[list[str]]:
    rows = []
    for log in sorted(folder.glob("*/csv/metrics.csv")):
        last: dict[str, str] = {}
        with log.open() as f:
            for row in csv.DictReader(f):
                if row.get("val/hole_error_random"):
                    last = row
        if not last:
            continue

        def cell(key: str, last: dict[str, str] = last) -> str:
            return f"{float(last[key]):.3f}" if last.get(key) else "–"

        rows.append([log.parent.parent.name, str(int(float(last["epoch"])) + 1),
                     cell("val/hole_error_random"), cell("val/hole_error_instructor"),
                     cell("val/border_freq"), cell("val/inner_freq"), cell("val/border_ratio")])
    return rows


def _fmt(values: dict[int, float]) -> str:
    """``mean (seed s: value, ...)``, or the value and its seed for one run."""
    seeds = sorted(values)
    each = ", ".join(f"s{s} {100 * values[s]:.1f}" for s in seeds)
    if len(seeds) == 1:
        return each.replace(f"s{seeds[0]} ", "") + f" (s{seeds[0]})"
    return f"{100 * statistics.fmean(values.values()):.1f} ({each})"


def table(out: Path) -> str:
    lines = ["Pretext runs (last validation on tile 6 windows; erase frequency of edge vs "
             "inner cells of the instructor's hard masks, 0.25 each when unbiased):", "",
             "| run | epochs | hole error, random masks | hole error, instructor masks | "
             "edge freq | inner freq | edge/inner |", "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(r) + " |" for r in pretext_rows(out / "pretext")]
    probe, finetune = scores(out / "probe"), scores(out / "finetune")
    lines += ["", "val/mIoU on tile 6 (%, mean (seed: value)), 10 % of the labelled pixels:",
              "", "| setting | probe | fine-tune |", "|---|---|---|"]
    for name in sorted(set(probe) | set(finetune)):
        lines.append(f"| {name} | {_fmt(probe[name]) if name in probe else '–'} | "
                     f"{_fmt(finetune[name]) if name in finetune else '–'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--out", dest="file", type=Path, default=None)
    args = parser.parse_args()
    text = table(args.out)
    print(text)
    if args.file:
        args.file.write_text(text)


if __name__ == "__main__":
    main()
