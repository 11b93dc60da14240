"""Tabulate the budget curve of dubai_scaling.sh: scaling.csv, the gaps to scratch and
their slope per decade of pretext crops, and the plot.

    python -m experiments.label_efficiency.collect_scaling OUT RESULTS_DIR [--no-holes]

Reads ``OUT/pretext/<method>/seed_<s>/budgets/crops_N.ckpt`` (each budget checkpoint's
hole error and Telea's on tile 6 are measured here, by validating the checkpoint with
its run's own data config: the run's CSV log loses a resumed leg's rows), the legs'
``wall_time.tsv`` and ``OUT/score/{probe,finetune}/<start>/fraction_<f>/seed_<s>``
(``probe.json`` per layer, ``metrics.json``'s ``val/mIoU``). Writes
``RESULTS_DIR/scaling.csv`` (one row per method x pretext seed x budget x protocol x
fraction x seed), ``RESULTS_DIR/gaps.md`` (paired gaps to scratch by
:class:`sssi.aggregate.Paired`, and the least-squares slope of the per-seed gaps on
log10 crops with its 95 % interval) and ``RESULTS_DIR/scaling.png``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from sssi.aggregate import Paired, pair_by_seed, seed_differences
from sssi.utils.io import atomic_write_bytes, atomic_write_text

FIELDS = ["method", "pretext_seed", "budget", "crops", "pretext_wall_s", "hole_error",
          "telea_error", "protocol", "layer", "label_fraction", "seed", "mIoU"]


def hole_errors(run: Path, ckpt: Path) -> dict[str, float]:
    """``val/hole_error_random`` and ``_telea`` of ``ckpt`` on its run's validation set."""
    import hydra
    import lightning as L
    from omegaconf import OmegaConf

    from sssi.tasks import PretrainTask

    cfg = OmegaConf.load(run / ".hydra" / "config.yaml")
    cfg.paths.output_dir = str(run)
    datamodule = hydra.utils.instantiate(cfg.data, output_dir=None)
    task = PretrainTask.load_from_checkpoint(ckpt, map_location="cpu")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    # ckpt_path restores the datamodule's state too: the run's band statistics
    (metrics,) = trainer.validate(task, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
    return {"hole_error": float(metrics["val/hole_error_random"]),
            "telea_error": float(metrics["val/hole_error_telea"])}


def pretext_runs(out: Path, measure: bool) -> dict[tuple[str, int, int], dict]:
    """Per (method, pretext seed, budget): crops, cumulative wall seconds, hole errors."""
    import torch

    found = {}
    for run in sorted(out.glob("pretext/*/seed_*")):
        method, seed = run.parent.name, int(run.name.removeprefix("seed_"))
        legs = []  # (last budget, seconds) in the order they ran
        if (run / "wall_time.tsv").is_file():
            for line in (run / "wall_time.tsv").read_text().splitlines():
                budget, start, end = (int(v) for v in line.split("\t"))
                legs.append((budget, end - start))
        for ckpt in sorted(run.glob("budgets/crops_*.ckpt")):
            budget = int(ckpt.stem.removeprefix("crops_"))
            game = torch.load(ckpt, map_location="cpu", weights_only=False).get("game", {})
            crops = int(game.get("inpainter_crops", budget))
            row = {"crops": crops, "pretext_wall_s": _wall(legs, budget)}
            row.update(hole_errors(run, ckpt) if measure else {})
            found[(method, seed, budget)] = row
    return found


def _wall(legs: list[tuple[int, int]], budget: int) -> float | str:
    """Wall seconds to reach ``budget``: the legs before the one that reached it, plus
    that leg's share in proportion to crops (a leg times several budgets at once)."""
    done, start = 0.0, 0
    for last, seconds in legs:
        if budget <= last:
            return round(done + seconds * (budget - start) / max(last - start, 1), 1)
        done, start = done + seconds, last
    return ""


def scores(out: Path) -> list[dict]:
    rows = []
    for path in sorted(out.glob("score/*/**/fraction_*/seed_*")):
        protocol = path.relative_to(out / "score").parts[0]
        start = str(path.parent.parent.relative_to(out / "score" / protocol))
        fraction = float(path.parent.name.removeprefix("fraction_"))
        seed = int(path.name.removeprefix("seed_"))
        base = {"start": start, "protocol": protocol, "label_fraction": fraction, "seed": seed}
        if protocol == "probe" and (path / "probe.json").is_file():
            result = json.loads((path / "probe.json").read_text())
            for layer, s in result["layers"].items():
                rows.append({**base, "layer": layer, "mIoU": s["mIoU"]})
        elif protocol == "finetune" and (path / "metrics.json").is_file():
            value = json.loads((path / "metrics.json").read_text()).get("val/mIoU")
            if value is not None:
                rows.append({**base, "layer": "all", "mIoU": float(value)})
    return rows


def table(out: Path, measure: bool) -> list[dict]:
    pretext = pretext_runs(out, measure)
    rows = []
    for s in scores(out):
        if s["start"] == "scratch":
            key, info = ("scratch", "", 0), {"crops": 0, "pretext_wall_s": 0}
        else:
            method, pseed, budget = s["start"].split("/")
            key = (method, int(pseed.removeprefix("seed_")), int(budget))
            info = pretext.get(key, {})
        rows.append({"method": key[0], "pretext_seed": key[1], "budget": key[2], **info,
                     **{k: s[k] for k in ("protocol", "layer", "label_fraction", "seed",
                                          "mIoU")}})
    for (method, pseed, budget), info in pretext.items():  # budgets not scored yet
        if not any(r["method"] == method and r["pretext_seed"] == pseed and
                   r["budget"] == budget for r in rows):
            rows.append({"method": method, "pretext_seed": pseed, "budget": budget, **info})
    rows.sort(key=lambda r: (r["method"], str(r["pretext_seed"]), r["budget"],
                             r.get("protocol", ""), r.get("layer", ""),
                             r.get("label_fraction", 0), r.get("seed", 0)))
    return rows


def gaps(rows: list[dict]) -> tuple[list[Paired], list[tuple]]:
    """Paired gaps to scratch per start x protocol/layer x fraction, and per method x
    pretext seed x protocol/layer x fraction the slope of the per-seed gaps on log10
    crops (least squares; 95 % t interval; NaN with fewer than two budgets). Where a
    cell has several pretext seeds, rows with pretext seed ``all`` pool them (start
    ``METHOD/all/BUDGET``): every (pretext seed, seed) difference counts as one value,
    so the spread includes the pretext's own seed-to-seed variation (the seeds share
    their labelled regions, so the interval is somewhat narrower than independent
    draws would give). A ``METHOD_decay`` run (the rate decayed towards its last budget)
    adds a line ``METHOD+METHOD_decay``: the base method's points and the decayed run's
    beyond the base's largest budget, the curve as far as it was carried."""
    from scipy.stats import t as student

    def is_scratch(r: dict) -> bool:
        return r["method"] == "scratch"

    def cell(r: dict) -> tuple:
        return f"{r['protocol']}/{r['layer']}", r["label_fraction"]

    # each pretext seed alone, and pooled: every (pretext seed, seed) difference one value
    pairs = pair_by_seed(rows, is_scratch, cell,
                         lambda r: [f"{r['method']}/seed_{r['pretext_seed']}/{r['budget']}",
                                    f"{r['method']}/all/{r['budget']}"],
                         lambda c: f"scratch/{c[0]}")
    points: dict[tuple, list] = {}
    seeds_in: dict[tuple, set] = {}  # the pretext seeds behind each pooled line
    for r, gap in seed_differences(rows, is_scratch, cell):
        point = (math.log10(r["crops"]), gap)
        for pseed in (r["pretext_seed"], "all"):
            points.setdefault((r["method"], pseed, *cell(r)), []).append(point)
        seeds_in.setdefault((r["method"], "all", *cell(r)), set()).add(r["pretext_seed"])
    # pooled lines only where more than one pretext seed is behind them (pair_by_seed
    # applies the same rule to the pooled rows)
    points = {k: v for k, v in points.items() if k[1] != "all" or len(seeds_in[k]) > 1}
    # a decayed run continues its base method's curve: one more line, the base's points
    # (every pretext seed) and the decayed runs' points beyond the base's largest budget
    for (method, pseed, *c), pts in list(points.items()):
        base = method.removesuffix("_decay")
        if base == method or pseed == "all":
            continue
        base_pts = [p for (m, s, *bc), v in points.items() if m == base and s != "all"
                    and bc == c for p in v]
        if not base_pts:
            continue
        top = max(x for x, _ in base_pts)
        extra = [p for p in pts if p[0] > top]
        if extra:
            points.setdefault((f"{base}+{method}", "all", *c), list(base_pts)).extend(extra)
    slopes = []
    for line, pts in sorted(points.items(), key=lambda kv: str(kv[0])):
        x, y = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        if len(set(x.tolist())) < 2 or len(x) < 3:
            slopes.append((*line, math.nan, math.nan, len(x)))
            continue
        slope, intercept = np.polyfit(x, y, 1)
        resid = y - (slope * x + intercept)
        se = math.sqrt(resid @ resid / (len(x) - 2) / ((x - x.mean()) ** 2).sum())
        half = float(student.ppf(0.975, len(x) - 2)) * se
        slopes.append((*line, float(slope), half, len(x)))
    return list(pairs.values()), slopes


def markdown(pairs: list[Paired], slopes: list[tuple]) -> str:
    lines = ["Gap to scratch on tile 6 (points of mIoU; paired by seed: mean ± sd of the "
             "per-seed differences, two-sided 95 % t interval, verdict)", "",
             "| start | protocol | fraction | seeds | gap | interval | verdict |",
             "|---|---|---|---|---|---|---|"]
    for p in sorted(pairs, key=lambda p: (p.baseline, p.method)):
        low, high = p.interval
        lines.append(f"| {p.method} | {p.baseline.removeprefix('scratch/')} | {p.fraction:g} "
                     f"| {len(p.differences)} | {p.mean:+.1f} ± {p.sd:.1f} | "
                     f"[{low:+.1f}, {high:+.1f}] | {p.verdict} |")
    lines += ["", "Slope of the per-seed gap on log10(inpainter crops) (points per decade; "
              "least squares over every budget x seed, ± half the 95 % t interval)", "",
              "| method | pretext seed | protocol | fraction | slope / decade | points |",
              "|---|---|---|---|---|---|"]
    for method, pseed, protocol, fraction, slope, half, n in slopes:
        value = "–" if math.isnan(slope) else f"{slope:+.1f} ± {half:.1f}"
        lines.append(f"| {method} | {pseed} | {protocol} | {fraction:g} | {value} | {n} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], pairs: list[Paired], fraction: float = 0.1) -> bytes:
    """Left: the gap to scratch against crops at ``fraction`` of the labels (the fraction
    scored at every budget; the others are in gaps.md), both protocols, each line
    shifted a little along x so that the error bars do not hide each other; right: the
    hole error against crops with Telea's line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crops = {}
    for r in rows:
        if r["method"] != "scratch":
            crops[f"{r['method']}/seed_{r['pretext_seed']}/{r['budget']}"] = r.get("crops")
            crops.setdefault(f"{r['method']}/all/{r['budget']}", r.get("crops"))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    series: dict[tuple, list] = {}
    pooled = {(p.method.split("/")[0], p.baseline, p.fraction) for p in pairs
              if "/all/" in p.method}
    for p in pairs:
        if p.fraction != fraction:
            continue
        method = p.method.rsplit("/", 1)[0]
        if (method.split("/")[0], p.baseline, p.fraction) in pooled and "/all" not in method:
            continue  # a line with several pretext seeds: drawn pooled only
        series.setdefault((method, p.baseline.removeprefix("scratch/"), p.fraction), []).append(
            (crops[p.method], p.mean, p.sd if len(p.differences) > 1 else 0.0))
    for i, ((method, protocol, _), pts) in enumerate(sorted(series.items())):
        pts.sort()
        shift = 10 ** (0.012 * (i - (len(series) - 1) / 2))
        left.errorbar([p[0] * shift for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts],
                      marker="o", capsize=3, label=f"{method} {protocol}")
    left.axhline(0, color="k", lw=0.8)
    left.set_xscale("log")
    left.set(xlabel="pretext inpainter crops", ylabel="mIoU gap to scratch (points)",
             title=f"benefit of pretraining, tile 6, {100 * fraction:g} % of the labels")
    if series:
        left.legend(fontsize=7)
    holes: dict[tuple, list] = {}
    for r in rows:
        if r["method"] != "scratch" and r.get("hole_error") not in (None, ""):
            holes.setdefault((r["method"], r["pretext_seed"]), {})[r["crops"]] = (
                r["hole_error"], r["telea_error"])
    telea = []
    for (method, pseed), by_crops in sorted(holes.items()):
        xs = sorted(by_crops)
        right.plot(xs, [by_crops[x][0] for x in xs], marker="o", label=f"{method} seed {pseed}")
        telea += [by_crops[x][1] for x in xs]
    if telea:
        right.axhline(float(np.mean(telea)), color="k", ls="--", label="OpenCV Telea")
    right.set_xscale("log")
    right.set(xlabel="pretext inpainter crops", ylabel="hole error (tile 6)",
              title="does the pretext learn to inpaint?")
    if holes:
        right.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="dubai_scaling.sh's OUT folder")
    parser.add_argument("results", type=Path, help="where scaling.csv, gaps.md, the plot go")
    parser.add_argument("--no-holes", action="store_true",
                        help="skip measuring the budget checkpoints' hole errors")
    args = parser.parse_args(argv)
    rows = table(args.out, measure=not args.no_holes)
    text = io.StringIO()
    writer = csv.DictWriter(text, FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.results / "scaling.csv", text.getvalue())
    pairs, slopes = gaps(rows)
    report = markdown(pairs, slopes)
    atomic_write_text(args.results / "gaps.md", report)
    atomic_write_bytes(args.results / "scaling.png", plot(rows, pairs))
    print(report)


if __name__ == "__main__":
    main()
