"""The frozen inpainter's forward in the instructor's step: batch norm as is vs folded.

The paper's inpainter (DRN-A-50 + decoder, batch 8, 128 px crops by default), in eval
mode without autograd, as ``PretrainTask`` runs it for the instructor's loss: the
network as it is (58 batch norms) against ``sssi.models.folding.fold_batch_norm``'s copy
(each batch norm folded into the convolution before it), alternated ``--repeats`` times
in each memory format and precision asked for so that both see the same machine; the
best time of each is kept. Also prints what the fold itself costs (the task folds once
and then only syncs the copy's weights when the inpainter changed) and the largest
difference between the two outputs.

The last line is a summary a script can read: ``folded_vs_eval R ...`` (one ratio per
format x precision, in the order printed).

    python -m experiments.benchmarks.frozen_forward [--threads 2] [--batch 8]
        [--formats channels_last contiguous] [--precisions 32-true bf16-mixed]
        [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import torch

from experiments.benchmarks.common import FORMATS, autocast_for, cpu_flags, sync
from sssi.game.inpainter import Inpainter
from sssi.models import build_backbone
from sssi.models.folding import fold_batch_norm


def compare(batch: int, size: int, fmt: torch.memory_format, precision: str,
            device: torch.device, repeats: int) -> dict[str, float]:
    """Seconds of the eval forward and of the folded one (best of ``repeats``, alternated),
    the fold's own seconds and the largest output difference."""
    torch.manual_seed(0)
    net = Inpainter(build_backbone("drn_a_50", in_channels=3, output_stride=8),
                    out_channels=3, output="tanh")
    g = torch.Generator().manual_seed(0)
    for m in net.modules():  # the statistics of a trained network, not 0 and 1
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0.0, 0.2, generator=g)
            m.running_var.uniform_(0.5, 1.5, generator=g)
    net = net.to(device).to(memory_format=fmt).eval()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    sync(device)
    t0 = time.perf_counter()
    folded = fold_batch_norm(net)
    sync(device)
    fold_s = time.perf_counter() - t0
    autocast = autocast_for(precision, device.type)
    times: dict[str, list[float]] = {"eval": [], "folded": []}
    with torch.no_grad(), autocast:
        diff = float((net(x).float() - folded(x).float()).abs().max())
        for i in range(repeats + 1):  # the first round warms both up
            for name, model in (("eval", net), ("folded", folded)):
                sync(device)
                t0 = time.perf_counter()
                model(x)
                sync(device)
                if i:
                    times[name].append(time.perf_counter() - t0)
    return {"eval": min(times["eval"]), "folded": min(times["folded"]), "fold": fold_s,
            "diff": diff}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--formats", nargs="+", default=["channels_last", "contiguous"],
                    choices=sorted(FORMATS))
    ap.add_argument("--precisions", nargs="+", default=["32-true"],
                    choices=["32-true", "bf16-mixed"])
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU flags: "
          f"{cpu_flags()}, device "
          f"{args.device}, batch {args.batch}, {args.size} px, best of {args.repeats}")
    print(f"{'format':<15}{'precision':<12}{'eval s':>9}{'folded s':>10}{'ratio':>7}"
          f"{'fold s':>8}{'max diff':>10}")
    ratios = []
    for fmt in args.formats:
        for precision in args.precisions:
            r = compare(args.batch, args.size, FORMATS[fmt], precision, device, args.repeats)
            ratios.append(r["eval"] / r["folded"])
            print(f"{fmt:<15}{precision:<12}{r['eval']:>9.3f}{r['folded']:>10.3f}"
                  f"{ratios[-1]:>7.2f}{r['fold']:>8.2f}{r['diff']:>10.1e}", flush=True)
    print("folded_vs_eval " + " ".join(f"{r:.2f}" for r in ratios))


if __name__ == "__main__":
    main()
