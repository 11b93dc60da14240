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

``--reference PATH`` runs the authors' step of the same kind after each of sssi's, timed on
its own (:mod:`experiments.benchmarks.game_reference`). Each side's figure is its median
step; a round is one instructor step and one inpainter step per image (the paper's 30 +
30 epochs over one loader), on both sides.

``--profile`` (CPU) splits one more step of each kind into convolutions, batch norm and
the rest, and with a reference prints the bound that split sets
(:mod:`experiments.benchmarks.game_profile`).

In the same process it times the data path at the step's crop: the datamodule's
per-batch device step (augmentation + normalisation of a uint8 batch) and the training
loader (``--workers``) over a tiled 2048 px tile, and prints each as a multiple of the
game's consumption (goal: >= 2x at every setting printed).

On a GPU (``--device cuda``) the defaults become the paper's batch (128 x 128 px) and
each setting of precision x memory format x compile is timed, with MFU from the FLOP
count (``torch.utils.flop_counter``) and peak memory. ``experiments/benchmarks/gpu.sh``
runs that with this machine's cores.

    python -m experiments.benchmarks.game_step [--reference PATH] [--threads 2]
        [--batch 8] [--size 128] [--steps 3] [--device cpu|cuda]
        [--precisions 32-true bf16-mixed] [--compile off on]
        [--channels-last off on instructor inpainter]

The last line is a summary a script can read:
``game_vs_authors R`` (or ``game_img_s R`` without a reference).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import open_dict
from torch.utils.data import DataLoader, Dataset

from experiments.benchmarks.common import LoopTimer, cpu_flags
from experiments.benchmarks.game_profile import StepProfile, print_shares
from experiments.benchmarks.game_reference import Interleaved, authors_steps
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
    from experiments.benchmarks.data_pipeline import TILE, time_augment, time_loader, write_tile
    from sssi.data import PretextDataModule

    with tempfile.TemporaryDirectory() as tmp:
        write_tile(Path(tmp), 2048, tiled=True)
        dm = PretextDataModule(root=tmp, crop_size=args.size, batch_size=args.batch,
                               num_workers="auto", samples_per_epoch=max(512, 8 * args.batch),
                               train_split=[TILE], val_split=None, test_split=None,
                               scale=list(cfg.data.scale))
        dm.setup("fit")
        workers = args.workers if args.workers is not None else dm.loading.num_workers
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
          f"cores (CPU flags: {cpu_flags()}), GPU {name}; batch {args.batch}, {args.size} px, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
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
            print_shares(shares, rates, ref)
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


def _row(kind, precision, cl, compiled, rate, ref, flops, peak_tf, peak_mb) -> None:
    layout = "NCHW" if not cl else "channels_last" if cl is True else f"NHWC {cl[0][:5]}."
    ref_s = f"{ref:>10.2f}{rate / ref:>11.2f}" if ref else f"{'':>10}{'':>11}"
    mfu = f"{100 * rate * flops / (peak_tf * 1e12):>8.1f}" if flops and peak_tf else f"{'':>8}"
    mem = f"{peak_mb:>9.0f}" if peak_mb else f"{'':>9}"
    print(f"{kind:<17} {precision:<11} {layout:<14} {'on' if compiled else 'off':<8} "
          f"{rate:>9.2f}{ref_s}{mfu}{mem}", flush=True)


if __name__ == "__main__":
    main()
