"""The gate of the label-selection study (issue 32): minutes, no fine-tuning.

Does any selector's order say something about the regions before we spend hours
fine-tuning on its choices? Two readings, on the candidate regions of the training
tiles:

1. **Difficulty**: the Spearman correlation between how early a selector ranks a
   region and how hard the region is for a model trained on *all* the labels from
   scratch (its mean cross-entropy on the region's labelled pixels). A selector above
   about 0.2 finds the hard regions without labels.
2. **Balance**: the class histogram of the regions each selector's order takes at
   1, 5 and 10 % of the pixels (training's own rule, ``data.label_regions``), and its
   normalised entropy (1: every class the same share), against random's over seeds.

    python -m experiments.label_selection.gate --data DIR --scratch SCRATCH.ckpt \\
        --pretext BLOCKS.ckpt --game GAME.ckpt --work WORK \\
        --results experiments/label_selection/results_dubai -- data.input_scale=0.5

Each selection is one ``python -m sssi.select`` run (in this process) into
``WORK/<variant>/regions.json``, kept and reused when the gate is run again. Writes
``RESULTS/gate.csv`` (one row per variant x fraction), ``RESULTS/gate.md`` and
``RESULTS/regions.csv`` (each region's error and class pixels).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
from pathlib import Path
from statistics import mean, stdev

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from rasterio.windows import Window
from scipy.stats import spearmanr

from sssi.cli import compose_entry
from sssi.data.datasets import Region, TileReader
from sssi.data.palettes import IGNORE_INDEX
from sssi.data.ranking import Ranking
from sssi.data.splits import partition_regions, select_label_regions
from sssi.inference import load_segmenter
from sssi.select import run as select_run
from sssi.utils.io import atomic_write_csv, atomic_write_text

log = logging.getLogger("gate")

FRACTIONS = (0.01, 0.05, 0.1)


def variants(pretext: str, game: str, seeds: int) -> dict[str, list[str]]:
    """Each selection the gate scores: its name and its ``sssi.select`` overrides.
    ``game``: the game's checkpoint (its instructor); ``pretext``: the best inpainter
    available (its hole error and its encoder's features)."""
    out = {f"random/seed_{s}": ["selector=random", f"data.split_seed={s}"]
           for s in range(seeds)}
    out.update({
        "texture": ["selector=texture"],
        "instructor": ["selector=instructor", f"select.checkpoint={game}"],
        "inpainter_error": ["selector=inpainter_error", f"select.checkpoint={pretext}"],
        "diversity/pretext": ["selector=diversity", f"select.features={pretext}"],
        "diversity/random_weights": ["selector=diversity", "select.features=null"],
        "typical/pretext": ["selector=typical", f"select.features={pretext}"],
        "typical/random_weights": ["selector=typical", "select.features=null"],
        "instructor+clusters": ["selector=instructor", f"select.checkpoint={game}",
                                f"select.features={pretext}", "select.clusters=8"],
        "texture+clusters": ["selector=texture", f"select.features={pretext}",
                             "select.clusters=8"],
    })
    return out


def select(name: str, overrides: list[str], base: list[str], work: Path) -> Path:
    """``WORK/name/regions.json``, made by ``sssi.select`` unless it is there."""
    out = work / name
    if not (out / "regions.json").is_file():
        select_run(compose_entry("select", [*base, *overrides, "select.picture=true"], out))
    return out / "regions.json"


@torch.no_grad()
def region_truth(base: list[str], scratch: str, work: Path) -> dict:
    """Per candidate region: the scratch model's mean cross-entropy and pixel error on its
    labelled pixels, and its class pixel counts (cached in ``WORK/truth.json``)."""
    cache = work / "truth.json"
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("scratch") == scratch:
            return saved
    cfg = compose_entry("train", base, work / "truth")
    datamodule = instantiate(cfg.data)
    tiles, sizes = datamodule.scan(None, labels=True)
    regions = partition_regions(sizes, int(cfg.data.region_size))
    loaded = load_segmenter(scratch)
    model = loaded.predictor()
    reader = TileReader(tiles, datamodule.layout.palette)
    k = loaded.num_classes
    rows = []
    for r in regions:
        window = Window(r.col, r.row, r.width, r.height)
        label = torch.from_numpy(reader.label(r.tile, window).astype(np.int64))
        x = loaded.normalize(reader.image(r.tile, window))[None]
        logits = model(x)[0]
        valid = label != IGNORE_INDEX
        counts = torch.bincount(label[valid], minlength=k)[:k]
        if valid.any():
            ce = F.cross_entropy(logits[None], label[None], ignore_index=IGNORE_INDEX)
            wrong = (logits.argmax(0)[valid] != label[valid]).float().mean()
            ce, wrong = float(ce), float(wrong)
        else:
            ce = wrong = float("nan")
        rows.append({"tile": tiles[r.tile].id, "row": r.row, "col": r.col,
                     "height": r.height, "width": r.width, "cross_entropy": ce,
                     "pixel_error": wrong, "class_pixels": counts.tolist()})
    truth = {"scratch": scratch, "classes": list(loaded.class_names),
             "region_size": int(cfg.data.region_size), "sizes": sizes,
             "tiles": [t.id for t in tiles], "regions": rows}
    atomic_write_text(cache, json.dumps(truth))
    return truth


def balance(counts: np.ndarray) -> float:
    """Normalised entropy of a class pixel histogram: 1 when every class has the same
    share, 0 when one class has them all."""
    p = counts / max(counts.sum(), 1)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum() / math.log(len(counts)))


