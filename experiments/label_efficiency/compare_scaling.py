"""Two recordings of the budget curve side by side: OTHER minus BASE in points of mIoU,
paired start by start, pooled over pretext seeds.

    python -m experiments.label_efficiency.compare_scaling BASE_CSV OTHER_CSV [OUT_MD]

Both files are ``scaling.csv`` tables of :mod:`collect_scaling` that differ in one
setting of the pretext (a share of random holes for the game, a schedule, ...). A row
of OTHER is paired with the row of BASE that has the same method, pretext seed, budget,
protocol, layer, label fraction and seed: the same labelled regions and the same
pretext seed, so that what the setting changed is what differs. The differences of one
method x budget x protocol/layer x fraction, every (pretext seed, seed) pair one value,
are read by :class:`sssi.aggregate.Paired` (two-sided 95 % t interval). Scratch rows
(both recordings share them) are left out. A second table puts each budget
checkpoint's hole error (and its ratio to Telea's) in BASE beside OTHER's. The tables
go to ``OUT_MD`` (written whole, then renamed) or to standard output.
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path

from sssi.aggregate import Paired, seed_differences
from sssi.errors import DataError
from sssi.utils.io import atomic_write_text

#: what a pair shares besides the seed
CELL = ("method", "pretext_seed", "budget", "protocol", "layer", "label_fraction")
#: what the pairs of one comparison share (the pretext seeds pooled)
POOLED = ("method", "budget", "protocol", "layer", "label_fraction")


def read(path: Path) -> list[dict]:
    """The pretext rows of a ``scaling.csv`` (no scratch); ``mIoU`` is None in a
    budget's row that was not scored."""
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
    missing = [k for k in (*CELL, "seed", "mIoU") if rows and k not in rows[0]]
    if not rows or missing:
        raise DataError(f"{path}: not a collect_scaling table (missing columns "
                        f"{', '.join(missing) or 'and rows'})")

    def number(value: str, kind: type) -> float | int | None:
        return None if value in ("", None) else kind(value)

    return [{**r, "pretext_seed": int(r["pretext_seed"]), "budget": int(r["budget"]),
             "label_fraction": number(r["label_fraction"], float),
             "seed": number(r["seed"], int), "mIoU": number(r["mIoU"], float),
             "hole_error": number(r.get("hole_error"), float),
             "telea_error": number(r.get("telea_error"), float)}
            for r in rows if r["method"] != "scratch"]


def compare(base: list[dict], other: list[dict]) -> list[Paired]:
    """One :class:`Paired` per method x budget x protocol/layer x fraction: ``method`` is
    ``METHOD/BUDGET``, ``baseline`` the protocol/layer, ``seeds`` ``PRETEXT_SEED/SEED``."""
    rows = [{**r, "_base": side is base} for side in (base, other) for r in side
            if r["mIoU"] is not None]
    pairs: dict[tuple, Paired] = {}
    for r, points in seed_differences(rows, lambda r: r["_base"],
                                      lambda r: tuple(r[k] for k in CELL)):
        key = tuple(r[k] for k in POOLED)
        pair = pairs.setdefault(key, Paired(f"{r['method']}/{r['budget']}",
                                            f"{r['protocol']}/{r['layer']}",
                                            r["label_fraction"], [], []))
        pair.seeds.append(f"{r['pretext_seed']}/{r['seed']}")
        pair.differences.append(points)
    return [pairs[k] for k in sorted(pairs)]


def hole_errors(base: list[dict], other: list[dict]) -> list[tuple]:
    """``(method, pretext seed, budget, (error, ratio to Telea) in BASE, in OTHER)`` for
    every budget checkpoint measured in both."""
    def errors(rows: list[dict]) -> dict[tuple, tuple[float, float]]:
        return {(r["method"], r["pretext_seed"], r["budget"]):
                (r["hole_error"], r["hole_error"] / r["telea_error"])
                for r in rows if r["hole_error"] is not None and r["telea_error"]}

    b, o = errors(base), errors(other)
    return [(*k, b[k], o[k]) for k in sorted(b.keys() & o.keys())]


def markdown(pairs: list[Paired], holes: list[tuple], base: str, other: str) -> str:
    lines = [f"`{other}` minus `{base}` (points of mIoU; paired by method, pretext seed, "
             "budget, protocol, fraction and seed; pooled over pretext seeds: mean ± sd of "
             "the differences, two-sided 95 % t interval, verdict)", "",
             "| start | protocol | fraction | pairs | difference | interval | verdict |",
             "|---|---|---|---|---|---|---|"]
    for p in pairs:
        low, high = p.interval
        sd = "" if math.isnan(p.sd) else f" ± {p.sd:.1f}"
        interval = "–" if math.isnan(low) else f"[{low:+.1f}, {high:+.1f}]"
        lines.append(f"| {p.method} | {p.baseline} | {p.fraction:g} | {len(p.differences)} "
                     f"| {p.mean:+.1f}{sd} | {interval} | {p.verdict} |")
    if holes:
        lines += ["", "Hole error of each budget checkpoint (/ Telea's on the same holes)", "",
                  "| start | pretext seed | base | other |", "|---|---|---|---|"]
        lines += [f"| {m}/{budget} | {pseed} | {be:.3f} ({br:.2f}) | {oe:.3f} ({orat:.2f}) |"
                  for m, pseed, budget, (be, br), (oe, orat) in holes]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base", type=Path, help="the reference scaling.csv")
    parser.add_argument("other", type=Path, help="the scaling.csv with the changed setting")
    parser.add_argument("out", type=Path, nargs="?", help="markdown file (default: print)")
    args = parser.parse_args(argv)
    try:
        base, other = read(args.base), read(args.other)
        pairs = compare(base, other)
    except DataError as exc:
        parser.exit(2, f"error: {exc}\n")
    if not pairs:
        parser.exit(2, f"error: no row of {args.other} has its pair in {args.base}\n")
    text = markdown(pairs, hole_errors(base, other), str(args.base), str(args.other))
    if args.out is None:
        print(text, end="")
    else:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
