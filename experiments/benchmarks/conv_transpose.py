"""The inpainter decoder's transposed convolutions: PyTorch's kernel vs the matrix product.

For each layer of DRN-A-50's decoder (batch 8, 128 px crops: 2048 -> 512 channels at
16 px, then 512 -> 256, 256 -> 128, 4 x 4 stride 2, and 128 -> 64 at 3 x 3 stride 1)
times, in the same run, ``torch.nn.functional.conv_transpose2d`` (oneDNN on CPUs) and
``sssi.models.conv_transpose.conv_transpose2d_gemm`` (one matrix product + overlap-add),
forward alone (no autograd, the frozen inpainter in the instructor's step) and forward
+ backward (the inpainter's own step), in each memory format and precision asked for,
and prints seconds, GFLOP/s and the ratio. The last line is a summary a script can read:
``gemm_vs_kernel_fb C=R ...`` (forward + backward, first format and precision, per input
width C). :data:`sssi.models.conv_transpose.GEMM_MIN_IN_CHANNELS` is set from it.

    python experiments/benchmarks/conv_transpose.py [--threads 2] [--batch 8]
        [--formats channels_last contiguous] [--precisions 32-true bf16-mixed]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

from sssi.models.conv_transpose import conv_transpose2d_gemm

#: (in channels, out channels, input size at 128 px crops, kernel, stride)
LAYERS = ((2048, 512, 16, 4, 2), (1024, 512, 16, 4, 2), (512, 256, 32, 4, 2),
          (256, 128, 64, 4, 2), (128, 64, 128, 3, 1))
FORMATS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}


def best_of(fn: Callable[[], object], repeats: int) -> float:
    """Fastest of ``repeats`` timed calls after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--formats", nargs="+", default=["channels_last", "contiguous"],
                    choices=sorted(FORMATS))
    ap.add_argument("--precisions", nargs="+", default=["32-true"],
                    choices=["32-true", "bf16-mixed"])
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print(f"{'layer':<22}{'format':<15}{'precision':<12}{'pass':<6}"
          f"{'kernel s':>9}{'gemm s':>9}{'kernel GF/s':>12}{'gemm GF/s':>10}{'ratio':>7}")
    summary: dict[int, float] = {}
    for fmt in args.formats:
        for precision in args.precisions:
            autocast = torch.autocast("cpu", dtype=torch.bfloat16,
                                      enabled=precision == "bf16-mixed")
            for c_in, c_out, size, k, s in LAYERS:
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
    print("gemm_vs_kernel_fb " + " ".join(f"{c}={r:.2f}" for c, r in summary.items()))


if __name__ == "__main__":
    main()
