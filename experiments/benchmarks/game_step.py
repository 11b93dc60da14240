"""The game's training step beside the authors' step, with the data path's margin.

sssi's ``PretrainTask`` is built from the real configs (``+experiment=potsdam_pretrain``:
DRN-A-50 inpainter, ResNet-18 instructor without the stem max-pool erasing 25 % of its
16 px cells; ``task.output=tanh`` as in the authors' code) and run under a Lightning
Trainer on batches kept in memory. Each step kind is timed over whole loop iterations
(fetch, hooks, step, logging), after warm-up steps:

  inpainter_random  the inpainter on random holes (the warm-up, round 0)
  inpainter         the inpainter on the instructor's holes (its forward included)
  instructor        the instructor's update (the frozen inpainter's forward included)
  game              instructor + inpainter: the per-image cost of one round

``--reference PATH`` loads ``PATH`` (``../shared/tools/authors_step.py``, the authors' two
steps rebuilt in plain PyTorch) into this process, sets up their players as their script
does, and runs one of their steps of the same kind right after each of sssi's, timed on
its own (and left out of sssi's loop time): the two alternate step by step, so both see
the same machine (a shared VM's speed drifts by more than the differences measured). Each
side's figure is its median step; a round is one instructor step and one inpainter step
per image (the paper's 30 + 30 epochs over one loader), on both sides.

``--profile`` (CPU) profiles one more step of each kind after the timed ones and splits
its time into convolutions (and the matrix products that stand in for them), batch norm
and the rest. With a reference it prints ``bound``: sssi's round over the authors' if
everything but sssi's convolutions took no time, the ceiling of what removing
per-step work can give at these kernels.

In the same process it times the data path at the step's crop: the datamodule's
per-batch device step (augmentation + normalisation of a uint8 batch) and the training
loader (``--workers``) over a tiled 2048 px tile, and prints each as a multiple of the
game's consumption (goal: >= 2x at every setting printed).

On a GPU (``--device cuda``) the defaults become the paper's batch (128 x 128 px) and
each setting of precision x memory format x compile is timed, with MFU from the FLOP
count (``torch.utils.flop_counter``) and peak memory. ``experiments/benchmarks/gpu.sh``
runs that with this machine's cores.

    python experiments/benchmarks/game_step.py [--reference PATH] [--threads 2]
        [--batch 8] [--size 128] [--steps 3] [--device cpu|cuda]
        [--precisions 32-true bf16-mixed] [--compile off on]
        [--channels-last off on instructor inpainter]

The last line is a summary a script can read:
``game_vs_authors R`` (or ``game_img_s R`` without a reference).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.data import DataLoader, Dataset

from sssi.cli import CONFIG_DIR
from sssi.config import register_resolvers

KINDS = ("inpainter_random", "inpainter", "instructor")

#: Dense peak TFLOP/s by GPU name and precision (fp32 convolutions run on TF32 tensor
#: cores by default, ``torch.backends.cudnn.allow_tf32``). From the vendors' sheets.
PEAK_TFLOPS = {
    "H200": {"32-true": 494.0, "bf16-mixed": 989.0},
    "H100": {"32-true": 494.0, "bf16-mixed": 989.0},
    "A100": {"32-true": 156.0, "bf16-mixed": 312.0},
    "L40S": {"32-true": 183.0, "bf16-mixed": 362.0},
}


class Batches(Dataset):
    """Standardised random images (what the datamodule hands the task), in memory."""

    def __init__(self, n: int, channels: int, size: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randn(n, channels, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i]}


class LoopTimer(L.Callback):
    """Wall time of each whole loop iteration (fetch, hooks, step, logging) after ``skip``
    warm-up batches, up to batch ``last`` when given; time handed to :meth:`exclude` (the
    authors' step run between two of sssi's) is not counted."""

    def __init__(self, skip: int, last: int | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.skip, self.last, self.clock = skip, last, clock
        self.durations: list[float] = []
        self._prev: float | None = None
        self._excluded = 0.0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def exclude(self, seconds: float) -> None:
        """Leave ``seconds`` spent since the last batch's end out of the next duration."""
        self._excluded += seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._sync()
        now = self.clock()
        if batch_idx == self.skip - 1 and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        timed = batch_idx >= self.skip and (self.last is None or batch_idx <= self.last)
        if timed and self._prev is not None:
            self.durations.append(now - self._prev - self._excluded)
        self._prev, self._excluded = now, 0.0

    @property
    def seconds_per_step(self) -> float:
        return median_seconds(self.durations)