def partial_spearman(x: np.ndarray, y: np.ndarray, control: np.ndarray) -> float:
    """Spearman's correlation of ``x`` and ``y`` with ``control`` taken out: the Pearson
    correlation of their ranks' residuals after a straight-line fit on ``control``'s
    ranks. What a selector knows about difficulty that ``control`` does not."""
    from scipy.stats import rankdata

    c = np.c_[rankdata(control), np.ones(len(control))]

    def residual(v: np.ndarray) -> np.ndarray:
        r = rankdata(v)
        return r - c @ np.linalg.lstsq(c, r, rcond=None)[0]

    a, b = residual(x), residual(y)
    if min((a * a).sum(), (b * b).sum()) < 1e-9 * len(a):  # all explained by the control
        return float("nan")
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _regions(truth: dict) -> list[Region]:
    """The candidate regions that ``truth`` describes, as the partition has them."""
    index = {t: i for i, t in enumerate(truth["tiles"])}
    return [Region(index[r["tile"]], r["row"], r["col"], r["height"], r["width"])
            for r in truth["regions"]]


def ranked(truth: dict, ranking: Ranking, regions: list[Region] | None = None) -> np.ndarray:
    """``ranking`` as indices into ``truth``'s regions (``regions``, when the caller has
    already built them), label first."""
    return ranking.order(truth["tiles"], regions if regions is not None else _regions(truth),
                         truth["region_size"], key=str(ranking.path))


def earliness(order: np.ndarray, count: int) -> np.ndarray:
    """Per region (of ``count``): how early ``order`` puts it (the first: the highest;
    NaN where it does not rank the region)."""
    early = np.full(count, np.nan)
    early[order] = len(order) - np.arange(len(order))
    return early


def score(truth: dict, ranking: Ranking, control: np.ndarray | None = None) -> list[dict]:
    """The gate's rows of one selection: difficulty correlation (and, given the
    ``control`` selector's earliness, the correlation beyond it) and, per fraction, the
    class shares and balance of what it takes."""
    regions = _regions(truth)
    order = ranked(truth, ranking, regions)
    err = np.array([r["cross_entropy"] for r in truth["regions"]])
    wrong = np.array([r["pixel_error"] for r in truth["regions"]])
    early = earliness(order, len(regions))
    ok = np.isfinite(err) & np.isfinite(early)
    rho_ce = spearmanr(early[ok], err[ok]).statistic
    rho_px = spearmanr(early[ok], wrong[ok]).statistic
    beyond = partial_spearman(early[ok], err[ok], control[ok]) \
        if control is not None else float("nan")
    counts = np.array([r["class_pixels"] for r in truth["regions"]], dtype=np.float64)
    sizes = [tuple(s) for s in truth["sizes"]]
    key = {(r.tile, r.row, r.col): i for i, r in enumerate(regions)}
    out = []
    for f in FRACTIONS:
        chosen, _ = select_label_regions(sizes, truth["region_size"], f, 0, order=order)
        picked = [key[(r.tile, r.row, r.col)] for r in chosen]
        hist = counts[picked].sum(0)
        out.append({"spearman_ce": rho_ce, "spearman_pixel_error": rho_px,
                    "spearman_beyond_texture": beyond,
                    "label_fraction": f, "regions": len(picked),
                    "mean_ce": float(np.nanmean(err[picked])), "balance": balance(hist),
                    **{f"share_{c}": float(h / max(hist.sum(), 1))
                       for c, h in zip(truth["classes"], hist, strict=True)}})
    return out


