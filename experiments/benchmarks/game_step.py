"""Training-step benchmark of the pretext game: images/s per step kind and setting.

Runs the real ``PretrainTask`` under a Lightning Trainer on in-memory random images
(no disk), for each backbone x precision x memory format, and times three kinds of
step separately:
  warmup      inpainter update on random block masks
  instructor  instructor update (the inpainter frozen, no autograd graph)
  inpainter   inpainter update on instructor masks (instructor forward included)
Figures are images/s after a few warm-up steps; the last column compares each
setting with fp32 NCHW of the same backbone and step.

    python experiments/benchmarks/game_step.py [--size 256] [--batch 4] [--steps 4]
        [--backbones resnet18 drn_a_50] [--precisions 32-true bf16-mixed]
        [--device auto|cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from sssi.tasks.pretrain import PretrainTask


class RandomImages(Dataset):
    def __init__(self, n: int, channels: int, size: int) -> None:
        self.n, self.shape = n, (channels, size, size)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        return {"image": torch.randn(self.shape, generator=g)}


class Timer(L.Callback):
    """Wall time of training batches after ``skip`` warm-up batches."""

    def __init__(self, skip: int) -> None:
        self.skip, self.times, self._t = skip, [], 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        if batch_idx >= self.skip:
            self.times.append(time.perf_counter() - self._t)


def task(backbone: str, channels: int, mode: str, channels_last: bool) -> PretrainTask:
    # warmup: random masks throughout; otherwise the alternate schedule with one side
    # taking (almost) every step: step 0 trains the inpainter, then the chosen player
    many = 10_000
    schedule = {"mode": "alternate", "warmup_epochs": many if mode == "warmup" else 0,
                "inpainter_steps": many if mode == "inpainter" else 1,
                "instructor_steps": many, "reset_optimizers_each_round": False}
    enc = {"_target_": "sssi.models.build_backbone", "name": backbone, "in_channels": channels}
    t = PretrainTask(
        backbone=enc,
        mask_policy={
            "random": {"_target_": "sssi.masking.RandomBlocks", "ratio": 0.25,
                       "block_size": 16},
            "instructor": {
                "network": {"latent_dim": 100, "ratio": 0.25},
                "backbone": {**enc, "name": "resnet18", "stem_pool": False},
                "optimizer": {"_target_": "torch.optim.Adam", "_partial_": True, "lr": 1e-5}}},
        loss={"_target_": "sssi.losses.ReconstructionLoss"},
        inpainter_optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.01,
                             "momentum": 0.9},
        schedule=schedule, in_channels=channels, channels_last=channels_last,
        finite_check_every_n_steps=0)
    return t


def measure(backbone: str, mode: str, precision: str, channels_last: bool, args) -> float:
    torch.manual_seed(0)
    model = task(backbone, 3, mode, channels_last)
    timer = Timer(skip=2)
    steps = args.steps + 2
    trainer = L.Trainer(accelerator=args.device, devices=1, precision=precision,
                        max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, callbacks=[timer])
    data = DataLoader(RandomImages(steps * args.batch, 3, args.size), batch_size=args.batch)
    trainer.fit(model, train_dataloaders=data)
    return args.batch / (sum(timer.times) / len(timer.times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "drn_a_50"])
    ap.add_argument("--modes", nargs="+", default=["warmup", "instructor", "inpainter"])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precisions", nargs="+", default=["32-true", "bf16-mixed"])
    args = ap.parse_args()
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, GPU {gpu}; "
          f"{args.size}x{args.size}, batch {args.batch}, {args.steps} timed steps")
    settings = [(p, cl) for p in args.precisions for cl in (False, True)]
    print(f"{'backbone':<10} {'step':<11} {'precision':<11} {'layout':<14} {'img/s':>8} "
          f"{'x fp32':>7}")
    for backbone in args.backbones:
        for mode in args.modes:
            base = None
            for precision, cl in settings:
                rate = measure(backbone, mode, precision, cl, args)
                base = base or rate
                layout = "channels_last" if cl else "NCHW"
                print(f"{backbone:<10} {mode:<11} {precision:<11} {layout:<14} {rate:>8.2f} "
                      f"{rate / base:>7.2f}", flush=True)


if __name__ == "__main__":
    main()
