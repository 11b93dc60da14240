"""Tabulate the label-selection study (``dubai_selection.sh``): mIoU per start x selector
x fraction, and each selector against random, paired by seed.

    python -m experiments.label_selection.collect OUT RESULTS_DIR

Reads ``OUT/train/<start>/<selector>/fraction_<f>/seed_<s>/metrics.json`` (``val/mIoU``:
tile 6, where every choice is made) and, where the test stage ran,
``OUT/test/.../metrics.json`` (``mIoU``: tile 7). Writes ``RESULTS_DIR/runs.csv`` (one
row per run and split), ``RESULTS_DIR/table.md`` (mean ± sd over seeds, and the gaps to
random: :class:`sssi.aggregate.Paired`, two-sided; with several starts, also each seed's
gap averaged over the starts) and ``RESULTS_DIR/selection.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path
from statistics import mean, stdev

import numpy as np

from experiments.label_selection.gate import balance
from sssi.aggregate import Paired, mean_sd_pct, pair_by_seed
from sssi.utils.io import atomic_write_bytes, atomic_write_csv, atomic_write_text

FIELDS = ["split", "start", "selector", "label_fraction", "seed", "mIoU", "balance",
          "difficulty"]
REGION_KEYS = ("tile", "row", "col", "height", "width", "cross_entropy", "pixel_error")
SPLITS = {"train": ("val/mIoU", "tile 6"), "test": ("mIoU", "tile 7")}


def region_facts(path: Path) -> tuple[list[str], dict[tuple, tuple[np.ndarray, float]]]:
    """The gate's ``regions.csv``: the classes, and per region ``(tile, row, col)`` its
    class pixels and the 100 %-label scratch model's cross-entropy on it."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        classes = [c for c in reader.fieldnames or [] if c not in REGION_KEYS]
        facts = {(r["tile"], int(r["row"]), int(r["col"])):
                 (np.array([float(r[c]) for c in classes]), float(r["cross_entropy"]))
                 for r in reader}
    return classes, facts


def labelled_facts(run: Path, facts: dict[tuple, tuple[np.ndarray, float]]) -> dict:
    """What a run's labelled regions (its ``label_split.json``) hold: ``balance``, the
    normalised entropy of their class pixels (the gate's measure), and ``difficulty``,
    their cross-entropy under the 100 %-label scratch model, weighted by pixels."""
    split = run / "label_split.json"
    if not split.is_file():
        return {}
    found = [facts.get((r["tile"], int(r["row"]), int(r["col"])))
             for r in json.loads(split.read_text())["regions"]]
    if not found or any(f is None for f in found):
        return {}
    pixels = np.sum([f[0] for f in found], axis=0)
    weights = np.array([f[0].sum() for f in found])
    return {"balance": balance(pixels),
            "difficulty": float(np.average([f[1] for f in found], weights=weights))}


def rows(out: Path, facts: dict | None = None) -> list[dict]:
    """One row per finished run (and per test evaluation); with the gate's region
    ``facts``, a training run's row also says what its labelled regions hold."""
    found = []
    for split, (key, _) in SPLITS.items():
        for path in sorted((out / split).glob("*/*/fraction_*/seed_*/metrics.json")):
            run = path.parent
            value = json.loads(path.read_text()).get(key)
            if value is None:
                continue
            row = {"split": split, "start": run.parents[2].name,
                   "selector": run.parents[1].name,
                   "label_fraction": float(run.parent.name.removeprefix("fraction_")),
                   "seed": int(run.name.removeprefix("seed_")), "mIoU": float(value)}
            if facts and split == "train":
                row.update(labelled_facts(run, facts))
            found.append(row)
    return found


