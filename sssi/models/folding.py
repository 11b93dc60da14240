"""Batch norm folded into the convolution before it, for a network that only infers.

In eval mode a batch norm is a fixed per-channel affine map, so a convolution followed
by one is the same as a convolution with scaled weights and a bias. The game's frozen
player runs forward only, for a whole phase, with the same weights: folding its batch
norms once saves one memory-bound pass over every activation of each forward.
"""

from __future__ import annotations

import copy

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["FoldedCopy", "fold_batch_norm"]

_CONVS = (nn.Conv2d, nn.ConvTranspose2d)


class _ConvLeafTracer(fx.Tracer):
    """Keeps every convolution (subclasses included) whole: its own forward may branch on
    its input, which a symbolic trace cannot follow."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, _CONVS) or super().is_leaf_module(m, module_qualified_name)


def fold_batch_norm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode, without gradients, that computes what
    ``module.eval()`` computes, with every ``BatchNorm2d`` whose only input is a
    ``Conv2d``/``ConvTranspose2d`` (used by nothing else) folded into that convolution.

    The copy is for inference and goes stale when ``module``'s weights or statistics
    change (:class:`FoldedCopy` keeps one up to date); ``module`` itself is left as it
    was. A module ``torch.fx`` cannot trace (a forward that branches on its input's
    shape) keeps its class and has its children folded one by one, so the parts that can
    be folded still are.
    """
    return FoldedCopy(module).module


class FoldedCopy:
    """:func:`fold_batch_norm`'s copy of ``source`` (in :attr:`module`), which
    :meth:`sync` brings up to date with ``source``'s current weights and statistics in
    one pass over them, without tracing or copying the network again.

    :meth:`refresh` syncs only when a tensor of ``source`` changed in place since (its
    ``_version`` moved: an optimizer step, a loaded state dict); :meth:`made_from` tells
    whether ``source`` still has the tensors the copy was made from (not moved to another
    device, dtype or memory format), which a sync cannot follow.
    """

    def __init__(self, source: nn.Module) -> None:
        self.source = source
        self._layout = _layout(source)
        self._versions = _versions(source)
        #: (qualified name of a folded convolution, of the batch norm folded into it)
        self.pairs: list[tuple[str, str]] = []
        self.module = _fold(copy.deepcopy(source), "", self.pairs)
        self.module.eval()
        self.module.requires_grad_(False)
        folded = {conv for conv, _ in self.pairs}
        # every other tensor of the copy: the source's tensor of the same name
        self._plain = [name for name, _ in _tensors(self.module)
                       if name.rpartition(".")[0] not in folded]

    def made_from(self, module: nn.Module) -> bool:
        """Whether ``module`` is the source, with the very tensors the copy was made from."""
        return module is self.source and _layout(module) == self._layout

    def refresh(self) -> None:
        """:meth:`sync` if any of the source's tensors changed since the last one."""
        versions = _versions(self.source)
        if versions != self._versions:
            self.sync()
            self._versions = versions

    @torch.no_grad()
    def sync(self) -> None:
        """Copy ``source``'s weights and statistics over, folding them as before."""
        source = dict(_tensors(self.source))
        mine = dict(_tensors(self.module))
        for name in self._plain:
            mine[name].copy_(source[name])
        for conv_name, bn_name in self.pairs:
            conv, bn = self.source.get_submodule(conv_name), self.source.get_submodule(bn_name)
            weight, bias = _fused(conv, bn)
            mine[f"{conv_name}.weight"].copy_(weight)
            mine[f"{conv_name}.bias"].copy_(bias)


def _tensors(module: nn.Module):
    """``(qualified name, tensor)`` of every parameter and buffer of ``module``."""
    yield from module.named_parameters()
    yield from module.named_buffers()


def _layout(module: nn.Module) -> tuple[int, ...]:
    """Where each tensor of ``module`` lives: changes when a tensor is replaced."""
    return tuple(t.data_ptr() for _, t in _tensors(module))


def _versions(module: nn.Module) -> tuple[int, ...]:
    """Each tensor's in-place change counter: moves with every in-place update."""
    return tuple(t._version for _, t in _tensors(module))


def _fused(conv: nn.Module, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight and bias of ``conv`` followed by ``bn`` in eval mode."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias,
        transpose=isinstance(conv, nn.ConvTranspose2d))
    return weight.detach(), bias.detach()


def _fold(module: nn.Module, prefix: str, pairs: list[tuple[str, str]]) -> nn.Module:
    """Fold ``module`` (a private copy, at ``prefix`` in the whole) in place where it can,
    adding the pairs folded to ``pairs``; returns the result."""
    try:
        graph = _ConvLeafTracer().trace(module)
    except Exception:  # fx raises TraceError, TypeError, ... on code it cannot follow
        for name, child in module._modules.items():
            if child is not None:
                module._modules[name] = _fold(child, f"{prefix}{name}.", pairs)
        return module
    traced = fx.GraphModule(module, graph, class_name=type(module).__name__ + "Folded")
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source, bn = node.args[0], modules[node.target]
        if not (isinstance(source, fx.Node) and source.op == "call_module"
                and isinstance(modules[source.target], _CONVS) and len(source.users) == 1):
            continue
        if bn.running_mean is None or bn.running_var is None:
            continue  # no running statistics: it normalises with the batch's own
        conv = modules[source.target]
        weight, bias = _fused(conv, bn)
        conv.weight = nn.Parameter(weight.contiguous(memory_format=_format_of(conv.weight)),
                                   requires_grad=False)
        conv.bias = nn.Parameter(bias, requires_grad=False)
        pairs.append((prefix + source.target, prefix + node.target))
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced


def _format_of(t: torch.Tensor) -> torch.memory_format:
    """The memory format ``t`` is laid out in (a convolution follows its weights')."""
    nhwc = t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    if nhwc and not t.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format
