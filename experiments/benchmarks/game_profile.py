"""``--profile`` of the game benchmark: one step's self CPU time split into convolutions
(oneDNN's kernels and the matrix products that stand in for one), batch norm and the
rest, and the bound that split puts on how far removing per-step work can go.
"""

from __future__ import annotations

import lightning as L

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


def print_shares(shares: dict[str, dict[str, float]], rates: dict[str, float],
                  ref: dict[str, float]) -> None:
    """Each kind's time split of ``--profile`` and, with a reference, the bound."""
    for kind, part in shares.items():
        print(f"  profile {kind:<17}" + "  ".join(f"{k} {100 * v:4.1f} %"
                                                  for k, v in part.items()))
    if ref:
        conv_s = sum(shares[k]["conv"] / rates[k] for k in ("instructor", "inpainter"))
        print(f"  bound: x authors {1.0 / ref['game'] / conv_s:.2f} if all but sssi's "
              f"convolutions were free (now {rates['game'] / ref['game']:.2f})")
