"""Tabulate the tile-7 test of ``dubai_scaling.sh test``: the reported table of the budget
study, at the budget its curve on tile 6 chose.

    python -m experiments.label_efficiency.collect_tile7 OUT RESULTS_DIR

Reads ``OUT/test/probe/<start>/fraction_<f>/seed_<s>/probe.json`` (each layer's
``test`` scores: the test split's windows) and ``OUT/test/finetune/<start>/
fraction_<f>/seed_<s>/metrics.json`` (``sssi.evaluate`` on tile 7's whole images).
``<start>`` is ``scratch`` or ``METHOD/seed_P/BUDGET``. Writes ``RESULTS_DIR/tile7.csv``
(one row per start x protocol x fraction x seed) and ``RESULTS_DIR/tile7.md``: mIoU per
start (mean ± sd over seeds) and the gaps to scratch paired by seed
(:class:`sssi.aggregate.Paired`, two-sided), each pretext seed alone and, where a method
has several, pooled (``METHOD/all/BUDGET``: every pretext seed x seed difference counts).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from sssi.aggregate import Paired, mean_sd_pct, pair_by_seed
from sssi.utils.io import atomic_write_csv, atomic_write_text

FIELDS = ["start", "protocol", "label_fraction", "seed", "mIoU"]
PROTOCOLS = ["finetune", "probe/layer3", "probe/layer4"]


def rows(out: Path) -> list[dict]:
    """One row per finished test job."""
    found = []
    for path in sorted((out / "test").glob("*/**/fraction_*/seed_*")):
        protocol = path.relative_to(out / "test").parts[0]
        base = {"start": str(path.parent.parent.relative_to(out / "test" / protocol)),
                "label_fraction": float(path.parent.name.removeprefix("fraction_")),
                "seed": int(path.name.removeprefix("seed_"))}
        if protocol == "probe" and (path / "probe.json").is_file():
            layers = json.loads((path / "probe.json").read_text())["layers"]
            found += [{**base, "protocol": f"probe/{layer}", "mIoU": s["test"]["mIoU"]}
                      for layer, s in layers.items() if "test" in s]
        elif protocol == "finetune" and (path / "metrics.json").is_file():
            value = json.loads((path / "metrics.json").read_text()).get("mIoU")
            if value is not None:
                found.append({**base, "protocol": "finetune", "mIoU": float(value)})
    found.sort(key=lambda r: (r["start"] != "scratch", r["start"], r["protocol"],
                              r["label_fraction"], r["seed"]))
    return found


def pooled_name(start: str) -> str:
    """``blocks/seed_1/30720`` -> ``blocks/all/30720``."""
    method, _, budget = start.split("/")
    return f"{method}/all/{budget}"


def gaps(found: list[dict]) -> list[Paired]:
    """Paired gaps (points of mIoU) to scratch per start x protocol x fraction; pooled
    rows where a method x budget has more than one pretext seed."""
    def is_scratch(r: dict) -> bool:
        return r["start"] == "scratch"

    def cell(r: dict) -> tuple:
        return r["protocol"], r["label_fraction"]

    pairs = pair_by_seed(found, is_scratch, cell,
                         lambda r: [r["start"], pooled_name(r["start"])],
                         lambda c: f"scratch/{c[0]}")
    return [p for _, p in sorted(pairs.items(), key=lambda kv: str(kv[0]))]


def _order(start: str) -> tuple:
    """Pretext starts by method and budget, each pretext seed then the pooled row;
    scratch last."""
    if start == "scratch":
        return (1,)
    method, pseed, budget = start.split("/")
    return (0, method, int(budget), pseed == "all", pseed)


def markdown(found: list[dict], pairs: list[Paired]) -> str:
    fractions = sorted({r["label_fraction"] for r in found})
    pooled = {p.method for p in pairs if "/all/" in p.method}
    starts = sorted({r["start"] for r in found} | pooled, key=_order)
    head = " / ".join(f"{100 * f:g} %" for f in fractions)
    lines = [f"Test tile 7, mIoU (%, mean ± sd over seeds; pooled rows: over every pretext "
             f"seed x seed) at {head} of the labelled pixels",
             "", "| start | " + " | ".join(PROTOCOLS) + " |",
             "|---" * (len(PROTOCOLS) + 1) + "|"]
    for start in starts:
        cells = []
        for protocol in PROTOCOLS:
            per_fraction = []
            for f in fractions:
                if "/all/" in start:
                    runs = [r for r in found if r["start"] != "scratch" and
                            pooled_name(r["start"]) == start]
                    if len({r["start"] for r in runs if r["protocol"] == protocol and
                            r["label_fraction"] == f}) < 2:
                        runs = []
                else:
                    runs = [r for r in found if r["start"] == start]
                per_fraction.append(mean_sd_pct([r["mIoU"] for r in runs
                                                 if r["protocol"] == protocol
                                                 and r["label_fraction"] == f]))
            cells.append(" / ".join(per_fraction))
        lines.append(f"| {start} | " + " | ".join(cells) + " |")
    lines += ["", "Gap to scratch on tile 7 (points of mIoU; paired by seed: mean ± sd of "
              "the per-seed differences, two-sided 95 % t interval, verdict)", "",
              "| start | protocol | fraction | pairs | gap | interval | verdict |",
              "|---|---|---|---|---|---|---|"]
    for p in sorted(pairs, key=lambda p: (p.baseline, p.fraction, p.method)):
        low, high = p.interval
        interval = "–" if math.isnan(low) else f"[{low:+.1f}, {high:+.1f}]"
        lines.append(f"| {p.method} | {p.baseline.removeprefix('scratch/')} | "
                     f"{100 * p.fraction:g} % | {len(p.differences)} | {p.mean:+.1f} ± "
                     f"{'–' if math.isnan(p.sd) else f'{p.sd:.1f}'} | {interval} | "
                     f"{p.verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="dubai_scaling.sh's OUT folder")
    parser.add_argument("results", type=Path, help="where tile7.csv and tile7.md go")
    args = parser.parse_args(argv)
    found = rows(args.out)
    if not found:
        parser.error(f"{args.out / 'test'}: no finished test job (run dubai_scaling.sh test)")
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(args.results / "tile7.csv", found, FIELDS)
    atomic_write_text(args.results / "tile7.md", markdown(found, gaps(found)))
    print(f"{len(found)} rows -> {args.results / 'tile7.csv'}, {args.results / 'tile7.md'}")


if __name__ == "__main__":
    main()
