"""The inpainter decoder's transposed convolutions: PyTorch's kernel vs the matrix product.

For each layer of DRN-A-50's decoder (batch 8, 128 px crops: 2048 -> 512 channels at
16 px, then 512 -> 256, 256 -> 128, 4 x 4 stride 2, and 128 -> 64 at 3 x 3 stride 1)
times, in the same run, ``torch.nn.functional.conv_transpose2d`` (oneDNN on CPUs) and
``sssi.models.conv_transpose.conv_transpose2d_gemm`` (one matrix product + overlap-add),
forward alone (no autograd, the frozen inpainter in the instructor's step) and forward
+ backward (the inpainter's own step), in each memory format and precision asked for,
and prints seconds, GFLOP/s and the ratio.
:data:`sssi.models.conv_transpose.GEMM_MIN_IN_CHANNELS` is set from these rows.

Then the whole paper inpainter (DRN-A-50 + decoder, ``sssi.game.inpainter``) as the
game runs it: a training step (forward, loss, backward, SGD step) and the frozen eval
forward of the instructor's step, with its wide layer on PyTorch's kernel and on the
matrix product, alternated ``--repeats`` times so that both see the same machine.

The last line is a summary a script can read: ``gemm_vs_kernel_fb C=R ... step=R
frozen=R`` (per-layer forward + backward by input width C, first format and precision;
then the whole inpainter's training step and frozen forward).

    python -m experiments.benchmarks.conv_transpose [--threads 2] [--batch 8]
        [--formats channels_last contiguous] [--precisions 32-true bf16-mixed]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from experiments.benchmarks.common import FORMATS, autocast_for, best_of, cpu_flags
from sssi.game.inpainter import Inpainter
from sssi.models import build_backbone
from sssi.models.conv_transpose import ConvTranspose2d, conv_transpose2d_gemm

#: (in channels, out channels, input size at 128 px crops, kernel, stride)
LAYERS = ((2048, 512, 16, 4, 2), (1024, 512, 16, 4, 2), (512, 256, 32, 4, 2),
          (256, 128, 64, 4, 2), (128, 64, 128, 3, 1))


def forward(f: Callable[[], torch.Tensor], autocast: torch.autocast) -> None:
    """``f()`` without autograd: the frozen player's pass."""
    with torch.no_grad(), autocast:
        f()


def forward_backward(f: Callable[[], torch.Tensor], autocast: torch.autocast,
                     grad: torch.Tensor) -> None:
    """``f()`` and its backward with ``grad``: the training step's pass."""
    with autocast:
        y = f()
    y.float().backward(grad)