class Interleaved(L.Callback):
    """After each of sssi's steps, one of the authors' (``step``), timed on its own (with
    ``timer``'s clock) and left out of ``timer``'s; those between two timed steps of
    sssi's are kept."""

    def __init__(self, step: Callable[[], object], timer: LoopTimer) -> None:
        self.step, self.timer = step, timer
        self.durations: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        timer = self.timer
        if timer.last is not None and batch_idx >= timer.last:
            return  # nothing of sssi's is timed after this
        t0 = timer.clock()
        self.step()
        seconds = timer.clock() - t0
        timer.exclude(seconds)
        if batch_idx >= timer.skip - 1:
            self.durations.append(seconds)  # between two timed steps of sssi's

    @property
    def seconds_per_step(self) -> float:
        return median_seconds(self.durations)


def median_seconds(durations: list[float]) -> float:
    """The median timed step (NaN when none was timed)."""
    return statistics.median(durations) if durations else float("nan")


def authors_steps(path: str, batch: int, size: int) -> dict[str, Callable[[], object]]:
    """The authors' step of each kind from their script at ``path``, loaded here, with
    their players, optimizers and batch set up as the script's ``main`` does."""
    spec = importlib.util.spec_from_file_location("authors_step", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--reference {path}: not a Python file")
    a = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(a)
    torch.manual_seed(7)
    net, coach = a.drn_a_50(), a.resnet18_coach_vae(drop_ratio=0.75)
    net_opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    coach_opt = torch.optim.Adam(coach.parameters(), lr=1e-5)
    inputs, targets, _ = a.make_batch(batch, size, torch.Generator().manual_seed(7))
    a.calibrate_bn(coach, inputs, alpha=1)  # eval-mode players with data statistics
    with torch.no_grad():
        coach.eval()
        masks, _, _ = coach(inputs, alpha=100)
    a.calibrate_bn(net, inputs * masks)
    return {
        "inpainter_random": lambda: a.inpainter_step(net, coach, net_opt, inputs, targets,
                                                     False),
        "inpainter": lambda: a.inpainter_step(net, coach, net_opt, inputs, targets, True),
        "instructor": lambda: a.instructor_step(net, coach, coach_opt, inputs, targets),
    }


def game_config(size: int, batch: int, overrides: list[str]):
    """The composed ``potsdam_pretrain`` experiment at this crop and batch."""
    register_resolvers()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("train", overrides=[
            "+experiment=potsdam_pretrain", "logger=none", "task.output=tanh",
            f"data.crop_size={size}", f"data.batch_size={batch}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.data_dir = "unused"
    return cfg


def build_task(cfg, kind: str, channels_last: bool | list[str], compiled: bool):
    """The task with a schedule that makes every step after the first of ``kind``."""
    return instantiate(kind_config(cfg, kind, channels_last, compiled).task)


def kind_config(cfg, kind: str, channels_last: bool | list[str] = False,
                compiled: bool = False):
    """``cfg`` set up for ``kind``: ``alternate`` mode, the first step trains the
    inpainter, then the chosen player (or random holes throughout for the warm-up)."""
    many = 10_000
    with open_dict(cfg):
        cfg.task.schedule.update({
            "mode": "alternate", "warmup_epochs": many if kind == "inpainter_random" else 0,
            "inpainter_steps": many if kind == "inpainter" else 1,
            "instructor_steps": many, "reset_optimizers_each_round": False})
        cfg.task.channels_last = channels_last
        cfg.task.compile = compiled
        cfg.task.image_every_n_steps = 0
    return cfg


#: Operators whose self time counts as convolution in ``--profile``: oneDNN's kernels
#: (forward, transposed forward and backward) and the matrix products of
#: :class:`sssi.models.conv_transpose.ConvTranspose2d`.
CONV_OPS = ("aten::mkldnn_convolution", "aten::_convolution", "aten::convolution_backward",
            "aten::mm", "aten::addmm", "aten::bmm", "aten::_convolution_transpose")


class StepProfile(L.Callback):
    """Self CPU time of batch ``index``, split into convolutions, batch norm and the rest
    (fractions in :attr:`shares`)."""

    def __init__(self, index: int) -> None:
        self.index, self.shares = index, {}
        self._prof = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.index:
            from torch.profiler import ProfilerActivity, profile

            self._prof = profile(activities=[ProfilerActivity.CPU])
            self._prof.__enter__()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.index and self._prof is not None:
            self._prof.__exit__(None, None, None)
            self.shares = split_self_time(
                (e.key, e.self_cpu_time_total) for e in self._prof.key_averages())


def split_self_time(events) -> dict[str, float]:
    """``{"conv", "batch_norm", "other"}`` fractions of the total of ``(name, self time)``."""
    parts = {"conv": 0.0, "batch_norm": 0.0, "other": 0.0}
    for name, t in events:
        group = "conv" if name in CONV_OPS else "batch_norm" if "batch_norm" in name \
            else "other"
        parts[group] += t
    total = sum(parts.values()) or 1.0
    return {k: v / total for k, v in parts.items()}


def time_kind(cfg, kind: str, args, precision: str, channels_last: bool | list[str],
              compiled: bool, authors: Callable[[], object] | None = None) -> dict:
    """``kind`` steps: ``rate`` (images/s), ``peak_mb`` (GPU), ``shares`` (time split of
    one profiled step, or {}) and, with the authors' step of the kind interleaved,
    ``authors_rate``."""
    torch.manual_seed(0)
    task = build_task(cfg, kind, channels_last, compiled)
    skip = args.warmup + 1  # step 0 is an inpainter step in every kind
    last = skip + args.steps - 1
    timer = LoopTimer(skip, last)
    callbacks: list[L.Callback] = [timer]
    interleaved = Interleaved(authors, timer) if authors is not None else None
    if interleaved is not None:
        callbacks.append(interleaved)
    profiled = getattr(args, "profile", False)
    profile = StepProfile(last + 1)
    if profiled:  # one more step, after the timed ones, under the profiler
        callbacks.append(profile)
    steps = last + 1 + int(profiled)
    trainer = L.Trainer(accelerator=args.device, devices=1, precision=precision,
                        max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=callbacks)
    data = DataLoader(Batches(args.batch, cfg.data.in_channels, args.size),
                      batch_size=args.batch, sampler=[0] * steps * args.batch)
    trainer.fit(task, train_dataloaders=data)
    out = {"rate": args.batch / timer.seconds_per_step, "shares": profile.shares,
           "peak_mb": torch.cuda.max_memory_allocated() / 2**20
           if torch.cuda.is_available() else 0.0}
    if interleaved is not None:
        out["authors_rate"] = args.batch / interleaved.seconds_per_step
    return out


def flops_per_image(cfg, kind: str, args) -> float:
    """FLOPs of one ``kind`` step per image (forward and backward; batch 2, CPU)."""
    from torch.utils.flop_counter import FlopCounterMode

    task = build_task(cfg, kind, False, False)
    counter = FlopCounterMode(display=False)

    class Count(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 1:
                counter.__enter__()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if batch_idx == 1:
                counter.__exit__(None, None, None)

    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=2, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=[Count()])
    data = DataLoader(Batches(2, cfg.data.in_channels, args.size), batch_size=2,
                      sampler=[0] * 4)
    trainer.fit(task, train_dataloaders=data)
    return counter.get_total_flops() / 2


def data_path_rates(cfg, args, device: torch.device) -> dict[str, float]:
    """Patches/s of the datamodule's device step and of its training loader, at the
    step's crop and batch, over a tiled 2048 px Potsdam tile."""
    sys.path.insert(0, str(Path(__file__).parent))
    from data_pipeline import TILE, time_augment, time_loader, write_tile

    from sssi.data import PretextDataModule

    with tempfile.TemporaryDirectory() as tmp:
        write_tile(Path(tmp), 2048, tiled=True)
        dm = PretextDataModule(root=tmp, crop_size=args.size, batch_size=args.batch,
                               num_workers="auto", samples_per_epoch=max(512, 8 * args.batch),
                               train_split=[TILE], val_split=None, test_split=None,
                               scale=list(cfg.data.scale))
        dm.setup("fit")
        workers = args.workers if args.workers is not None else dm.num_workers
        rates = {"augment": time_augment(dm, device)}
        rates[f"loader {workers} workers"] = time_loader(dm, workers, 0)
        return rates


#: ``--channels-last`` choices -> ``task.channels_last`` (``on``: both players)
MEMORY_FORMATS = {"off": False, "on": True, "instructor": ["instructor"],
                  "inpainter": ["inpainter"]}


def settings(args) -> list[tuple[str, bool | list[str], bool]]:
    return [(p, MEMORY_FORMATS[cl], c == "on") for p in args.precisions
            for cl in args.channels_last for c in args.compile]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=None, help="8 on the CPU, 128 on a GPU")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=None)
    ap.add_argument("--channels-last", nargs="+", default=None, choices=tuple(MEMORY_FORMATS),
                    help="NHWC for both players (on), neither (off) or one of them")
    ap.add_argument("--compile", nargs="+", default=["off"], choices=("off", "on"))
    ap.add_argument("--workers", type=int, default=None, help="loader workers (data.num_workers)")
    ap.add_argument("--reference", default=os.environ.get("REFERENCE") or None,
                    help="the authors' step script (authors_step.py)")
    ap.add_argument("--override", nargs="*", default=[], help="more config overrides")
    ap.add_argument("--profile", action="store_true",
                    help="split one more step of each kind into convolutions, batch norm and "
                         "the rest (CPU)")
    args = ap.parse_args()
    gpu = args.device.startswith("cuda")
    args.batch = args.batch or (128 if gpu else 8)
    args.precisions = args.precisions or (["32-true", "bf16-mixed"] if gpu else ["32-true"])
    args.channels_last = args.channels_last or (["off", "on"] if gpu else ["off"])
    if args.threads:
        torch.set_num_threads(args.threads)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(0) if gpu else "none"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} "
          f"cores, GPU {name}; batch {args.batch}, {args.size} px, {args.steps} timed steps "
          f"after {args.warmup} warm-up")
    cfg = game_config(args.size, args.batch, args.override)

    if args.reference and gpu:
        print("--reference: the authors' script runs on the CPU only; not run")
        args.reference = None
    if args.profile and gpu:
        print("--profile: CPU only; not run")
        args.profile = False
    flops = {k: flops_per_image(cfg, k, args) for k in KINDS} if gpu else {}
    peak_tf = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)

    header = (f"{'step':<17} {'precision':<11} {'layout':<14} {'compile':<8} {'img/s':>9}"
              f"{'  authors':>10}{'  x authors':>11}{'  MFU %':>8}{'  peak MB':>9}")
    print(header)
    print("-" * len(header))
    games: list[float] = []
    ratios: list[float] = []
    authors = authors_steps(args.reference, args.batch, args.size) if args.reference else {}
    for precision, cl, compiled in settings(args):
        rates: dict[str, float] = {}
        ref: dict[str, float] = {}
        peaks: dict[str, float] = {}
        shares: dict[str, dict[str, float]] = {}
        for kind in KINDS:
            got = time_kind(cfg, kind, args, precision, cl, compiled, authors.get(kind))
            rates[kind], peaks[kind], shares[kind] = got["rate"], got["peak_mb"], got["shares"]
            if "authors_rate" in got:
                ref[kind] = got["authors_rate"]
        rates["game"] = _round(rates)
        if ref:
            ref["game"] = _round(ref)
            ratios.append(rates["game"] / ref["game"])
        for kind in (*KINDS, "game"):
            kind_flops = flops["instructor"] + flops["inpainter"] if flops and kind == "game" \
                else flops.get(kind)
            _row(kind, precision, cl, compiled, rates[kind], ref.get(kind), kind_flops,
                 peak_tf and peak_tf.get(precision), peaks.get(kind))
        if any(shares.values()):
            _print_shares(shares, rates, ref)
        games.append(rates["game"])

    print(f"\ndata path at {args.size} px, batch {args.batch} (the game consumes up to "
          f"{max(games):.1f} img/s above):")
    for what, rate in data_path_rates(cfg, args, device).items():
        print(f"  {what:<20} {rate:>9.1f} patches/s  {rate / max(games):>8.1f}x the game")
    if ratios:
        print(f"game_vs_authors {ratios[0]:.2f}")
    else:
        print(f"game_img_s {games[0]:.2f}")


