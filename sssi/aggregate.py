"""Collect finished runs into one table: ``python -m sssi.aggregate RUNS_DIR [...]``.

A run folder is any folder under ``RUNS_DIR`` with ``.hydra/config.yaml`` (written by
every ``python -m sssi.train`` run; such folders inside a run, like the ``evaluation/``
of ``sssi.evaluate``, belong to that run) and a metrics file (``metrics.json`` by default;
``--metrics-file evaluation/metrics.json`` reads what ``sssi.evaluate`` wrote inside
the run). Runs are grouped by a method key (``study.method``, else ``task_name``) and
the label fraction, and summarised as mean ± sample standard deviation over seeds:

- ``results.md``   the table per method and fraction, and an mIoU grid (method x fraction)
- ``results.csv``  the same numbers, one row per (method, fraction)
- ``runs.csv``     one row per run, with its folder
- ``<metric>_vs_label_fraction.png``  mean ± std against the fraction, one line per method
  (one panel per protocol when methods are labelled ``method/protocol``)
- ``paired.md``, ``paired.csv`` (with ``--versus BASELINE``) every method against the
  baseline of the same protocol, run for run at the same fraction and seed (a seed also
  fixes which regions are labelled): the mean paired difference, each seed's, and
  whether the mean gap exceeds the spread over seeds of either method

It reads only what runs wrote to disk. Files go to a temporary name first.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import statistics
import sys
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, stdev

from omegaconf import OmegaConf

from sssi.errors import ConfigError, DataError, SssiError
from sssi.utils.io import atomic_write_bytes, atomic_write_text

log = logging.getLogger("sssi.aggregate")

DEFAULT_METRICS = ("mIoU", "mF1", "OA")
METHOD_KEYS = ("study.label", "study.method", "task_name")
FRACTION_KEY = "data.label_fraction"
SEED_KEY = "seed"


@dataclass
class Run:
    """One finished run: where it is, what it was, what it scored."""

    path: Path
    method: str
    fraction: float
    seed: int | str
    metrics: dict[str, float]


@dataclass
class Group:
    """The runs of one (method, fraction): the seeds and each metric's values."""

    method: str
    fraction: float
    seeds: list = field(default_factory=list)
    values: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def stats(self, metric: str) -> tuple[float, float]:
        """Mean and sample standard deviation (NaN with fewer than two values)."""
        vals = [v for v in self.values.get(metric, []) if not math.isnan(v)]
        if not vals:
            return math.nan, math.nan
        return mean(vals), (stdev(vals) if len(vals) > 1 else math.nan)


# --------------------------------------------------------------------------- reading
def _select(cfg, key: str):
    """``cfg``'s plain value at dotted ``key``; None when absent or not resolvable here
    (interpolations of Hydra's run-time resolvers)."""
    value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
    return None if OmegaConf.is_config(value) else value