def whole_inpainter(batch: int, fmt: torch.memory_format, precision: str,
                    repeats: int) -> dict[str, tuple[float, float]]:
    """``{"step": (kernel s, gemm s), "frozen": (...)}`` of the paper's inpainter at
    128 px: the two variants alternate, the best of ``repeats`` of each is kept."""
    torch.manual_seed(0)
    net = Inpainter(build_backbone("drn_a_50", in_channels=3, output_stride=8),
                    out_channels=3, output="tanh").to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, 128, 128).contiguous(memory_format=fmt)
    autocast = autocast_for(precision)
    wide = [m for m in net.modules()
            if isinstance(m, ConvTranspose2d) and m.takes_product(x[:1])]
    if not wide:
        raise SystemExit("no layer of the inpainter takes the matrix product")

    def step() -> None:
        net.train()
        opt.zero_grad(set_to_none=True)
        with autocast:
            loss = (net(x).float() - x).square().mean()
        loss.backward()
        opt.step()

    def frozen() -> None:
        net.eval()
        with torch.no_grad(), autocast:
            net(x)

    times: dict[str, dict[str, list[float]]] = {"step": {}, "frozen": {}}
    for i in range(repeats + 1):  # the first round warms both variants up
        for variant, cls in (("kernel", nn.ConvTranspose2d), ("gemm", ConvTranspose2d)):
            for layer in wide:
                layer.__class__ = cls
            for name, fn in (("step", step), ("frozen", frozen)):
                t0 = time.perf_counter()
                fn()
                if i:
                    times[name].setdefault(variant, []).append(time.perf_counter() - t0)
    return {k: (min(v["kernel"]), min(v["gemm"])) for k, v in times.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", nargs="+", default=["channels_last", "contiguous"],
                    choices=sorted(FORMATS))
    ap.add_argument("--precisions", nargs="+", default=["32-true"],
                    choices=["32-true", "bf16-mixed"])
    ap.add_argument("--layers", nargs="*", type=int, default=[c for c, *_ in LAYERS],
                    help="input widths of the single-layer rows to time (none: skip them)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU flags: "
          f"{cpu_flags()}, batch {args.batch}")
    print(f"{'layer':<22}{'format':<15}{'precision':<12}{'pass':<6}"
          f"{'kernel s':>9}{'gemm s':>9}{'kernel GF/s':>12}{'gemm GF/s':>10}{'ratio':>7}")
    summary: dict[int, float] = {}
    for fmt in args.formats:
        for precision in args.precisions:
            autocast = autocast_for(precision)
            for c_in, c_out, size, k, s in LAYERS:
                if c_in not in args.layers:
                    continue
                x = torch.randn(args.batch, c_in, size, size).to(memory_format=FORMATS[fmt])
                w = (torch.randn(c_in, c_out, k, k) * c_in ** -0.5).to(
                    memory_format=FORMATS[fmt])
                x.requires_grad_(True)
                w.requires_grad_(True)
                flops = 2 * args.batch * size * size * c_in * c_out * k * k

                def kernel(x=x, w=w, s=s):
                    return F.conv_transpose2d(x, w, stride=s, padding=1)

                def gemm(x=x, w=w, s=s):
                    return conv_transpose2d_gemm(x, w, stride=(s, s), padding=(1, 1))

                with autocast:
                    grad = torch.randn_like(kernel().float())
                fwd = partial(forward, autocast=autocast)
                fwd_bwd = partial(forward_backward, autocast=autocast, grad=grad)

                for name, run, mult in (("fwd", fwd, 1), ("f+b", fwd_bwd, 3)):
                    a = best_of(lambda run=run: run(kernel), args.repeats)
                    b = best_of(lambda run=run: run(gemm), args.repeats)
                    print(f"{f'{c_in}->{c_out} {size}px k{k}s{s}':<22}{fmt:<15}{precision:<12}"
                          f"{name:<6}{a:>9.3f}{b:>9.3f}{mult * flops / a / 1e9:>12.0f}"
                          f"{mult * flops / b / 1e9:>10.0f}{a / b:>7.2f}")
                    if name == "f+b" and fmt == args.formats[0] \
                            and precision == args.precisions[0]:
                        summary[c_in] = a / b
    print(f"\nthe paper's inpainter, batch {args.batch}, 128 px, its wide layer on each "
          f"path, alternated {args.repeats}x:")
    print(f"{'pass':<30}{'format':<15}{'precision':<12}{'kernel s':>9}{'gemm s':>9}{'ratio':>7}")
    whole: dict[str, float] = {}
    for fmt in args.formats:
        for precision in args.precisions:
            got = whole_inpainter(args.batch, FORMATS[fmt], precision, args.repeats)
            for name, (a, b) in got.items():
                label = "training step" if name == "step" else "frozen forward (eval)"
                print(f"{label:<30}{fmt:<15}{precision:<12}{a:>9.3f}{b:>9.3f}{a / b:>7.2f}")
                if fmt == args.formats[0] and precision == args.precisions[0]:
                    whole[name] = a / b
    parts = [f"{c}={r:.2f}" for c, r in summary.items()]
    parts += [f"{k}={r:.2f}" for k, r in whole.items()]
    print("gemm_vs_kernel_fb " + " ".join(parts))


if __name__ == "__main__":
    main()