def _round(rates: dict[str, float]) -> float:
    """Images/s of a whole round: one instructor step and one inpainter step."""
    return 1.0 / (1.0 / rates["instructor"] + 1.0 / rates["inpainter"])


def _print_shares(shares: dict[str, dict[str, float]], rates: dict[str, float],
                  ref: dict[str, float]) -> None:
    """Each kind's time split of ``--profile`` and, with a reference, the bound."""
    for kind, part in shares.items():
        print(f"  profile {kind:<17}" + "  ".join(f"{k} {100 * v:4.1f} %"
                                                  for k, v in part.items()))
    if ref:
        conv_s = sum(shares[k]["conv"] / rates[k] for k in ("instructor", "inpainter"))
        print(f"  bound: x authors {1.0 / ref['game'] / conv_s:.2f} if all but sssi's "
              f"convolutions were free (now {rates['game'] / ref['game']:.2f})")


def _row(kind, precision, cl, compiled, rate, ref, flops, peak_tf, peak_mb) -> None:
    layout = "NCHW" if not cl else "channels_last" if cl is True else f"NHWC {cl[0][:5]}."
    ref_s = f"{ref:>10.2f}{rate / ref:>11.2f}" if ref else f"{'':>10}{'':>11}"
    mfu = f"{100 * rate * flops / (peak_tf * 1e12):>8.1f}" if flops and peak_tf else f"{'':>8}"
    mem = f"{peak_mb:>9.0f}" if peak_mb else f"{'':>9}"
    print(f"{kind:<17} {precision:<11} {layout:<14} {'on' if compiled else 'off':<8} "
          f"{rate:>9.2f}{ref_s}{mfu}{mem}", flush=True)


if __name__ == "__main__":
    main()
