"""A transposed convolution that runs as one matrix product where oneDNN's kernel is slow.

On CPUs, oneDNN computes a transposed convolution as the backward pass of a convolution,
and for wide inputs at small sizes it is far from the matrix unit's peak: the inpainter's
first decoder layer (DRN-A-50's 2048 channels at 16 x 16 -> 512 at 32 x 32, a quarter of
its training step) runs at ~110 GFLOP/s on two cores where a matrix product reaches
~170. Written as ``cols = x @ W`` (every input pixel's ``k x k x C_out`` contributions in
one product) followed by overlap-adding ``cols`` into the output (col2im), the same sum
runs near the matrix product's speed in both directions. The overlap-add moves
``k^2 C_out`` values per input pixel against ``2 k^2 C_out C_in`` FLOPs, so it pays only
for wide inputs: 1.5x forward + backward at 2048 input channels, 0.9x at 512
(``experiments/benchmarks/conv_transpose.py``).

:class:`ConvTranspose2d` is a drop-in ``nn.ConvTranspose2d`` (same parameters and
state-dict keys, so checkpoints load either way) that takes this path on CPU tensors
when the input has at least :data:`GEMM_MIN_IN_CHANNELS` channels and the layer is a
plain one (one group, no dilation, no output padding, zero padding); on GPUs and
everywhere else it is ``nn.ConvTranspose2d``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GEMM_MIN_IN_CHANNELS", "ConvTranspose2d", "conv_transpose2d_gemm"]

#: Input channels from which the CPU path is a matrix product (measured crossover: 0.9x
#: at 512, 1.2-1.5x at 1024 and 2048; see the module docstring).
GEMM_MIN_IN_CHANNELS = 1024


def _taps(size: int, stride: int) -> int:
    """Output span covered by one kernel offset's slice: ``(size - 1) * stride + 1``."""
    return (size - 1) * stride + 1


def _tap(i: int, j: int, size: tuple[int, int], stride: tuple[int, int]) -> tuple[slice, ...]:
    """Index into the padded NHWC output of the pixels that kernel offset ``(i, j)``
    reaches from an input of ``size``: the overlap-add (forward) writes there, the
    im2col of the gradient (backward) reads there."""
    (h, w), (sh, sw) = size, stride
    return slice(None), slice(i, i + _taps(h, sh), sh), slice(j, j + _taps(w, sw), sw)


def _matrices(x: Tensor, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``x`` as ``(pixels, C_in)`` rows and ``weight`` as ``(C_in, k_h k_w C_out)``: views
    for NHWC tensors, copies otherwise."""
    n, c_in, h, w = x.shape
    _, c_out, kh, kw = weight.shape
    return (x.permute(0, 2, 3, 1).reshape(n * h * w, c_in),
            weight.permute(0, 2, 3, 1).reshape(c_in, kh * kw * c_out))


class _GemmConvTranspose(torch.autograd.Function):
    """``conv_transpose2d(x, w, stride, padding)`` as a matrix product and an overlap-add.

    Works in NHWC internally (the product's rows are pixels, its columns ``(ki, kj, co)``),
    whatever ``x``'s memory format; returns NHWC-strided NCHW, which every PyTorch layer
    accepts. Under autocast the product runs in the autocast dtype, like a convolution.
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> Tensor:
        dtype = torch.get_autocast_dtype(x.device.type) \
            if torch.is_autocast_enabled(x.device.type) else x.dtype
        ctx.dtypes = (x.dtype, weight.dtype)
        with torch.autocast(x.device.type, enabled=False):
            x_ = x.to(dtype)
            w_ = weight.to(dtype)
            n, _, h, w = x_.shape
            _, c_out, kh, kw = w_.shape
            rows, w_mat = _matrices(x_, w_)
            cols = (rows @ w_mat).view(n, h, w, kh, kw, c_out)
            full = x_.new_zeros(n, _taps(h, stride[0]) + kh - 1, _taps(w, stride[1]) + kw - 1,
                                c_out)
            for i in range(kh):
                for j in range(kw):
                    full[_tap(i, j, (h, w), stride)] += cols[:, :, :, i, j]
            ph, pw = padding
            out = full[:, ph:full.shape[1] - ph, pw:full.shape[2] - pw]
        ctx.save_for_backward(x_, w_)
        ctx.geometry = (stride, padding)
        return out.permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        x_, w_ = ctx.saved_tensors
        stride, (ph, pw) = ctx.geometry
        n, c_in, h, w = x_.shape
        _, c_out, kh, kw = w_.shape
        with torch.autocast(grad.device.type, enabled=False):
            g = F.pad(grad.to(x_.dtype).permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))
            # im2col of the output gradient: what each input pixel's taps touched
            cols = g.new_empty(n, h, w, kh, kw, c_out)
            for i in range(kh):
                for j in range(kw):
                    cols[:, :, :, i, j] = g[_tap(i, j, (h, w), stride)]
            cols = cols.view(n * h * w, kh * kw * c_out)
            rows, w_mat = _matrices(x_, w_)
            grad_x = grad_w = None
            if ctx.needs_input_grad[0]:
                grad_x = (cols @ w_mat.t()).view(n, h, w, c_in).permute(0, 3, 1, 2)
                grad_x = grad_x.to(ctx.dtypes[0])
            if ctx.needs_input_grad[1]:
                grad_w = (rows.t() @ cols).view(c_in, kh, kw, c_out).permute(0, 3, 1, 2)
                grad_w = grad_w.to(ctx.dtypes[1])
        return grad_x, grad_w, None, None


def conv_transpose2d_gemm(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                          stride: tuple[int, int] = (1, 1),
                          padding: tuple[int, int] = (0, 0)) -> Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride, padding)`` (one group, no dilation,
    no output padding) computed as a matrix product; same result to float rounding."""
    out = _GemmConvTranspose.apply(x, weight, tuple(stride), tuple(padding))
    if bias is not None:
        out = out + bias.to(out.dtype).view(1, -1, 1, 1)
    return out


class ConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` that computes wide CPU layers as a matrix product (see the
    module docstring); parameters, state dict and results are those of the parent."""

    def takes_product(self, x: Tensor) -> bool:
        """Whether ``self(x)`` runs as the matrix product: a 4-D CPU input, at least
        :data:`GEMM_MIN_IN_CHANNELS` input channels, and a plain layer."""
        return (x.device.type == "cpu" and x.dim() == 4
                and self.in_channels >= GEMM_MIN_IN_CHANNELS and self.groups == 1
                and self.dilation == (1, 1) and self.output_padding == (0, 0)
                and self.padding_mode == "zeros" and isinstance(self.padding, tuple))

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        if output_size is None and self.takes_product(x):
            return conv_transpose2d_gemm(x, self.weight, self.bias, self.stride, self.padding)
        return super().forward(x, output_size)