def read_run(path: Path, metrics_file: str = "metrics.json",
             method_keys: Sequence[str] = METHOD_KEYS) -> Run | None:
    """The run in folder ``path``, or None when it has not written its metrics yet."""
    config_file = path / ".hydra" / "config.yaml"
    metrics_path = path / metrics_file
    if not metrics_path.is_file():
        return None
    try:
        cfg = OmegaConf.load(config_file)
    except Exception as err:
        raise DataError(f"{config_file}: cannot read the run's config ({err})") from err
    try:
        metrics = json.loads(metrics_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataError(f"{metrics_path}: not a JSON file of metrics ({err})") from err
    if not isinstance(metrics, dict):
        raise DataError(f"{metrics_path}: expected a JSON object of metrics")
    cfg = _training_config(cfg, config_file)
    method = next((str(v) for k in method_keys if (v := _select(cfg, k)) not in (None, "")),
                  "run")
    fraction = _select(cfg, FRACTION_KEY)
    seed = _select(cfg, SEED_KEY)
    return Run(path=path, method=method,
               fraction=float(fraction) if isinstance(fraction, (int, float)) else math.nan,
               seed=seed if isinstance(seed, (int, str)) else "?",
               metrics={k: float(v) for k, v in metrics.items()
                        if isinstance(v, (int, float)) and not isinstance(v, bool)})


def _training_config(cfg, config_file: Path):
    """The config that says what an evaluation run (``sssi.evaluate ckpt=...``) scored:
    that of the training run whose checkpoint it read (``RUN/checkpoints/X.ckpt`` ->
    ``RUN/.hydra/config.yaml``), since the evaluation's own config holds the data
    group's default label fraction, not the model's. Without it, the fraction and seed
    are unknown (NaN, ``?``) rather than wrong. Other runs: ``cfg`` itself."""
    ckpt = _select(cfg, "ckpt")
    if not isinstance(ckpt, str) or _select(cfg, "task_name") != "evaluate":
        return cfg
    trained = Path(ckpt).expanduser().parent.parent / ".hydra" / "config.yaml"
    if not trained.is_file():
        log.warning("%s: the training run of %s has no .hydra/config.yaml; its label "
                    "fraction and seed are unknown", config_file, ckpt)
        return OmegaConf.create({"task_name": "evaluate"})
    try:
        return OmegaConf.load(trained)
    except Exception as err:
        raise DataError(f"{trained}: cannot read the run's config ({err})") from err


def find_runs(roots: Iterable[Path], metrics_file: str = "metrics.json",
              method_keys: Sequence[str] = METHOD_KEYS) -> tuple[list[Run], list[Path]]:
    """Finished runs under ``roots`` and the run folders that have no metrics yet.

    When the same (method, fraction, seed) was run twice, the newer metrics win.
    """
    runs: dict[tuple, Run] = {}
    unfinished: list[Path] = []
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: no such folder of runs")
        folders = {c.parent.parent for c in root.rglob(".hydra/config.yaml")}
        for folder in sorted(folders):
            if any(parent in folders for parent in folder.parents):
                continue  # inside a run (its evaluation/): part of that run
            run = read_run(folder, metrics_file, method_keys)
            if run is None:
                unfinished.append(folder)
                continue
            key = (run.method, run.fraction, run.seed)
            old = runs.get(key)
            if old is not None:
                newer = max((old, run), key=lambda r: (r.path / metrics_file).stat().st_mtime)
                log.warning("%s and %s are the same job (%s); keeping %s", old.path, run.path,
                            key, newer.path)
                run = newer
            runs[key] = run
    return sorted(runs.values(), key=lambda r: (r.method, r.fraction, str(r.seed))), unfinished


def metric_value(metrics: dict[str, float], name: str) -> float:
    """``name`` as training wrote it (``test/mIoU``) or as evaluation did (``mIoU``)."""
    for key in (name, f"test/{name}", f"val/{name}"):
        if key in metrics:
            return metrics[key]
    return math.nan


def group_runs(runs: Sequence[Run], metrics: Sequence[str]) -> list[Group]:
    groups: dict[tuple[str, float], Group] = {}
    for run in runs:
        g = groups.setdefault((run.method, run.fraction), Group(run.method, run.fraction))
        g.seeds.append(run.seed)
        for m in metrics:
            g.values[m].append(metric_value(run.metrics, m))
    return sorted(groups.values(), key=lambda g: (_method_order(g.method), g.fraction))


def _method_order(method: str) -> tuple[str, int, str]:
    # by protocol (labels such as "instructor/probe"), then pretext methods first (the
    # game leading), then the baselines without pretraining
    base, _, protocol = method.partition("/")
    order = {"instructor": 0, "random_blocks": 1, "random_patches": 2, "imagenet": 8,
             "scratch": 9}
    return protocol, order.get(base, 5), method


# --------------------------------------------------------------------------- writing
def _pct(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.1f}"


def mean_sd_pct(values: Sequence[float]) -> str:
    """Fractions as "mean ± sd" in percent (one value: itself; none: a dash): the cell
    every collector's mIoU table writes."""
    if not values:
        return "–"
    if len(values) == 1:
        return _pct(values[0])
    return f"{_pct(statistics.mean(values))} ± {_pct(statistics.stdev(values))}"


def _cell(g: Group, metric: str) -> str:
    mu, sd = g.stats(metric)
    if math.isnan(mu):
        return "–"
    return _pct(mu) if math.isnan(sd) else f"{_pct(mu)} ± {_pct(sd)}"


def _fraction(f: float) -> str:
    return "?" if math.isnan(f) else f"{100 * f:g} %"


def markdown(groups: Sequence[Group], metrics: Sequence[str], grid_metric: str) -> str:
    """The per-(method, fraction) table and a method x fraction grid of ``grid_metric``."""
    head = ["method", "labels", "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in groups:
        cells = [g.method, _fraction(g.fraction), str(len(g.seeds)),
                 *(_cell(g, m) for m in metrics)]
        lines.append("| " + " | ".join(cells) + " |")
    fractions = sorted({g.fraction for g in groups})
    methods = sorted({g.method for g in groups}, key=_method_order)
    by_key = {(g.method, g.fraction): g for g in groups}
    lines += ["", f"{grid_metric} (%, mean ± std over seeds) by label fraction:", "",
              "| method | " + " | ".join(_fraction(f) for f in fractions) + " |",
              "|" + "---|" * (len(fractions) + 1)]
    for m in methods:
        cells = [_cell(by_key[(m, f)], grid_metric) if (m, f) in by_key else "–"
                 for f in fractions]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _csv(rows: list[list]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def results_csv(groups: Sequence[Group], metrics: Sequence[str]) -> str:
    rows: list[list] = [["method", "label_fraction", "n_seeds", "seeds",
                         *(f"{m}_{s}" for m in metrics for s in ("mean", "std"))]]
    for g in groups:
        stats = [x for m in metrics for x in g.stats(m)]
        rows.append([g.method, g.fraction, len(g.seeds), " ".join(map(str, g.seeds)),
                     *(f"{x:.6f}" if not math.isnan(x) else "" for x in stats)])
    return _csv(rows)


def runs_csv(runs: Sequence[Run], metrics: Sequence[str]) -> str:
    rows: list[list] = [["method", "label_fraction", "seed", *metrics, "path"]]
    for r in runs:
        vals = [metric_value(r.metrics, m) for m in metrics]
        rows.append([r.method, r.fraction, r.seed,
                     *(f"{v:.6f}" if not math.isnan(v) else "" for v in vals), str(r.path)])
    return _csv(rows)


def _protocol(method: str) -> str:
    return method.partition("/")[2]


def plot(groups: Sequence[Group], metric: str) -> bytes:
    """PNG of ``metric`` (mean ± std over seeds) against the label fraction; one panel
    per protocol (the part after ``/`` of a method label) when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = sorted({_protocol(g.method) for g in groups})
    fig, axes = plt.subplots(1, len(protocols), figsize=(6.4 * len(protocols), 4.2), dpi=120,
                             sharey=True, squeeze=False)
    for ax, protocol in zip(axes[0], protocols, strict=True):
        methods = sorted({g.method for g in groups if _protocol(g.method) == protocol},
                         key=_method_order)
        for method in methods:
            pts = sorted((g.fraction, *g.stats(metric)) for g in groups
                         if g.method == method and not math.isnan(g.fraction))
            pts = [p for p in pts if not math.isnan(p[1])]
            if not pts:
                continue
            x = [100 * p[0] for p in pts]
            y = [100 * p[1] for p in pts]
            err = [0.0 if math.isnan(p[2]) else 100 * p[2] for p in pts]
            ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=method)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training data (%)")
        ax.set_ylabel(f"{metric} (%)")
        title = f"{metric} against label fraction (mean ± std over seeds)"
        ax.set_title(f"{protocol}: {title}" if protocol else title, fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


#: two-sided confidence of the paired comparison's interval
CONFIDENCE = 0.95


@dataclass
class Paired:
    """One method against a baseline at one fraction, paired by seed.

    The rule that reads it (:attr:`verdict`), two-sided and on the pairs: the per-seed
    differences' mean ± Student's t interval at :data:`CONFIDENCE` (``mean ± t(n-1) x
    sd / sqrt(n)``). *ahead* when the whole interval is above 0, *behind* when it is
    below, *level* when it holds 0; fewer than two seeds give no interval (*level*).
    Pairing takes out what a seed shares between the two methods (the labelled
    regions, the seed's luck), which the two methods' own spreads over seeds keep in.
    """

    method: str
    baseline: str
    fraction: float
    seeds: list
    differences: list[float]  # method - baseline, per seed

    @property
    def mean(self) -> float:
        return mean(self.differences) if self.differences else math.nan

    @property
    def sd(self) -> float:
        """Standard deviation of the per-seed differences (NaN below two seeds)."""
        return stdev(self.differences) if len(self.differences) > 1 else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """The two-sided :data:`CONFIDENCE` interval of the mean difference."""
        n = len(self.differences)
        if n < 2:
            return (math.nan, math.nan)
        from scipy.stats import t as student

        half = float(student.ppf(0.5 + CONFIDENCE / 2, n - 1)) * self.sd / math.sqrt(n)
        return (self.mean - half, self.mean + half)

    @property
    def verdict(self) -> str:
        """``ahead``, ``behind`` or ``level`` (see the class docstring)."""
        low, high = self.interval
        if low > 0:
            return "ahead"
        if high < 0:
            return "behind"
        return "level"


def paired_differences(runs: Sequence[Run], groups: Sequence[Group], metric: str,
                       baselines: Sequence[str]) -> list[Paired]:
    """Every method against each baseline of the same protocol, paired by fraction and
    seed (methods labelled ``name/protocol`` are compared within their protocol)."""
    value = {(r.method, r.fraction, r.seed): metric_value(r.metrics, metric) for r in runs}
    methods = sorted({g.method for g in groups}, key=_method_order)
    out = []
    for i, base_name in enumerate(baselines):
        earlier = {b.partition("/")[0] for b in baselines[:i + 1]}
        for method in methods:
            if method.partition("/")[0] in earlier:  # itself, or compared already
                continue
            protocol = _protocol(method)
            base_of_method = f"{base_name}/{protocol}" if protocol and "/" not in base_name \
                else base_name
            if _protocol(base_of_method) != protocol:
                continue
            for g in (g for g in groups if g.method == method):
                seeds, diffs = [], []
                for seed in g.seeds:
                    a = value.get((method, g.fraction, seed), math.nan)
                    b = value.get((base_of_method, g.fraction, seed), math.nan)
                    if not (math.isnan(a) or math.isnan(b)):
                        seeds.append(seed)
                        diffs.append(a - b)
                if diffs:
                    out.append(Paired(method, base_of_method, g.fraction, seeds, diffs))
    return out


def seed_differences(rows: Iterable[Mapping], is_baseline: Callable[[Mapping], bool],
                     cell: Callable[[Mapping], tuple], value: str = "mIoU",
                     ) -> Iterator[tuple[Mapping, float]]:
    """``(row, points)`` for every row that has a baseline row in the same ``cell(row)``
    (what a pair shares besides the seed: protocol, fraction, ...) and ``seed``; points
    are ``100 x (row - baseline)`` of ``value``. The studies' collectors (rows read
    from their own folders, not :class:`Run`) pair through this one rule."""
    rows = [r for r in rows if value in r]
    base = {(cell(r), r["seed"]): r[value] for r in rows if is_baseline(r)}
    for r in rows:
        if is_baseline(r):
            continue
        b = base.get((cell(r), r["seed"]))
        if b is not None:
            yield r, 100 * (r[value] - b)


def pair_by_seed(rows: Iterable[Mapping], is_baseline: Callable[[Mapping], bool],
                 cell: Callable[[Mapping], tuple], names: Callable[[Mapping], Iterable[str]],
                 baseline: Callable[[tuple], str], value: str = "mIoU",
                 ) -> dict[tuple, Paired]:
    """One :class:`Paired` per name x cell, keyed ``(name, *cell)``: every row's
    :func:`seed_differences` counts under each of ``names(row)`` (the row's own start
    first, then e.g. a pooled name shared by several pretext seeds). A pooled name
    (never a row's own) is kept only in the cells where more than one own name feeds
    it: with one, it would be that start again under another name. ``baseline(cell)``
    labels the baseline; the fraction is the rows' ``label_fraction``."""
    pairs: dict[tuple, Paired] = {}
    own: set[str] = set()
    sources: dict[tuple, set[str]] = defaultdict(set)
    for r, points in seed_differences(rows, is_baseline, cell, value):
        c = cell(r)
        first, *pooled = names(r)
        own.add(first)
        for name in (first, *pooled):
            pair = pairs.setdefault((name, *c), Paired(name, baseline(c), r["label_fraction"],
                                                       [], []))
            pair.seeds.append(r["seed"])
            pair.differences.append(points)
            sources[(name, *c)].add(first)
    return {k: p for k, p in pairs.items() if k[0] in own or len(sources[k]) > 1}


def paired_markdown(pairs: Sequence[Paired], metric: str) -> str:
    pct = round(100 * CONFIDENCE)
    lines = [f"{metric}: method minus baseline, paired by label fraction and seed (points "
             f"of %): mean ± sd of the per-seed differences and their two-sided {pct} % "
             f"Student's t interval; *ahead* when the interval is above 0, *behind* when "
             f"below, *level* when it holds 0 (or with one seed).", "",
             f"| method | baseline | labels | seeds | mean ± sd | {pct} % interval | "
             "per seed | verdict |", "|---|---|---|---|---|---|---|---|"]
    for p in pairs:
        per_seed = ", ".join(f"{s}: {100 * d:+.1f}" for s, d in zip(p.seeds, p.differences,
                                                                   strict=True))
        low, high = p.interval
        sd = "" if math.isnan(p.sd) else f" ± {100 * p.sd:.1f}"
        interval = "" if math.isnan(low) else f"[{100 * low:+.1f}, {100 * high:+.1f}]"
        lines.append(f"| {p.method} | {p.baseline} | {_fraction(p.fraction)} | "
                     f"{len(p.seeds)} | {100 * p.mean:+.1f}{sd} | {interval} | {per_seed} | "
                     f"{p.verdict} |")
    return "\n".join(lines) + "\n"


def paired_csv(pairs: Sequence[Paired]) -> str:
    rows: list[list] = [["method", "baseline", "label_fraction", "seeds", "differences",
                         "mean_difference", "sd_difference", "interval_low",
                         "interval_high", "verdict"]]

    def num(v: float) -> str:
        return "" if math.isnan(v) else f"{v:.6f}"

    for p in pairs:
        low, high = p.interval
        rows.append([p.method, p.baseline, p.fraction, " ".join(map(str, p.seeds)),
                     " ".join(f"{d:.6f}" for d in p.differences), num(p.mean), num(p.sd),
                     num(low), num(high), p.verdict])
    return _csv(rows)


def aggregate(roots: Sequence[Path], out: Path | None = None,
              metrics: Sequence[str] = DEFAULT_METRICS, metrics_file: str = "metrics.json",
              method_keys: Sequence[str] = METHOD_KEYS, versus: Sequence[str] = ()
              ) -> dict[str, Path]:
    """Write the tables and the plot for the runs under ``roots`` (and the paired
    comparisons against each baseline in ``versus``); return their paths."""
    if not metrics:
        raise ConfigError("--metrics: give at least one metric name")
    runs, unfinished = find_runs(roots, metrics_file, method_keys)
    if not runs:
        where = ", ".join(str(r) for r in roots)
        raise DataError(f"{where}: no finished runs (folders with .hydra/config.yaml and "
                        f"{metrics_file})")
    for folder in unfinished:
        log.warning("not finished (no %s): %s", metrics_file, folder)
    out = Path(out or roots[0])
    groups = group_runs(runs, metrics)
    table = markdown(groups, metrics, metrics[0])
    header = (f"# Results of {len(runs)} runs\n\nFrom {', '.join(str(r) for r in roots)} "
              f"({metrics_file}); mean ± sample std over seeds, in %."
              + (f" {len(unfinished)} run folders had no metrics and are left out."
                 if unfinished else "") + "\n\n")
    written = {
        "markdown": out / "results.md",
        "csv": out / "results.csv",
        "runs": out / "runs.csv",
        "plot": out / f"{metrics[0]}_vs_label_fraction.png",
    }
    atomic_write_text(written["markdown"], header + table)
    atomic_write_text(written["csv"], results_csv(groups, metrics))
    atomic_write_text(written["runs"], runs_csv(runs, metrics))
    atomic_write_bytes(written["plot"], plot(groups, metrics[0]))
    if versus:
        pairs = paired_differences(runs, groups, metrics[0], versus)
        written["paired"] = out / "paired.md"
        written["paired_csv"] = out / "paired.csv"
        atomic_write_text(written["paired"], paired_markdown(pairs, metrics[0]))
        atomic_write_text(written["paired_csv"], paired_csv(pairs))
    print(table, end="")
    print(f"\n{len(runs)} runs, {len(groups)} groups -> {out}/")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sssi.aggregate",
        description="Collect finished sssi runs into mean ± std tables and a plot.")
    parser.add_argument("roots", nargs="+", type=Path, help="folders holding run folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the tables and plot (default: the first root)")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS),
                        help="metric names; the first is the grid and the plot "
                             "(default: mIoU mF1 OA; e.g. mIoU_5 for ISPRS without clutter)")
    parser.add_argument("--metrics-file", default="metrics.json",
                        help="the metrics file inside each run folder "
                             "(evaluation/metrics.json for sssi.evaluate's full-tile scores)")
    parser.add_argument("--method-key", action="append", default=None,
                        help="config key naming the method (repeatable; default: "
                             "study.method, then task_name)")
    parser.add_argument("--versus", action="append", default=[], metavar="BASELINE",
                        help="compare every method with this baseline method (e.g. "
                             "scratch), run for run (repeatable): paired.md, paired.csv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        aggregate(args.roots, args.out, args.metrics, args.metrics_file,
                  tuple(args.method_key) if args.method_key else METHOD_KEYS, args.versus)
    except SssiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