def table(rows: list[dict], classes: list[str], truth: dict) -> str:
    """``gate.md``: per variant, the correlation and at each fraction the balance and
    class shares; random as mean ± sd over its seeds."""
    counts = np.array([r["class_pixels"] for r in truth["regions"]], dtype=np.float64).sum(0)
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["variant"].split("/seed_")[0], []).append(r)

    def fmt(values: list[float], digits: int = 2) -> str:
        if any(math.isnan(v) for v in values):
            return "–"
        if len(values) > 1:
            return f"{mean(values):.{digits}f} ± {stdev(values):.{digits}f}"
        return f"{values[0]:.{digits}f}"

    buf = io.StringIO()
    buf.write("| selector | Spearman (CE) | Spearman (pixel error) | beyond texture | " +
              " | ".join(f"balance {f:.0%}" for f in FRACTIONS) + " | mean CE 10 % |\n")
    buf.write("|---|" + "---|" * (4 + len(FRACTIONS)) + "\n")
    for name, rs in groups.items():
        at = {f: [r for r in rs if r["label_fraction"] == f] for f in FRACTIONS}
        buf.write(f"| {name} | {fmt([r['spearman_ce'] for r in at[FRACTIONS[0]]])} | "
                  f"{fmt([r['spearman_pixel_error'] for r in at[FRACTIONS[0]]])} | "
                  f"{fmt([r['spearman_beyond_texture'] for r in at[FRACTIONS[0]]])} | " +
                  " | ".join(fmt([r["balance"] for r in at[f]]) for f in FRACTIONS) +
                  f" | {fmt([r['mean_ce'] for r in at[FRACTIONS[-1]]])} |\n")
    buf.write(f"| all regions | | | | {balance(counts):.2f} | | | "
              f"{np.nanmean([r['cross_entropy'] for r in truth['regions']]):.2f} |\n")
    buf.write("\nClass shares of the pixels taken at 5 %:\n\n| selector | " +
              " | ".join(classes) + " |\n|---|" + "---|" * len(classes) + "\n")
    for name, rs in groups.items():
        at = [r for r in rs if r["label_fraction"] == 0.05]
        buf.write(f"| {name} | " + " | ".join(
            fmt([100 * r[f"share_{c}"] for r in at], 1) for c in classes) + " |\n")
    buf.write("| all regions | " + " | ".join(
        f"{100 * c / counts.sum():.1f}" for c in counts) + " |\n")
    return buf.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", required=True, help="Dubai root (data.root)")
    parser.add_argument("--scratch", required=True, help="100 %%-label scratch checkpoint")
    parser.add_argument("--pretext", required=True,
                        help="the best inpainter's checkpoint (hole error, features)")
    parser.add_argument("--game", required=True, help="the game's checkpoint (instructor)")
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=5, help="random's seeds")
    parser.add_argument("--experiment", default="dubai_finetune")
    parser.add_argument("--select-only", action="store_true",
                        help="make the selections and stop (before the scratch model exists)")
    parser.add_argument("overrides", nargs="*", help="more overrides (data.input_scale=0.5)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    base = [f"+experiment={args.experiment}", f"data.root={args.data}", "data.num_workers=0",
            *args.overrides]
    made = {name: select(name, overrides, base, args.work) for name, overrides in
            variants(str(Path(args.pretext).resolve()), str(Path(args.game).resolve()),
                     args.seeds).items()}
    if args.select_only:
        return
    truth = region_truth(base, str(Path(args.scratch).resolve()), args.work)
    texture = earliness(ranked(truth, Ranking.read(made["texture"], key="texture")),
                        len(truth["regions"]))
    rows = []
    for name, path in made.items():
        for row in score(truth, Ranking.read(path, key=name), texture):
            rows.append({"variant": name, **row})
            log.info("%s %.0f%%: Spearman %.3f, balance %.3f", name,
                     100 * row["label_fraction"], row["spearman_ce"], row["balance"])
    args.results.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(args.results / "gate.csv",
                     ({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()}
                      for r in rows), list(rows[0]))
    atomic_write_csv(args.results / "regions.csv", (
        {**{k: r[k] for k in ("tile", "row", "col", "height", "width")},
         "cross_entropy": f"{r['cross_entropy']:.6g}", "pixel_error": f"{r['pixel_error']:.6g}",
         **dict(zip(truth["classes"], r["class_pixels"], strict=True))}
        for r in truth["regions"]),
        ["tile", "row", "col", "height", "width", "cross_entropy", "pixel_error",
         *truth["classes"]])
    atomic_write_text(args.results / "gate.md", table(rows, truth["classes"], truth))
    print(table(rows, truth["classes"], truth))


if __name__ == "__main__":
    main()
