"""The command line: ``python -m sssi.data.synthetic --out DIR [--tiles N] ...``."""

from __future__ import annotations

import argparse
import sys
import time

from sssi.data.synthetic.writer import generate
from sssi.errors import SssiError


def main(argv: list[str] | None = None) -> int:
    """``python -m sssi.data.synthetic --out DIR [--tiles N] [--size PX] [--seed S]``."""
    p = argparse.ArgumentParser(
        prog="python -m sssi.data.synthetic",
        description="Write a procedural aerial dataset in the ISPRS Potsdam layout.")
    p.add_argument("--out", required=True, help="dataset root to write (data.root)")
    p.add_argument("--tiles", type=int, default=6, help="number of tiles (default 6)")
    p.add_argument("--size", type=int, default=1024, help="tile side in pixels (default 1024)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--off-palette", type=float, default=0.0, metavar="FRACTION",
                   help="fraction of label pixels given near-palette colours (default 0)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    try:
        root = generate(args.out, tiles=args.tiles, size=args.size, seed=args.seed,
                        off_palette=args.off_palette, log_fn=lambda s: print(s, flush=True))
    except (SssiError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"synthetic Potsdam dataset ({args.tiles} tiles) written to {root} in "
          f"{time.perf_counter() - t0:.1f} s; use data.root={root}")
    return 0