def what_goes_with_miou(found: list[dict]) -> list[tuple]:
    """``(start, fraction, runs, rho balance, rho difficulty)``: Spearman's correlation,
    over every training run of a start and fraction (all selectors and seeds), of tile
    6's mIoU with the balance and with the difficulty of the run's labelled regions."""
    from scipy.stats import spearmanr

    out = []
    mine = [r for r in found if r["split"] == "train" and "balance" in r]
    for start, fraction in sorted({(r["start"], r["label_fraction"]) for r in mine}):
        cell = [r for r in mine if r["start"] == start and r["label_fraction"] == fraction]
        if len(cell) < 3:
            continue
        miou = [r["mIoU"] for r in cell]
        out.append((start, fraction, len(cell),
                    float(spearmanr(miou, [r["balance"] for r in cell]).statistic),
                    float(spearmanr(miou, [r["difficulty"] for r in cell]).statistic)))
    return out


def gaps(found: list[dict]) -> list[tuple[str, str, Paired]]:
    """``(split, start, pair)``: each selector against random at each fraction, paired by
    seed (points of mIoU)."""
    pairs = pair_by_seed(found, lambda r: r["selector"] == "random",
                         lambda r: (r["split"], r["start"], r["label_fraction"]),
                         lambda r: [r["selector"]], lambda cell: "random")
    return [(k[1], k[2], p) for k, p in sorted(pairs.items(), key=lambda kv: str(kv[0]))]


def start_averaged(pairs: list[tuple[str, str, Paired]]) -> list[tuple[str, Paired]]:
    """``(split, pair)`` per selector x fraction over every start: each seed's gap to
    random averaged over the starts, for the seeds that every start has. One value per
    seed keeps the pairs independent (a seed's labelled regions are the same for every
    start, so pooling the starts' gaps as separate values would count them twice)."""
    starts = {start for _, start, _ in pairs}
    if len(starts) < 2:
        return []
    by: dict[tuple, dict[int, dict[str, float]]] = {}
    for split, start, pair in pairs:
        for seed, gap in zip(pair.seeds, pair.differences, strict=True):
            by.setdefault((split, pair.method, pair.fraction), {}).setdefault(seed, {})[start] = gap
    out = []
    for (split, method, fraction), seeds in sorted(by.items(), key=lambda kv: str(kv[0])):
        full = sorted(seed for seed, gaps in seeds.items() if len(gaps) == len(starts))
        if full:
            out.append((split, Paired(method, "random", fraction, full,
                                      [mean(seeds[seed].values()) for seed in full])))
    return out


def _gap(pair: Paired | None) -> str:
    if pair is None:
        return "–"
    return f"{pair.mean:+.1f} ± {pair.sd:.1f} {pair.verdict} (n={len(pair.differences)})"


def markdown(found: list[dict], pairs: list[tuple[str, str, Paired]]) -> str:
    lines = []
    every_start = start_averaged(pairs)
    for split, (_, where) in SPLITS.items():
        mine = [r for r in found if r["split"] == split]
        if not mine:
            continue
        fractions = sorted({r["label_fraction"] for r in mine})
        head = " | ".join(f"{100 * f:g} %" for f in fractions)
        for start in sorted({r["start"] for r in mine}):
            lines += [f"### {where}, start: {start}", "",
                      "mIoU (%, mean ± sd over seeds) | gap to random, paired by seed "
                      "(points, mean ± sd, two-sided verdict)", "",
                      f"| selector | {head} | " + " | ".join(f"gap {100 * f:g} %"
                                                           for f in fractions) + " |",
                      "|---" * (1 + 2 * len(fractions)) + "|"]
            selectors = sorted({r["selector"] for r in mine if r["start"] == start},
                               key=lambda s: (s != "random", s))
            for sel in selectors:
                cells = [mean_sd_pct([r["mIoU"] for r in mine if r["start"] == start and
                                r["selector"] == sel and r["label_fraction"] == f])
                         for f in fractions]
                for f in fractions:
                    pair = next((p for s, st, p in pairs if s == split and st == start and
                                 p.method == sel and p.fraction == f), None)
                    cells.append(_gap(pair))
                lines.append(f"| {sel} | " + " | ".join(cells) + " |")
            lines.append("")
        averaged = [p for s, p in every_start if s == split]
        if averaged:
            lines += [f"### {where}, every start: each seed's gap averaged over the starts",
                      "", "gap to random (points, mean ± sd over seeds, two-sided verdict)",
                      "", "| selector | " + " | ".join(f"gap {100 * f:g} %" for f in fractions)
                      + " |", "|---" * (1 + len(fractions)) + "|"]
            for sel in sorted({p.method for p in averaged}):
                cells = []
                for f in fractions:
                    pair = next((p for p in averaged if p.method == sel and p.fraction == f),
                                None)
                    cells.append(_gap(pair))
                lines.append(f"| {sel} | " + " | ".join(cells) + " |")
            lines.append("")
    explained = what_goes_with_miou(found)
    if explained:
        lines += ["### What goes with a run's mIoU (tile 6)", "",
                  "Spearman's correlation over every run of a start and fraction (all "
                  "selectors and seeds) of its mIoU with what its labelled regions hold: "
                  "balance (normalised entropy of their class pixels) and difficulty (the "
                  "100 %-label scratch model's cross-entropy on them)", "",
                  "| start | fraction | runs | mIoU ~ balance | mIoU ~ difficulty |",
                  "|---|---|---|---|---|"]
        lines += [f"| {start} | {100 * f:g} % | {n} | {rb:+.2f} | {rd:+.2f} |"
                  for start, f, n, rb, rd in explained]
        lines.append("")
    return "\n".join(lines)


def plot(found: list[dict], path: Path) -> None:
    """mIoU on tile 6 against the label fraction, one line per selector, one panel per
    start (mean and ± sd band over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in found if r["split"] == "train"]
    starts = sorted({r["start"] for r in mine})
    if not starts:
        return
    fig, axes = plt.subplots(1, len(starts), figsize=(5 * len(starts), 4), squeeze=False)
    for ax, start in zip(axes[0], starts, strict=True):
        for sel in sorted({r["selector"] for r in mine if r["start"] == start}):
            fr = sorted({r["label_fraction"] for r in mine if r["start"] == start and
                         r["selector"] == sel})
            vals = [[100 * r["mIoU"] for r in mine if r["start"] == start and
                     r["selector"] == sel and r["label_fraction"] == f] for f in fr]
            mu = [mean(v) for v in vals]
            sd = [stdev(v) if len(v) > 1 else 0.0 for v in vals]
            style = {"color": "black", "lw": 2} if sel == "random" else {}
            ax.plot([100 * f for f in fr], mu, marker="o", label=sel, **style)
            ax.fill_between([100 * f for f in fr], [m - s for m, s in zip(mu, sd, strict=True)],
                            [m + s for m, s in zip(mu, sd, strict=True)], alpha=0.12,
                            **({"color": "black"} if sel == "random" else {}))
        ax.set_xscale("log")
        ax.set_xlabel("labelled pixels (%)")
        ax.set_ylabel("mIoU on tile 6 (%)")
        ax.set_title(f"start: {start}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="the study's OUT folder")
    parser.add_argument("results", type=Path, help="where the tables go")
    parser.add_argument("--regions", type=Path, default=None,
                        help="the gate's regions.csv: each run's labelled regions get their "
                             "balance and difficulty")
    args = parser.parse_args(argv)
    facts = region_facts(args.regions)[1] if args.regions else None
    found = rows(args.out, facts)
    if not found:
        raise SystemExit(f"error: no finished run under {args.out}/train")
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(args.results / "runs.csv",
                     ({**r, **{k: f"{r[k]:.6f}" for k in ("mIoU", "balance", "difficulty")
                               if k in r}} for r in found), FIELDS)
    text = markdown(found, gaps(found))
    atomic_write_text(args.results / "table.md", text)
    plot(found, args.results / "selection.png")
    print(text)


if __name__ == "__main__":
    main()
